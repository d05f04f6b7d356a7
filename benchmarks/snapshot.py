"""Snapshots: restoring a Guest against booting it, in one run.

    python benchmarks/snapshot.py [--runs=N]
    LGUEST_LINUX_BZIMAGE=... LGUEST_BUSYBOX=... python benchmarks/snapshot.py   # Linux too

For puppy's shell (always) and a Linux 4.9 busybox shell (with the variables set), each
Guest is booted once to its shell and saved there (`--snapshot-and-exit`, by SIGUSR1).
Then, the median of N runs of each:

* to the first instruction: in this process, reading and checking the snapshot and
  building the machine from it, against building the machine that boots the kernel
  (both stop just before `Guest.run`);
* to a shell answering: `lguest --restore=<file>` from its launch (Python's start-up
  included) until the shell's answer to `echo` is on our pipe, against launching the
  boot of the same Guest until it answers the same command.

And the snapshot's size on disk.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from test_linux import ON_HVC1, PROLOGUE, initramfs  # noqa: E402  (the tests' initramfs builder)

from lguest.launcher import bundled, snapshot  # noqa: E402
from lguest.launcher.machine import build_machine  # noqa: E402
from lguest.launcher.options import parse_args  # noqa: E402

LAUNCHER = [sys.executable, "-m", "lguest.launcher.main"]
LINUX_INIT = PROLOGUE + ON_HVC1 + "echo READY\nexec sh\n"


class Guest:
    """One Guest to measure: how to boot it, what to type, what its answer looks like."""

    def __init__(self, name: str, boot_args: list[str], ready: bytes, command: bytes, answer: bytes) -> None:
        self.name, self.boot_args = name, boot_args
        self.ready, self.command, self.answer = ready, command, answer


def until(command: list[str], steps: list[tuple[bytes, bytes]],
          then: Callable[[subprocess.Popen], None]) -> float:
    """Seconds from launching `command` until the last step is done, each step typing its
    keys on stdin and waiting for its text on stdout; then `then(proc)` ends it."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    assert proc.stdin and proc.stdout
    seen = b""
    for typed, wanted in steps:
        proc.stdin.write(typed)
        proc.stdin.flush()
        seen = seen[seen.rfind(b"\n") + 1:]  # an answer only counts after its question
        while wanted not in seen:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                raise SystemExit(f"{command[2:]} never printed {wanted!r}: {seen[-500:]!r}")
            seen += chunk
    elapsed = time.perf_counter() - start
    then(proc)
    proc.stdout.read()
    proc.wait()
    proc.stdin.close()
    return elapsed


def kill(proc: subprocess.Popen) -> None:
    proc.kill()


def save(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGUSR1)


def first_instruction(argv: list[str], runs: int) -> float:
    """The median seconds to build the machine `argv` describes, ready to run."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        opts = parse_args(argv)
        saved = snapshot.read(opts.restore) if opts.restore else None
        if saved is not None:
            opts = snapshot.restored_options(saved, opts, force=False)
        kernel = opts.kernel or str(bundled.puppy_path())
        machine = build_machine(opts, kernel, lambda data: None, snapshot=saved)
        times.append(time.perf_counter() - start)
        machine.close()
    return statistics.median(times)


def measure(guest: Guest, work: Path, runs: int) -> None:
    snap = work / f"{guest.name}.snap"
    booted = (b"", guest.ready)
    answered = (guest.command, guest.answer)
    until([*LAUNCHER, f"--snapshot-and-exit={snap}", *guest.boot_args], [booted], save)
    boot = statistics.median(until([*LAUNCHER, *guest.boot_args], [booted, answered], kill)
                             for _ in range(runs))
    restore = statistics.median(until([*LAUNCHER, f"--restore={snap}"], [answered], kill)
                                for _ in range(runs))
    boot_first = first_instruction(guest.boot_args, runs)
    restore_first = first_instruction([f"--restore={snap}"], runs)
    print(f"{guest.name}: snapshot {snap.stat().st_size / 2**20:.1f} MiB on disk")
    print(f"  to the first instruction: restore {1000 * restore_first:.0f} ms,"
          f" boot {1000 * boot_first:.0f} ms")
    print(f"  to a shell answering:     restore {1000 * restore:.0f} ms, boot {1000 * boot:.0f} ms"
          f" ({boot / restore:.1f}x faster)")


def main() -> None:
    runs = int(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--runs=")), "5"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(f"(this machine starts a bare Python in {1000 * (time.perf_counter() - start):.0f} ms)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        guests = [Guest("puppy", ["run", "shell"], b"puppy$ ", b"echo MARK\n", b"\nMARK\n")]
        bzimage, busybox = os.environ.get("LGUEST_LINUX_BZIMAGE"), os.environ.get("LGUEST_BUSYBOX")
        if bzimage and busybox:
            image = initramfs(work, Path(busybox).read_bytes(), LINUX_INIT)
            guests.append(Guest("linux", [f"--initrd={image}", "64", bzimage, "console=hvc0", "panic=-1"],
                                b"READY", b"echo MARK-$((6*7))\n", b"MARK-42"))
        for guest in guests:
            measure(guest, work, runs)


if __name__ == "__main__":
    main()
