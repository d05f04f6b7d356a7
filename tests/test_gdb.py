"""`--gdb`: a real gdb (batch mode) against puppy, and the stub's answers to bad input.

gdb is Debian's stock gdb; `.ci/run` installs it.  Every run starts the Launcher
with `--gdb=127.0.0.1:0` and waits for the line that names the port it got.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from elftools.elf.elffile import ELFFile
from gdbtools import Rsp, gdb, launch
from test_linux import MARKER, ON_HVC1, PROLOGUE, busybox, initramfs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None,
                                reason="gdb is not installed (.ci/run installs it)")

USER = ROOT / "puppy" / "build" / "user"


def symbol(elf, name: str) -> int:
    with open(elf, "rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


def code_bytes(elf, address: int, size: int) -> bytes:
    with open(elf, "rb") as f:
        for segment in ELFFile(f).iter_segments():
            start = segment["p_vaddr"]
            if segment["p_type"] == "PT_LOAD" and start <= address < start + segment["p_filesz"]:
                return segment.data()[address - start:address - start + size]
    raise LookupError(hex(address))


def hcall_site(elf, function: str, insn: bytes = b"\xcd\x1f") -> int:
    """The address of the first `int $0x1f` (or another instruction) in a function."""
    start = symbol(elf, function)
    return start + code_bytes(elf, start, 256).index(insn)


def test_break_bt_registers_step_watch_monitor_detach(puppy) -> None:
    run = launch("run", "--gdb=127.0.0.1:0", "--gdb-wait", "sleep=50")
    site = hcall_site(puppy, "timer_interrupt")
    jiffies = symbol(puppy, "jiffies")
    out = gdb(run.port, "printf \"entry %#x\\n\", $pc", "break puppy_main", "continue", "bt",
              "info registers", "x/4i $pc", "delete",
              f"break *{site:#x}", "continue", "stepi", "printf \"after-hcall %#x\\n\", $pc", "delete",
              f"watch *(unsigned int *){jiffies:#x}", "continue",
              "printf \"jiffies %d\\n\", *(int *)&jiffies",
              "delete", "monitor break hcall SET_CLOCKEVENT", "continue",
              "printf \"stopped-eax %d\\n\", $eax", "x/1i $pc - 2", "monitor hcalls", "monitor break clear",
              "detach", elf=puppy)
    status, stdout, stderr = run.finish()
    with open(puppy, "rb") as f:
        assert f"entry {ELFFile(f)['e_entry']:#x}" in out  # --gdb-wait: before the first instruction
    assert "Breakpoint 1, " in out and "in puppy_main ()" in out, out
    assert "#0  0x" in out and "puppy_main" in out
    assert "cs             0x61" in out  # RPL 1: the Guest kernel, not the Host's ring 0
    assert "=> 0x" in out and "<puppy_main>:" in out and "<puppy_main+" in out  # x/4i
    assert f"after-hcall {site + 2:#x}" in out  # one stepi across the whole hypercall
    new = re.search(r"Hardware watchpoint 3: .*\n\nOld value = (\d+)\nNew value = (\d+)", out)
    assert new and int(new[2]) == int(new[1]) + 1, out  # the tick handler's jiffies++
    assert f"jiffies {new[2]}" in out  # stopped after the store, as on hardware
    assert "stopped-eax 9" in out  # SET_CLOCKEVENT's number, still in %eax
    assert "int    $0x1f" in out
    assert "SET_CLOCKEVENT" in out and "hypercalls" in out
    assert "detached" in out
    assert status == 0, stderr
    assert "puppy: power off" in stdout


def test_breakpoint_in_a_user_process(puppy) -> None:
    """Ring 3, and memory read through that process's own page tables."""
    run = launch("run", "--gdb=127.0.0.1:0", "--gdb-wait", "procs")
    main = symbol(USER / "hello.elf", "main")
    syscall = hcall_site(USER / "hello.elf", "exit", b"\xcd\x80")  # ulib's, the same in every program
    out = gdb(run.port, f"add-symbol-file {USER / 'hello.elf'}", f"hbreak *{main:#x}", "continue",
              "info registers cs", "x/16xb $pc", "stepi", "printf \"pc %#x\\n\", $pc", "monitor pgdir",
              "delete", f"break *{syscall:#x}", "continue", "stepi", "printf \"in-kernel %#x\\n\", $pc",
              "info registers cs", "delete", "monitor break trap 128", "continue",
              "printf \"next-syscall %#x\\n\", $pc", "kill",
              elf=puppy)
    status, _, stderr = run.finish()
    assert "cs             0x73" in out, out  # RPL 3
    shown = bytes(int(word, 16) for line in out.splitlines() if line.startswith("0x8048")
                  for word in line.split(":")[1].split())
    programs = [code_bytes(USER / f"{name}.elf", main, 16) for name in ("hello", "counter", "sleeper")]
    assert shown in programs, out
    assert f"pc {main + 1:#x}" in out  # `push %ebp` is one byte
    assert out.count("pgdir 0x") >= 2  # the process's own directory besides the kernel's
    # One stepi across `int $0x80`: the Host reflected the trap, gdb sees the Guest's handler.
    assert f"in-kernel {symbol(puppy, 'syscall_entry'):#x}" in out
    assert out.split("in-kernel")[1].count("cs             0x61") == 1
    # `monitor break trap 128`: the next system call stops at the Guest's handler
    assert "stopping at: trap 128" in out
    assert f"next-syscall {symbol(puppy, 'syscall_entry'):#x}" in out
    assert "Hardware assisted breakpoint 1" in out
    assert status == 1 and "lguest: killed from gdb" in stderr


