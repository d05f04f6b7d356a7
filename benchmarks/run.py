"""Benchmarks: each figure a ratio of two measurements taken in the same run.

    python benchmarks/run.py

(a) compute: puppy's CPU-bound benchmark (CRC32, LCG fill, quicksort) as a Guest,
    against the same C compiled with `gcc -m32 -O2` and run natively;
(b) hypercall round trip: `int $0x1f` into the Host and back, against the bare
    emulator's exit and re-entry (a Unicorn hook that stops, and emu_start again);
    one the Host serves in Python on both paths (LOAD_IDT_ENTRY of a vector it
    ignores: the cost of an exit that remains in Python); and SET_PTE, of a page
    the current shadow holds and of a directory no shadow holds (a fork's most
    common call), against the same;
(c) system call round trip from ring 3: through a trap gate (a direct trap, as
    lguest's) and through an interrupt gate (reflected), each against the same
    bare exit and re-entry; on the native path the emulated CPU delivers both
    through the real IDT, on the pure-Python path the Host builds the frame;
(d) paging: a page fault the Host serves itself (every page touched again after
    FLUSH_TLB(1) dropped every shadow: the pure-Python Host walks the Guest's
    tables in demand_page, the native path's fill hook re-reads the two entries
    it validated before, in C; PAE tables are always walked in Python),
    a page fault the Guest handles (from ring 3, reflected through its interrupt
    gate; on the native path the CPU raises and delivers it without an exit),
    and a switch between two address spaces (NEW_PGTABLE, then touching three
    pages), each against the same bare exit and re-entry;
(e) PAE against non-PAE: (a) with puppy's PAE build, and (d)'s page fault with PAE
    page tables, each against the same figure without PAE (the best of three of
    each, measured in turn, so that both see the same load on the machine).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_EIP

from lguest.launcher import bundled
from lguest.launcher.machine import build_machine
from lguest.launcher.options import Options

ROOT = Path(__file__).resolve().parent.parent
MEM = 64 << 20
HCALL_ROUNDS = 20000
SYSCALL_ROUNDS = 20000
FAULT_ROUNDS = 20
REFLECTED_FAULT_ROUNDS = 20000
SWITCH_ROUNDS = 5000
BARE_ROUNDS = 20000
PAE_TRIES = 3


def boot(kernel: Path, cmdline: str, pae: bool = False) -> tuple[float, bytes]:
    """Run a Guest to its end in-process; (seconds in Guest.run, console output)."""
    out = bytearray()
    machine = build_machine(Options(mem_mib=MEM >> 20, kernel=str(kernel), cmdline=cmdline, pae=pae),
                            str(kernel), out.extend)
    start = time.perf_counter()
    result = machine.guest.run()
    elapsed = time.perf_counter() - start
    assert result.reason == "CRASH: Power down", result.reason
    return elapsed, bytes(out)


def compute(pae: bool = False) -> tuple[float, float]:
    puppy = bundled.puppy_path(pae)
    native = subprocess.run([str(ROOT / "puppy" / "build" / "bench-native")], capture_output=True,
                            text=True, check=True).stdout.split()
    idle, _ = boot(puppy, "", pae)
    busy, out = boot(puppy, "bench", pae)
    assert f"bench checksum {native[1]}".encode() in out, "guest and native disagree"
    return busy - idle, float(native[3])


def both_modes(measure: Callable[[bool], float]) -> tuple[float, float]:
    """(non-PAE, PAE) seconds: each the best of PAE_TRIES, the two measured in turn."""
    pairs = [(measure(False), measure(True)) for _ in range(PAE_TRIES)]
    return min(two_level for two_level, _ in pairs), min(pae for _, pae in pairs)


def build_asm_guest(source: Path, rounds: int, workdir: Path, **symbols: int | str) -> Path:
    text = (ROOT / "tests" / "guests" / "prelude.S").read_text()
    src = workdir / "guest.S"
    sets = "".join(f"\t.set {name}, {value}\n" for name, value in {"ROUNDS": rounds, **symbols}.items())
    src.write_text(f"{text}\n{sets}\t.text\n{source.read_text()}")
    include = ROOT / "lguest" / "fuzz" / "guest"  # lguest_data.S, shared with the fuzz Guest
    obj = workdir / "guest.o"
    subprocess.run(["gcc", "-m32", "-c", f"-I{include}", "-o", str(obj), str(src)], check=True)
    elf = workdir / "guest.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "start", "--no-warn-rwx-segments",
                    "-o", str(elf), str(obj)], check=True)
    return elf


def round_trip(guest_source: str, rounds: int, pae: bool = False, **symbols: int | str) -> float:
    """Seconds per round of a benchmark guest: a long run minus a one-round run."""
    source = ROOT / "benchmarks" / guest_source
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = boot(build_asm_guest(source, 1, Path(tmp), **symbols), "", pae)
        total, _ = boot(build_asm_guest(source, rounds + 1, Path(tmp), **symbols), "", pae)
    return (total - base) / rounds


def page_fault(pae: bool) -> float:
    """Seconds per shadow fill, with two-level or PAE page tables."""
    setup = "setup_pae_paging" if pae else "setup_user_paging"
    return round_trip("faults.S", FAULT_ROUNDS, pae, SETUP_PAGING=setup) / 1024


def bare_exit_reentry() -> float:
    """The floor: Unicorn stops in a Python interrupt hook and is started again."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    uc.mem_write(0x1000, b"\xcd\x1f\xeb\xfc")  # int $0x1f; jmp back
    uc.hook_add(UC_HOOK_INTR, lambda uc, n, d: uc.emu_stop())
    start = time.perf_counter()
    for _ in range(BARE_ROUNDS):
        uc.emu_start(uc.reg_read(UC_X86_REG_EIP) if _ else 0x1000, 0x2000)
    return (time.perf_counter() - start) / BARE_ROUNDS


