"""Snapshots (issue 14): puppy's shell saved mid-count and restored, again and again; every
kind of bad snapshot refused in one line with status 2 and the disk image untouched."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, RUN_TIMEOUT, lguest
from test_launcher_hostile import ESCAPE, STOPPED_BY_USER, OnTerminal, last_line
from test_linux import ON_HVC1, PROLOGUE, Kernel, busybox, initramfs, linux  # noqa: F401 (fixtures)

LAUNCHER = [sys.executable, "-m", "lguest.launcher.main"]
COUNT_TO = 60
SAVED_AND_ENDED = "Guest saved, Launcher ended (--snapshot-and-exit)"
AFTER_RESTORE = "rng 8\nwrite 3 {text}\ncat 3\npoweroff\n"
COUNT_LINE = re.compile(r"^count (\d+)$", re.M)


@dataclass(frozen=True)
class Saved:
    path: Path  # the snapshot
    disk: Path
    last_count: int  # the last count the saved Launcher printed


def counts(stdout: str) -> list[int]:
    return [int(n) for n in COUNT_LINE.findall(stdout)]


def save_mid_count(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, Path, Path]:
    """puppy's shell counting to COUNT_TO, a line every 10 ms, with a disk and the rng;
    returned once it has printed `count 5` (its stdin stays open: no Ctrl-D reaches it)."""
    disk, snap = tmp_path / "disk.img", tmp_path / "guest.snap"
    disk.write_bytes(bytes(1 << 20))
    proc = subprocess.Popen([*LAUNCHER, "run", "shell", f"--block={disk}", "--rng",
                             *(flag.format(snap=snap) for flag in flags)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin and proc.stdout
    proc.stdin.write(f"count {COUNT_TO} 10\n".encode())
    proc.stdin.flush()
    for line in proc.stdout:
        if line == b"count 5\n":
            return proc, snap, disk
    raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no count")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    assert proc.stdout and proc.stderr and proc.stdin
    stdout = proc.stdout.read().decode()
    proc.stdin.close()
    status = proc.wait(timeout=RUN_TIMEOUT)
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr, stderr
    return status, stdout, stderr


@pytest.fixture
def saved(puppy, tmp_path: Path) -> Saved:
    """A snapshot of the counting shell, taken by SIGUSR1 with --snapshot-and-exit."""
    proc, snap, disk = save_mid_count(tmp_path, "--snapshot-and-exit={snap}")
    proc.send_signal(signal.SIGUSR1)
    status, stdout, stderr = finish(proc)
    assert (status, last_line(stderr)) == (0, SAVED_AND_ENDED)
    assert f"lguest: snapshot saved to {snap} (" in stderr
    seen = [5, *counts(stdout)]
    assert seen == list(range(5, seen[-1] + 1)) and seen[-1] < COUNT_TO  # saved mid-count
    return Saved(snap, disk, seen[-1])


def restore(saved: Saved, script: str, *options: str):
    return lguest(f"--restore={saved.path}", *options, stdin=script)


def sector(disk: Path, n: int) -> bytes:
    return disk.read_bytes()[512 * n:512 * (n + 1)].rstrip(b"\0")


def test_restored_twice_the_count_goes_on_from_where_it_was_saved(saved: Saved) -> None:
    """Each restore continues the same count; the disk, the rng and the console work after."""
    other = saved.disk.with_name("other.img")
    shutil.copy2(saved.disk, other)  # the same size and modification time: a copy is accepted
    for disk, text in ((other, "after the first restore"), (saved.disk, "after the second")):
        run = restore(saved, AFTER_RESTORE.format(text=text), f"--block={disk}", "--rng")
        assert run.status == 0, run.stderr
        assert counts(run.stdout) == list(range(saved.last_count + 1, COUNT_TO + 1))
        assert re.search(r"^puppy\$ rng 8\n[0-9a-f]{16}$", run.stdout, re.M), run.stdout
        assert f"puppy$ cat 3\n{text}\n" in run.stdout
        assert sector(disk, 3) == text.encode()  # the write reached the file


def test_the_devices_saved_are_used_when_none_are_given(saved: Saved) -> None:
    run = restore(saved, AFTER_RESTORE.format(text="same disk"))
    assert run.status == 0, run.stderr
    assert counts(run.stdout)[0] == saved.last_count + 1
    assert sector(saved.disk, 3) == b"same disk"


def test_sigusr1_saves_and_the_guest_carries_on(puppy, tmp_path: Path) -> None:
    proc, snap, _ = save_mid_count(tmp_path, "--snapshot={snap}")
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdin
    proc.stdin.write(b"poweroff\n")
    proc.stdin.flush()
    status, stdout, stderr = finish(proc)
    assert status == 0 and counts(stdout)[-1] == COUNT_TO  # the saved Guest counted on, to the end
    assert f"lguest: snapshot saved to {snap} (" in stderr
    run = lguest(f"--restore={snap}", stdin="poweroff\n")
    assert run.status == 0 and counts(run.stdout)[-1] == COUNT_TO, run.stderr


def test_sigusr1_without_a_snapshot_file_is_refused_and_ignored(puppy, tmp_path: Path) -> None:
    proc, _, _ = save_mid_count(tmp_path)
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdin
    proc.stdin.write(b"poweroff\n")
    proc.stdin.flush()
    status, stdout, stderr = finish(proc)
    assert status == 0 and counts(stdout)[-1] == COUNT_TO
    assert "lguest: no --snapshot=<file> given: nowhere to save the Guest" in stderr


def test_escape_menu_saves_continues_and_quits(puppy, tmp_path: Path) -> None:
    """Ctrl-] s saves and the Guest runs on; Ctrl-] c just continues; Ctrl-] q quits."""
    snap = tmp_path / "menu.snap"
    session = OnTerminal("run", "sleep=100000", f"--snapshot={snap}")
    try:
        session.wait_for(b"puppy: command line")
        os.write(session.controller, ESCAPE + b"c")
        os.write(session.controller, ESCAPE + b"s")
        deadline = time.monotonic() + RUN_TIMEOUT
        while not snap.exists():  # the event: the file appears (the deadline is a hang guard)
            assert time.monotonic() < deadline and session.proc.poll() is None
            session._read()
        assert snap.exists()
        os.write(session.controller, ESCAPE + b"q")
        status, stderr = session.finish()
    finally:
        session.close()
    assert (status, last_line(stderr)) == (130, STOPPED_BY_USER)
    assert stderr.count("lguest: s save a snapshot, q quit, c continue? ") == 3
    assert f"lguest: snapshot saved to {snap} (" in stderr


# --- bad snapshots: one line, status 2, the disk untouched -------------------------------------
def rewrite_header(data: bytes, version: int) -> bytes:
    header = struct.pack("<8sIQ", data[:8], version, struct.unpack_from("<Q", data, 12)[0])
    return header + struct.pack("<I", zlib.crc32(header)) + data[24:]


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda d: d[:-100], "truncated (section RAM is cut short)"),
    (lambda d: d[:-10], "truncated (it ends before its END section)"),
    (lambda d: d[:12], "truncated (shorter than its header)"),
    (lambda d: flip_byte(d, len(d) - 200), "section RAM is corrupted (checksum mismatch)"),
    (lambda d: flip_byte(d, 100), "section STAT is corrupted (checksum mismatch)"),
    (lambda d: flip_byte(d, 10), "corrupted header (checksum mismatch)"),
    (lambda d: rewrite_header(d, 2), "format version 2, but this lguest reads version 1"),
    (lambda d: b"\x7fELF" + d[4:], "not an lguest snapshot"),
], ids=["truncated", "no-end", "no-header", "corrupted-ram", "corrupted-state", "corrupted-header",
        "version", "not-a-snapshot"])
def test_damaged_snapshot_is_refused(saved: Saved, damage, reason: str) -> None:
    saved.path.write_bytes(damage(saved.path.read_bytes()))
    assert_refused(saved, reason)


def assert_refused(saved: Saved, reason: str, *options: str) -> None:
    disk_before = saved.disk.read_bytes() if saved.disk.exists() else None
    stat_before = saved.disk.stat().st_mtime_ns if saved.disk.exists() else None
    run = restore(saved, "poweroff\n", *options)
    assert (run.status, run.reason) == (2, f"snapshot {saved.path}: {reason}"), run.stderr
    assert len(run.stderr.splitlines()) == 1 and run.stdout == ""
    if disk_before is not None:
        assert saved.disk.read_bytes() == disk_before and saved.disk.stat().st_mtime_ns == stat_before


def edit_state(path: Path, edit) -> None:
    """Change the saved state and write the file back with honest checksums: a doctored,
    not a damaged, snapshot."""
    data = path.read_bytes()
    length = struct.unpack_from("<Q", data, 28)[0]
    state = json.loads(data[40:40 + length])
    edit(state)
    payload = json.dumps(state).encode()
    path.write_bytes(data[:24] + struct.pack("<4sQI", b"STAT", len(payload), zlib.crc32(payload)) + payload
                     + data[40 + length:])


def test_a_doctored_cpu_state_cannot_reach_ring_0(saved: Saved) -> None:
    edit_state(saved.path, lambda state: state["guest"]["registers"].update(cs=0x10, ss=0x18))
    assert_refused(saved, "bad saved state: cs 0x10 and ss 0x18 are not a Guest's ring")


def test_a_doctored_queue_outside_ram_is_refused(saved: Saved) -> None:
    edit_state(saved.path, lambda state: state["devices"][0]["queues"][0].update(desc=0x7FFFF000))
    assert_refused(saved, "bad saved state: Invalid address 0x7ffff000")


def test_another_memory_size_is_refused(saved: Saved) -> None:
    assert_refused(saved, "of a 64 MiB Guest, but 32 MiB was asked for", "32")


def test_a_missing_disk_is_refused(saved: Saved) -> None:
    saved.disk.unlink()
    assert_refused(saved, f"disk {saved.disk}: No such file or directory")


def test_a_missing_snapshot_is_refused(saved: Saved) -> None:
    saved.path.unlink()
    assert_refused(saved, "No such file or directory")


def test_other_devices_are_refused(saved: Saved) -> None:
    assert_refused(saved, "its devices are --block, --rng, but the command line gives --rng", "--rng")


def test_a_changed_disk_is_refused_unless_forced(saved: Saved) -> None:
    stat = saved.disk.stat()
    os.utime(saved.disk, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert_refused(saved, f"disk {saved.disk} was modified after the snapshot"
                   " (--force-restore uses it anyway)")
    with saved.disk.open("ab") as f:
        f.write(bytes(512))
    assert_refused(saved, f"disk {saved.disk} is {(1 << 20) + 512} bytes, the saved Guest's was {1 << 20}"
                   " (--force-restore uses it anyway)")
    run = restore(saved, "poweroff\n", "--force-restore")
    assert run.status == 0 and counts(run.stdout)[0] == saved.last_count + 1, run.stderr


# --- Linux (LGUEST_LINUX_BZIMAGE, LGUEST_LINUX_PAE_BZIMAGE) ------------------------------------
LINUX_INIT = PROLOGUE + ON_HVC1 + "echo UPTIME-BEFORE $(cut -d' ' -f1 /proc/uptime)\necho READY\nexec sh\n"
UPTIME = re.compile(r"UPTIME-(BEFORE|AFTER) ([0-9.]+)")


def test_linux_shell_saved_and_restored(tmp_path: Path, busybox: bytes, linux: Kernel) -> None:  # noqa: F811
    """Booted to its shell, saved, restored: the shell answers and the uptime has gone on."""
    snap = tmp_path / "linux.snap"
    proc = subprocess.Popen([*LAUNCHER, f"--initrd={initramfs(tmp_path, busybox, LINUX_INIT)}",
                             f"--snapshot-and-exit={snap}", "64", linux.bzimage, "console=hvc0", "panic=-1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout
    seen = b""
    for line in proc.stdout:
        seen += line
        if line.strip() == b"READY":
            break
    proc.send_signal(signal.SIGUSR1)
    status, stdout, stderr = finish(proc)
    assert (status, last_line(stderr)) == (0, SAVED_AND_ENDED)
    assert snap.stat().st_size < 8 << 20  # a 64 MiB Linux at its shell, sparse and compressed
    run = lguest(f"--restore={snap}", stdin="echo UPTIME-AFTER $(cut -d' ' -f1 /proc/uptime)\npoweroff -f\n")
    assert (run.status, run.reason) == (0, "CRASH: Power down"), run.stderr
    uptimes = dict(UPTIME.findall(seen.decode() + run.stdout))
    assert float(uptimes["AFTER"]) > float(uptimes["BEFORE"]), uptimes


@pytest.mark.parametrize("words", [["64", "vmlinux"], ["run"], ["--initrd=x"]])
def test_restore_takes_no_kernel(words: list[str]) -> None:
    run = lguest("--restore=guest.snap", *words)
    assert (run.status, run.reason) == (2, "--restore takes no kernel, kernel arguments or --initrd:"
                                           " the snapshot has them")


# --- the Host's half, in-process: GuestState through the real emulator ---------------------------
FPU_GUEST = """
test_main:
	INIT
	fninit
	fldpi
	fld1
	movl $0x3f800000, %eax
	movd %eax, %xmm3
	movl $0x12345678, %edi
	HCALL LHCALL_TS, $1
	HCALL LHCALL_HALT
	POWEROFF