def test_ctrl_c_stops_a_halted_guest_and_kill_ends_it(puppy) -> None:
    """The shell waits for input (the Guest halts): gdb's Ctrl-C must still stop it."""
    run = launch("run", "--gdb=127.0.0.1:0", stdin=subprocess.PIPE)
    rsp = Rsp(run.port)
    assert rsp.ask(b"?").startswith(b"S05")  # attaching stops the Guest
    rsp.send(b"c")
    assert rsp.read_byte() == b"+"
    rsp.send_raw(b"\x03")
    assert rsp.reply() == b"S02"
    regs = rsp.ask(b"g")
    assert len(regs) == 2 * 16 * 4 + 2 * (8 * 10 + 8 * 4)  # i386 core: 16 general, x87 unavailable
    cs = int.from_bytes(bytes.fromhex(regs[80:88].decode()), "little")
    assert cs & 3 in (1, 3)
    rsp.send(b"k")
    status, _, stderr = run.finish()
    assert status == 1 and "lguest: killed from gdb" in stderr


def test_bad_input_is_answered_and_the_guest_carries_on(puppy) -> None:
    run = launch("run", "--gdb=127.0.0.1:0", "--gdb-wait", "sleep=10")
    rsp = Rsp(run.port)
    second = Rsp(run.port)
    assert second.closed_by_peer()  # one gdb at a time
    rsp.send_raw(b"noise between packets")
    assert rsp.ask(b"?").startswith(b"S05")
    rsp.send_raw(b"$g#00")
    assert rsp.read_byte() == b"-"  # bad checksum: gdb would send it again
    rsp.send_raw(b"$" + b"m" * 0x5000 + b"#00")
    assert rsp.read_byte() == b"-"  # longer than the PacketSize we advertised
    assert rsp.ask(b"qSupported:swbreak+").startswith(b"PacketSize=4000;")
    assert rsp.ask(b"vMustReplyEmpty") == b""  # unknown packets: the empty reply
    assert rsp.ask(b"ma0000000,4") == b"E0e"  # unmapped
    assert rsp.ask(b"mzz,4") == b"E16"  # malformed
    assert rsp.ask(b"Ma0000000,2:0000") == b"E0e"
    assert rsp.ask(b"Z0,ffc00000,1") == b"E16"  # the Switcher's pages are not the Guest's
    assert rsp.ask(b"P1a=00000000") == b"E16"  # no such writable register
    assert rsp.ask(b"Pa=00000000") == b"E16"  # %cs is the Host's to set
    assert rsp.ask(b"P0=00") == b"E16"  # too short
    assert rsp.ask(b"qXfer:features:read:target.xml:zz") == b"E16"
    assert rsp.ask(b"qXfer:features:read:target.xml:0,40").startswith(b"m<?xml")
    # Registers and memory can be written, and read back; then put back as they were.
    assert rsp.ask(b"P0=78563412") == b"OK" and rsp.ask(b"p0") == b"78563412"
    assert rsp.ask(b"P0=00000000") == b"OK"
    spare = b"3fff000"  # the last page of the 64 MiB, untouched this early
    saved = rsp.ask(b"m" + spare + b",4")
    assert rsp.ask(b"M" + spare + b",4:deadbeef") == b"OK" and rsp.ask(b"m" + spare + b",4") == b"deadbeef"
    assert rsp.ask(b"M" + spare + b",4:" + saved) == b"OK"
    rsp.close()  # dropped without a detach: the Guest runs on to its end
    status, stdout, stderr = run.finish()
    assert status == 0, stderr
    assert "puppy: power off" in stdout


