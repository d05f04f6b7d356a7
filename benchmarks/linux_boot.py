"""Boot time of a real Linux 4.9 lguest guest: ours against QEMU TCG, in one run.

    LGUEST_LINUX_BZIMAGE=... [LGUEST_BUSYBOX=...] python benchmarks/linux_boot.py

Both boot the same bzImage and initramfs, whose /init prints a marker (on hvc1 under
lguest, on the serial console under QEMU) and powers off; each time is from launch to
the marker.  QEMU is `qemu-system-i386 -accel tcg` (Debian's qemu-system-x86).
Then `--stats` says where lguest's time went.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_linux import PROLOGUE, newc  # noqa: E402  (the tests' initramfs builder)

MARKER = b"GUEST-BOOTED"
INIT = PROLOGUE + """
[ -e /dev/hvc1 ] && exec </dev/hvc1 >/dev/hvc1 2>&1
echo GUEST-BOOTED
poweroff -f
"""


def time_to_marker(command: list[str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    seen = b""
    assert proc.stdout
    while MARKER not in seen:
        chunk = proc.stdout.read1(65536)
        if not chunk:
            break
        seen += chunk
    elapsed = time.perf_counter() - start
    proc.kill()
    _, err = proc.communicate()
    if MARKER not in seen:
        raise SystemExit(f"no marker from {command[0]}: {seen[-500:]!r} {err[-500:]!r}")
    return elapsed, err


def main() -> int:
    kernel = os.environ.get("LGUEST_LINUX_BZIMAGE")
    busybox = os.environ.get("LGUEST_BUSYBOX")
    if not kernel or not busybox:
        print("set LGUEST_LINUX_BZIMAGE and LGUEST_BUSYBOX (a static i386 busybox)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [(d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "mnt", "tmp")]
        image = Path(tmp) / "initramfs.cpio.gz"
        image.write_bytes(gzip.compress(newc([*dirs, ("bin/busybox", 0o100755, Path(busybox).read_bytes()),
                                              ("init", 0o100755, INIT.encode())])))
        ours, _ = time_to_marker([sys.executable, "-m", "lguest.launcher.main", f"--initrd={image}", "64",
                                  kernel, "console=hvc0", "panic=-1"])
        qemu, _ = time_to_marker(["qemu-system-i386", "-accel", "tcg", "-m", "128", "-nographic",
                                  "-no-reboot", "-kernel", kernel, "-initrd", str(image),
                                  "-append", "console=ttyS0 panic=-1"])
        stats = subprocess.run([sys.executable, "-m", "lguest.launcher.main", "--stats", f"--initrd={image}",
                                "64", kernel, "console=hvc0", "panic=-1"], capture_output=True, text=True)
    print(f"launch to init marker: {ours:.2f} s lguest, {qemu:.2f} s QEMU TCG, ratio {ours / qemu:.2f}x")
    print(stats.stderr.splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
