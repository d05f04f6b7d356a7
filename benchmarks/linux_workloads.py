"""Ordinary work inside a real Linux 4.9 guest: ours against QEMU TCG, interleaved in one run.

    LGUEST_LINUX_BZIMAGE=... LGUEST_BUSYBOX=... python benchmarks/linux_workloads.py \
        [--runs=N] [--quick] [--no-native]

Both boot the same bzImage and the same busybox initramfs, whose /init runs every workload
in turn, times each with the guest's own clock (/proc/uptime before and after, read by a
shell builtin so the measurement forks nothing), prints `RESULT <name> <seconds>` and ends.
Boot is the host's time from launch to /init's first line (QEMU's includes its BIOS).  The
guest's clock is checked against ours over all the workloads together, once per run.
The runs alternate, lguest then QEMU (`qemu-system-i386 -accel tcg -m 64`), so a machine
busy with other work slows both alike; each row is the median of N runs per side (default
3), its min-max spread and our median over QEMU's.  `--quick` shrinks every workload to
check the script; `--no-native` adds a third side, the Launcher's pure-Python path.

The console row is not like for like: under lguest init's output goes to the virtio
console (hvc1), under QEMU to the emulated 16550 serial port (ttyS0).
"""

from __future__ import annotations

import gzip
import os
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_linux import PROLOGUE, newc  # noqa: E402  (the tests' initramfs builder)

BOOTED, DONE = "WORKLOADS-BOOTED", "WORKLOADS-DONE"
SPAN = b"RESULT everything "  # the guest's time for all its workloads: checked against ours
MARKERS = (BOOTED.encode(), SPAN, DONE.encode())
QEMU = "QEMU TCG"
RUN_TIMEOUT = 900.0  # seconds for one whole guest run: a hang guard, far above a slow run


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does; --quick shrinks everything to check the script."""
    shell_loop: int = 20000  # i=$((i+1)) iterations
    fork_exec: int = 200  # runs of /bin/true
    ping_pong: int = 2000  # round trips of a token between two processes
    memory_mib: int = 24  # one dd buffer of fresh anonymous memory, filled 4 times
    tmpfs_mib: int = 16  # written to tmpfs, then md5sum'ed
    block_mib: int = 16  # written to the virtio disk with fsync, then read back
    console_kib: int = 1024  # written to the console


QUICK = Sizes(shell_loop=2000, fork_exec=20, ping_pong=200, memory_mib=4, tmpfs_mib=2, block_mib=2,
              console_kib=64)

# The order of the rows in the table; boot is timed by the host, the rest by the guest.
WORKLOADS = {
    "boot": "boot to /init (host clock, launch to first line)",
    "shell": "shell loop: {shell_loop} × i=$((i+1))",
    "fork": "fork+exec: {fork_exec} × /bin/true",
    "pipe": "pipe ping-pong: {ping_pong} round trips through two FIFOs",
    "memory": "memory: dd's {memory_mib} MiB buffer, fresh anonymous memory, filled 4 times",
    "tmpfs": "tmpfs: dd {tmpfs_mib} MiB into a file + md5sum it",
    "blockwrite": "block write: dd {block_mib} MiB to virtio-blk, fsync",
    "blockread": "block read: dd {block_mib} MiB from virtio-blk, cache dropped",
    "console": "console output: {console_kib} KiB (hvc1 under lguest, ttyS0 under QEMU)",
}


def init_script(sizes: Sizes) -> str:
    """/init: each workload a shell function, timed by `measure` with the guest's uptime."""
    s = sizes
    return PROLOGUE + f"""
# Under QEMU this kernel has no serial console for /dev/console: init opens ttyS0 itself.
if [ -e /dev/hvc1 ]; then exec </dev/hvc1 >/dev/hvc1 2>&1; else exec </dev/ttyS0 >/dev/ttyS0 2>&1; fi
echo {BOOTED}
mount -t tmpfs tmpfs /tmp

# The guest's uptime in hundredths: whole seconds, then the two digits after the point
# (one leading zero dropped, or "08" would read as octal).
now() {{ read up idle </proc/uptime; frac=${{up#*.}}; now=$(( ${{up%.*}} * 100 + ${{frac#0}} )); }}
measure() {{  # local: `everything` measures the measurements
    local start took
    now; start=$now
    "$1"
    now; took=$((now - start))
    printf 'RESULT %s %d.%02d\\n' "$1" $((took / 100)) $((took % 100))
}}

shell() {{ i=0; while [ $i -lt {s.shell_loop} ]; do i=$((i+1)); done; }}
fork() {{ i=0; while [ $i -lt {s.fork_exec} ]; do /bin/true; i=$((i+1)); done; }}
pipe() {{
    mkfifo /tmp/ping /tmp/pong
    (while read token; do echo $token; done) </tmp/ping >/tmp/pong &
    exec 3>/tmp/ping 4</tmp/pong
    i=0; while [ $i -lt {s.ping_pong} ]; do echo $i >&3; read token <&4; i=$((i+1)); done
    exec 3>&- 4<&-
    wait
    [ "$token" = {s.ping_pong - 1} ] || echo "BENCH-ERROR pipe lost the token: $token"
}}
memory() {{ dd if=/dev/zero of=/dev/null bs={s.memory_mib}M count=4 2>/dev/null; }}
tmpfs() {{
    dd if=/dev/zero of=/tmp/file bs=1M count={s.tmpfs_mib} 2>/dev/null
    md5sum /tmp/file >/dev/null
    rm /tmp/file
}}
blockwrite() {{ dd if=/dev/zero of=/dev/vda bs=64k count={s.block_mib * 16} conv=fsync 2>/dev/null; }}
blockread() {{ dd if=/dev/vda of=/dev/null bs=64k count={s.block_mib * 16} 2>/dev/null; }}
console() {{
    echo CONSOLE-START
    dd if=/dev/zero bs=1024 count={s.console_kib} 2>/dev/null | tr '\\0' x
    echo
    echo CONSOLE-END
}}

everything() {{
    for name in shell fork pipe memory tmpfs blockwrite; do measure $name; done
    sync; echo 3 >/proc/sys/vm/drop_caches
    measure blockread
    measure console
}}
measure everything
echo {DONE}
poweroff -f
"""


