"""One fuzz run: boot the fuzz Guest with a seed, and say how it ended.

Most runs are in-process (the machine built exactly as `lguest` builds it, then
`Guest.run()`), which is fast and lets us read the operation counter from Guest
RAM however the Guest died.  Some go through the real `lguest` command, to check
what a user would see: exit 0 or 1 with one `lguest: <reason>` line, never 3.
"""

from __future__ import annotations

import mmap
import re
import struct
import subprocess
import sys
import threading
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from lguest.fuzz.kernel import FuzzKernel, fuzz_kernel
from lguest.host.core import RunResult
from lguest.launcher.machine import build_machine
from lguest.launcher.options import Options

MEM_MIB = 16  # the fuzz Guest assumes it (its MMIO windows are at 17 MiB)
DISK_BYTES = 64 << 10  # 128 sectors, as the Guest's request headers expect
POWER_OFF = "CRASH: Power down"

# Outcome kinds.  The first two are the Guest's business; the rest are our bugs.
POWERED_OFF, KILLED = "power-off", "killed"
TRACEBACK, HANG, EXIT_STATUS, WORKER_DIED = "traceback", "hang", "exit status", "worker died"
FAILURES = frozenset({TRACEBACK, HANG, EXIT_STATUS, WORKER_DIED})


@dataclass(frozen=True)
class Outcome:
    seed: int
    kind: str
    reason: str  # grouped: the kill reason with its addresses and big numbers blanked
    detail: str  # the exact reason, the traceback, or the stderr tail
    ops: int  # operations the Guest started (0 when unknown)
    via_command: bool = False

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES

    def to_json(self) -> dict:
        return asdict(self)


def group_reason(reason: str) -> str:
    """One name per class of death: addresses and large numbers do not matter."""
    reason = reason.rstrip("\n")
    if reason.startswith("CRASH: ") and reason != POWER_OFF:
        return "CRASH: <Guest's message>"
    reason = re.sub(r"0x[0-9a-fA-F]+", "0x_", reason)
    return re.sub(r"(?<!trap )\b\d{3,}\b", "N", reason)  # a trap's number tells what happened


@dataclass(frozen=True)
class Plan:
    """What every run of a campaign shares."""

    ops: int = 2000  # operations per boot
    mask_eflags: int = 0  # EFLAGS bits the Guest must never set (see fuzz.c's maskflags=)
    timeout: float = 30.0  # seconds before a run is a hang (a guard: runs take well under 1 s)


def guest_args(seed: int, plan: Plan) -> list[str]:
    words = [f"seed={seed}", f"ops={plan.ops}"]
    return words + [f"maskflags={plan.mask_eflags}"] if plan.mask_eflags else words


def ensure_disk(path: Path) -> Path:
    """The block device's backing file, the same size for every run."""
    with path.open("wb") as f:
        f.truncate(DISK_BYTES)
    return path


def run_in_process(seed: int, plan: Plan, disk: Path) -> Outcome:
    """Boot once in this process; a Python exception anywhere is a failure.

    The vCPU runs on its own thread so that a Guest still running after
    `plan.timeout` can be reported here, with what it was doing; the caller
    must then exit, since that thread cannot be taken back.
    """
    kernel = fuzz_kernel()
    crashes: list[str] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: crashes.append(
        "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    opts = Options(mem_mib=MEM_MIB, kernel=str(kernel.path), cmdline=" ".join(guest_args(seed, plan)),
                   devices=(("rng", None), ("block", str(ensure_disk(disk)))))
    try:
        machine = build_machine(opts, str(kernel.path), output=_discard, warn=_discard)
        results: list[RunResult] = []
        vcpu = threading.Thread(target=lambda: results.append(machine.guest.run()), name="fuzz-vcpu")
        vcpu.start()
        vcpu.join(plan.timeout)
        if vcpu.is_alive():
            doing = last_operation(machine.guest.memory.ram, kernel)
            return Outcome(seed, HANG, f"Guest still running after {plan.timeout:.0f} s (during {doing})",
                           f"last operation: {doing}", ops_started(machine.guest.memory.ram, kernel))
        done = ops_started(machine.guest.memory.ram, kernel)  # read before close() unmaps the RAM
        machine.close()
    except Exception:  # noqa: BLE001 - any exception here is the finding
        return Outcome(seed, TRACEBACK, "exception in the Host or Launcher", traceback.format_exc(), 0)
    finally:
        threading.excepthook = previous_hook
    if crashes or not results:
        where = "the vCPU" if not results else "a device thread"
        return Outcome(seed, TRACEBACK, f"exception in {where}", "\n".join(crashes), done)
    reason = results[0].reason
    kind = POWERED_OFF if reason == POWER_OFF else KILLED
    return Outcome(seed, kind, group_reason(reason), reason.rstrip("\n"), done)


def ops_started(ram: mmap.mmap, kernel: FuzzKernel) -> int:
    return struct.unpack_from("<I", ram, kernel.ops_counter)[0]


def last_operation(ram: mmap.mmap, kernel: FuzzKernel) -> str:
    """The name the Guest gave the operation it was in (a pointer to a C string)."""
    name = struct.unpack_from("<I", ram, kernel.last_op)[0]
    if not 0 < name < len(ram) - 32:
        return "boot"
    return bytes(ram[name:name + 32]).split(b"\0")[0].decode(errors="replace")


def launcher_command() -> list[str]:
    return [sys.executable, "-m", "lguest.launcher.main"]


def command_line(seed: int, plan: Plan, disk: Path, launcher: list[str] | None = None) -> list[str]:
    return [*(launcher or launcher_command()), "--rng", f"--block={disk}", str(MEM_MIB),
            str(fuzz_kernel().path), *guest_args(seed, plan)]


def run_command(seed: int, plan: Plan, disk: Path, launcher: list[str] | None = None) -> Outcome:
    """Boot once through the `lguest` command: only exit 0 or 1, and no traceback."""
    argv = command_line(seed, plan, ensure_disk(disk), launcher)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=plan.timeout)
    except subprocess.TimeoutExpired:
        return Outcome(seed, HANG, f"lguest did not end within {plan.timeout:.0f} s", " ".join(argv), 0, True)
    stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    printed = re.search(r"fuzz: (\d+) ops", stdout)
    ops_done = int(printed.group(1)) if printed else 0
    reasons = [line.removeprefix("lguest: ") for line in stderr.splitlines() if line.startswith("lguest: ")]
    reason = reasons[-1] if reasons else ""
    if "Traceback" in stderr:
        return Outcome(seed, TRACEBACK, "traceback from lguest", stderr[-4000:], ops_done, True)
    if proc.returncode not in (0, 1) or (proc.returncode == 0) != (reason == POWER_OFF):
        return Outcome(seed, EXIT_STATUS, f"lguest exited {proc.returncode}", stderr[-4000:], ops_done, True)
    kind = POWERED_OFF if proc.returncode == 0 else KILLED
    return Outcome(seed, kind, group_reason(reason), reason, ops_done, True)


def _discard(_: object) -> None:
    pass