def main() -> int:
    native_s = compute()[1]
    guest_s, pae_guest_s = both_modes(lambda pae: compute(pae)[0])
    hcall = round_trip("hypercalls.S", HCALL_ROUNDS)
    python_hcall = round_trip("hypercalls.S", HCALL_ROUNDS, HCALL="LHCALL_LOAD_IDT_ENTRY", ARG1=2)
    set_pte = round_trip("set_pte.S", HCALL_ROUNDS, PGDIR="page_dir")
    set_pte_unshadowed = round_trip("set_pte.S", HCALL_ROUNDS, PGDIR="0x123000")
    direct = round_trip("syscalls.S", SYSCALL_ROUNDS, GATE_TYPE=0xF)
    reflected = round_trip("syscalls.S", SYSCALL_ROUNDS, GATE_TYPE=0xE)
    fill, pae_fill = both_modes(page_fault)
    reflected_fault = round_trip("reflected_faults.S", REFLECTED_FAULT_ROUNDS, GATE_TYPE=0xE)
    switch = round_trip("switches.S", SWITCH_ROUNDS) / 2
    bare = bare_exit_reentry()
    bare_text = f"{bare * 1e6:.2f} us bare exit"

    def per_exit(name: str, seconds: float) -> tuple[str, str, str, float]:
        return name, f"{seconds * 1e6:.2f} us", bare_text, seconds / bare

    rows = [
        ("compute (CRC32+LCG+quicksort)", f"{guest_s:.3f} s guest", f"{native_s:.3f} s native",
         guest_s / native_s),
        per_exit("hypercall round trip", hcall),
        per_exit("hypercall exit to Python (LOAD_IDT_ENTRY)", python_hcall),
        per_exit("SET_PTE, current space", set_pte),
        per_exit("SET_PTE, directory not shadowed", set_pte_unshadowed),
        per_exit("syscall, trap gate (direct)", direct),
        per_exit("syscall, interrupt gate (reflected)", reflected),
        per_exit("page fault served by the Host (two-level)", fill),
        per_exit("page fault reflected to the Guest", reflected_fault),
        per_exit("address-space switch", switch),
        ("compute, PAE puppy", f"{pae_guest_s:.3f} s PAE", f"{guest_s:.3f} s non-PAE", pae_guest_s / guest_s),
        ("page fault served, PAE tables", f"{pae_fill * 1e6:.2f} us PAE", f"{fill * 1e6:.2f} us non-PAE",
         pae_fill / fill),
    ]
    print(f"{'benchmark':42} {'lguest':>16} {'baseline':>20} {'ratio':>8}")
    for name, ours, theirs, ratio in rows:
        print(f"{name:42} {ours:>16} {theirs:>20} {ratio:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