def build_initramfs(path: Path, busybox: bytes, sizes: Sizes) -> None:
    dirs = [(d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "mnt", "tmp")]
    init = init_script(sizes).encode()
    archive = newc([*dirs, ("bin/busybox", 0o100755, busybox), ("init", 0o100755, init)])
    path.write_bytes(gzip.compress(archive))


def run_guest(command: list[str], what: str, sizes: Sizes, stderr: Path) -> tuple[dict[str, float], bool]:
    """Launch, time to the boot marker, read every RESULT line, then stop the emulator;
    (seconds by workload, whether the guest's clock agreed with ours)."""
    start = time.perf_counter()
    with stderr.open("wb") as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
    assert proc.stdout
    seen, arrived = bytearray(), {}
    try:
        while DONE.encode() not in arrived:
            left = start + RUN_TIMEOUT - time.perf_counter()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise SystemExit(f"{what}: no {DONE} within {RUN_TIMEOUT:.0f} s: {bytes(seen[-500:])!r}")
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            seen += chunk
            window = seen[-len(chunk) - 32:]  # a marker may straddle two reads
            for marker in MARKERS:
                if marker not in arrived and marker in window:
                    arrived[marker] = time.perf_counter() - start
    finally:
        proc.kill()  # it has said all we need; QEMU would go on to ACPI power-off
        proc.wait()
        proc.stdout.close()
    text = seen.decode(errors="replace")
    if DONE not in text or "BENCH-ERROR" in text:
        raise SystemExit(f"{what} failed: {text[-800:]!r} {stderr.read_text(errors='replace')[-800:]!r}")
    console = text.split("CONSOLE-START", 1)[1].split("CONSOLE-END", 1)[0]
    if (got := console.count("x")) != sizes.console_kib * 1024:
        raise SystemExit(f"{what}: the console lost bytes ({got} of {sizes.console_kib * 1024})")
    results = {"boot": arrived[BOOTED.encode()]}
    results.update((m[1], float(m[2])) for m in re.finditer(r"^RESULT (\w+) ([0-9.]+)\r?$", text, re.M))
    if missing := {*WORKLOADS, "everything"} - set(results):
        raise SystemExit(f"{what}: no result for {', '.join(sorted(missing))}")
    span = results.pop("everything")
    return results, clocks_agree(what, span, arrived[SPAN] - results["boot"])


def clocks_agree(what: str, guest_span: float, host_span: float) -> bool:
    """Every row but boot trusts the guest's clock: over all the workloads it must agree with ours."""
    agree = abs(guest_span - host_span) <= 0.05 * host_span + 0.2
    print(f"{what}: all workloads took {guest_span:.2f} s by the guest's clock, {host_span:.2f} s by ours"
          f"{'' if agree else ': DISAGREE'}", file=sys.stderr)
    return agree