def test_gdb_hears_how_the_guest_ended(puppy) -> None:
    run = launch("run", "--gdb=127.0.0.1:0", "--gdb-wait", "oops")
    out = gdb(run.port, "continue", elf=puppy)
    status, _, _ = run.finish()
    assert status == 1 and "[Inferior 1 (Remote target) exited with code 01]" in out, out


def test_gdb_options_parse() -> None:
    from lguest.launcher.options import parse_args

    assert parse_args(["run", "--gdb=1234"]).gdb == ("127.0.0.1", 1234)
    opts = parse_args(["run", "--gdb=0.0.0.0:0", "--gdb-wait", "--stats=json", "--trace-file=t.json"])
    assert (opts.gdb, opts.gdb_wait, opts.stats, opts.stats_json, opts.trace_file) == (
        ("0.0.0.0", 0), True, True, True, "t.json")


def test_gdb_options_are_checked(tmp_path) -> None:
    from conftest import lguest

    assert lguest("run", "--gdb-wait").status == 2
    bad = lguest("run", "--gdb=localhost:99999")
    assert bad.status == 2 and bad.reason.startswith("Bad --gdb 'localhost:99999'")
    run = launch("run", "--gdb=127.0.0.1:0", "--gdb-wait")
    busy = lguest("run", f"--gdb=127.0.0.1:{run.port}")
    assert busy.status == 2 and busy.reason.startswith(f"cannot listen for gdb on 127.0.0.1:{run.port}")
    run.proc.kill()
    run.finish()


@pytest.mark.skipif(not (os.environ.get("LGUEST_LINUX_VMLINUX") and os.environ.get("LGUEST_LINUX_BZIMAGE")),
                    reason="set LGUEST_LINUX_VMLINUX and LGUEST_LINUX_BZIMAGE to a Linux 4.9 lguest build")
def test_linux_start_kernel_and_a_paravirt_hypercall(tmp_path, busybox) -> None:  # noqa: F811
    """gdb vmlinux: start_kernel, then into the NEW_PGTABLE hypercall of a cr3 write and
    out again, then on to init's shell."""
    vmlinux = os.environ["LGUEST_LINUX_VMLINUX"]
    image = initramfs(tmp_path, busybox, PROLOGUE + ON_HVC1 + f"echo {MARKER}\npoweroff -f\n")
    run = launch("--gdb=127.0.0.1:0", "--gdb-wait", f"--initrd={image}", "64", vmlinux, "console=hvc0",
                 "panic=-1")
    site = hcall_site(vmlinux, "lazy_hcall1")
    out = gdb(run.port, "break start_kernel", "continue", "bt", "info registers cs", "delete",
              "break lguest_write_cr3", "continue", "step", f"advance *{site:#x}", "info registers eax",
              "stepi", "printf \"after-hcall %#x\\n\", $pc", "delete", "detach", elf=Path(vmlinux))
    status, stdout, _ = run.finish()
    assert "Breakpoint 1, start_kernel () at " in out and "#0  start_kernel () at " in out, out
    assert "cs             0x61" in out
    assert "lazy_hcall1 (call=4," in out  # NEW_PGTABLE
    assert "eax            0x4 " in out
    assert f"after-hcall {site + 2:#x}" in out
    assert status == 0 and MARKER in stdout