"""


class SaveAtHalt:
    """A tracer that asks for the Guest's state once it has made the HALT hypercall."""

    def __init__(self) -> None:
        self.state = None

    def hcall(self, guest, args, queued) -> None:
        if args[0] == 10:  # LHCALL_HALT
            guest.call_at_safe_point(self.save)

    def save(self, guest) -> None:
        self.state = guest.save_state()
        guest.kill("saved")

    def trap(self, guest, exit_) -> None: ...

    def irq(self, guest, irq) -> None: ...


def test_guest_state_round_trips_through_a_new_guest(asm_guest) -> None:
    """Registers, x87 stack, SSE, CR0.TS and HALT saved from one engine and given to another."""
    from lguest.host.core import Guest
    from lguest.launcher.boot import allocate_guest_ram, load_kernel, write_boot_params
    from lguest.launcher.pci import PciBus
    from lguest.launcher.ports import Ports

    mem = 32 << 20
    ram = allocate_guest_ram(mem)
    kernel = load_kernel(ram, mem, str(asm_guest(FPU_GUEST)))
    write_boot_params(ram, mem, "", None)
    tracer = SaveAtHalt()
    first = Guest(ram, mem, kernel.entry, Ports(PciBus(), print), tracer=tracer)
    assert first.run().reason == "saved"
    first.close()
    state = tracer.state
    assert state is not None and state.halted and state.ts == 1
    assert state.registers["edi"] == 0x12345678 and state.registers["cs"] & 3 == 1
    assert state.fpu["xmm"][3] == 0x3f800000
    assert (0xC90FDAA22168C235, 0x4000) in [tuple(r) for r in state.fpu["x87"]]  # pi, 80-bit
    second = Guest(ram, mem, 0, Ports(PciBus(), print))
    second.restore_state(state)
    again = second.save_state()
    second.close()
    assert again == state