def command(side: str, kernel: str, image: Path, disk: Path) -> list[str]:
    """QEMU's command line, or the Launcher's with the side's options ("lguest --no-native")."""
    if side == QEMU:
        # acpi_pm, not the TSC: on a busy host the kernel's TSC calibration under TCG can be
        # far off (we saw the guest's clock run 5x fast) until its watchdog gives up on it;
        # QEMU's ACPI PM timer follows the host's clock.
        return ["qemu-system-i386", "-accel", "tcg", "-m", "64", "-nographic", "-no-reboot",
                "-kernel", kernel, "-initrd", str(image), "-drive", f"file={disk},if=virtio,format=raw",
                "-append", "console=ttyS0 panic=-1 clocksource=acpi_pm"]
    return [sys.executable, "-m", "lguest.launcher.main", *side.split()[1:], f"--initrd={image}",
            f"--block={disk}", "64", kernel, "console=hvc0", "panic=-1"]


def launcher_accepts(option: str) -> bool:
    usage = subprocess.run([sys.executable, "-m", "lguest.launcher.main", "--help"], cwd=ROOT,
                           capture_output=True, text=True)
    return f"  {option} " in usage.stdout + usage.stderr


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"


def table(sizes: Sizes, runs: dict[str, list[dict[str, float]]]) -> str:
    """Median (min–max) per side, QEMU last; then each of ours over QEMU's median."""
    ours = [side for side in runs if side != QEMU]
    rows = ["| workload | " + " | ".join(runs) + " | " + " | ".join(f"{side} / QEMU" for side in ours) + " |",
            "|---" * (1 + len(runs) + len(ours)) + "|"]
    for name, label in WORKLOADS.items():
        times = {side: [run[name] for run in side_runs] for side, side_runs in runs.items()}
        baseline = statistics.median(times[QEMU])
        ratios = [f"{statistics.median(times[side]) / baseline:.1f}×" if baseline else "QEMU under 10 ms"
                  for side in ours]
        rows.append(f"| {label.format(**vars(sizes))} | " + " | ".join(map(cell, times.values()))
                    + " | " + " | ".join(ratios) + " |")
    return "\n".join(rows)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, load average {load:.1f} at the end"


def fail(message: str) -> int:
    print(f"linux_workloads: {message}", file=sys.stderr)
    return 2


def parse(argv: list[str]) -> tuple[int, set[str]]:
    """(--runs=N, the flags given); a bad word ends the script with the usage line."""
    runs, flags = 3, set()
    for arg in argv:
        if arg in ("--quick", "--no-native"):
            flags.add(arg)
        elif arg.startswith("--runs=") and arg[7:].isdigit() and int(arg[7:]) > 0:
            runs = int(arg[7:])
        else:
            sys.exit(fail(f"usage: linux_workloads.py [--runs=N] [--quick] [--no-native] (not {arg!r})"))
    return runs, flags


def main(argv: list[str]) -> int:
    runs, flags = parse(argv)
    quick, no_native = "--quick" in flags, "--no-native" in flags
    kernel, busybox = os.environ.get("LGUEST_LINUX_BZIMAGE"), os.environ.get("LGUEST_BUSYBOX")
    if not kernel or not busybox or not Path(kernel).is_file() or not Path(busybox).is_file():
        return fail("set LGUEST_LINUX_BZIMAGE and LGUEST_BUSYBOX (a static i386 busybox) to files")
    if not shutil.which("qemu-system-i386"):
        return fail("qemu-system-i386 not found (Debian: apt-get install qemu-system-x86)")
    if no_native and not launcher_accepts("--no-native"):
        return fail("this Launcher has no --no-native")
    sizes = QUICK if quick else Sizes()
    sides = ["lguest", *(["lguest --no-native"] if no_native else []), QEMU]
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    disagreed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        image, disk = Path(tmp) / "initramfs.cpio.gz", Path(tmp) / "disk.img"
        build_initramfs(image, Path(busybox).read_bytes(), sizes)
        for n in range(1, runs + 1):
            for side in sides:
                disk.write_bytes(bytes(sizes.block_mib << 20))
                what = f"{side} run {n}"
                line = command(side, str(Path(kernel).resolve()), image, disk)
                result, agreed = run_guest(line, what, sizes, Path(tmp) / "stderr")
                results[side].append(result)
                disagreed += [] if agreed else [what]
                shown = " ".join(f"{k}={v:.2f}" for k, v in result.items())
                print(f"{what}: {shown}", file=sys.stderr, flush=True)
    print(f"Linux workloads, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {runs} interleaved runs each"
          f"{' (--quick sizes)' if quick else ''}; {machine()}")
    exceptions = f", except {', '.join(disagreed)}" if disagreed else ""
    print(f"Guest and host clocks agreed within 5% in every run{exceptions}.")
    print()
    print(table(sizes, results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
