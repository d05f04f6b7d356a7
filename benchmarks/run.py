"""Benchmarks: each figure a ratio of two measurements taken in the same run.

    python benchmarks/run.py

(a) compute: puppy's CPU-bound benchmark (CRC32, LCG fill, quicksort) as a Guest,
    against the same C compiled with `gcc -m32 -O2` and run natively;
(b) hypercall round trip: `int $0x1f` into the Host and back, against the bare
    emulator's exit and re-entry (a Unicorn hook that stops, and emu_start again);
(c) system call round trip from ring 3: through a trap gate (delivered by the
    Host's fast path inside the emulator hook, as lguest's direct traps) and
    through an interrupt gate (reflected by the Host's run loop), each against
    the same bare exit and re-entry.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_EIP

from lguest.host.core import Guest
from lguest.launcher import bundled
from lguest.launcher.boot import allocate_guest_ram, load_kernel, write_boot_params
from lguest.launcher.console import ConsoleDevice
from lguest.launcher.pci import PciBus
from lguest.launcher.ports import Ports

ROOT = Path(__file__).resolve().parent.parent
MEM = 64 << 20
HCALL_ROUNDS = 20000
SYSCALL_ROUNDS = 20000
BARE_ROUNDS = 20000


def boot(kernel: Path, cmdline: str) -> tuple[float, bytes]:
    """Run a Guest to its end in-process; (seconds in Guest.run, console output)."""
    ram = allocate_guest_ram(MEM)
    image = load_kernel(ram, MEM, str(kernel))
    write_boot_params(ram, MEM, cmdline, None)
    out = bytearray()
    pci = PciBus()
    console = ConsoleDevice(1, out.extend)
    pci.add(console)
    console.place(MEM + (1 << 20))
    guest = Guest(ram, MEM, image.entry, Ports(pci, print))
    start = time.perf_counter()
    result = guest.run()
    elapsed = time.perf_counter() - start
    assert result.reason == "CRASH: Power down", result.reason
    return elapsed, bytes(out)


def compute() -> tuple[float, float]:
    puppy = bundled.puppy_path()
    native = subprocess.run([str(ROOT / "puppy" / "build" / "bench-native")], capture_output=True,
                            text=True, check=True).stdout.split()
    idle, _ = boot(puppy, "")
    busy, out = boot(puppy, "bench")
    assert f"bench checksum {native[1]}".encode() in out, "guest and native disagree"
    return busy - idle, float(native[3])


def build_asm_guest(source: Path, rounds: int, workdir: Path, **symbols: int) -> Path:
    text = (ROOT / "tests" / "guests" / "prelude.S").read_text()
    src = workdir / "guest.S"
    sets = "".join(f"\t.set {name}, {value}\n" for name, value in {"ROUNDS": rounds, **symbols}.items())
    src.write_text(f"{text}\n{sets}\t.text\n{source.read_text()}")
    subprocess.run(["gcc", "-m32", "-c", "-o", str(workdir / "guest.o"), str(src)], check=True)
    elf = workdir / "guest.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "start", "--no-warn-rwx-segments",
                    "-o", str(elf), str(workdir / "guest.o")], check=True)
    return elf


def round_trip(guest_source: str, rounds: int, **symbols: int) -> float:
    """Seconds per round of a benchmark guest: a long run minus a one-round run."""
    source = ROOT / "benchmarks" / guest_source
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = boot(build_asm_guest(source, 1, Path(tmp), **symbols), "")
        total, _ = boot(build_asm_guest(source, rounds + 1, Path(tmp), **symbols), "")
    return (total - base) / rounds


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
    guest_s, native_s = compute()
    hcall = round_trip("hypercalls.S", HCALL_ROUNDS)
    direct = round_trip("syscalls.S", SYSCALL_ROUNDS, GATE_TYPE=0xF)
    reflected = round_trip("syscalls.S", SYSCALL_ROUNDS, GATE_TYPE=0xE)
    bare = bare_exit_reentry()
    rows = [
        ("compute (CRC32+LCG+quicksort)", f"{guest_s:.3f} s guest", f"{native_s:.3f} s native",
         guest_s / native_s),
        ("hypercall round trip", f"{hcall * 1e6:.2f} us", f"{bare * 1e6:.2f} us bare exit", hcall / bare),
        ("syscall, trap gate (direct)", f"{direct * 1e6:.2f} us", f"{bare * 1e6:.2f} us bare exit",
         direct / bare),
        ("syscall, interrupt gate (reflected)", f"{reflected * 1e6:.2f} us", f"{bare * 1e6:.2f} us bare exit",
         reflected / bare),
    ]
    print(f"{'benchmark':36} {'lguest':>16} {'baseline':>20} {'ratio':>8}")
    for name, ours, theirs, ratio in rows:
        print(f"{name:36} {ours:>16} {theirs:>20} {ratio:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
