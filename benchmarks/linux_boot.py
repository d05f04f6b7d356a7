"""Boot time of a real Linux 4.9 lguest guest: ours against QEMU TCG, in one run.

    LGUEST_LINUX_BZIMAGE=... [LGUEST_BUSYBOX=...] python benchmarks/linux_boot.py

Both boot the same bzImage and initramfs, whose /init prints a marker (on hvc1 under
lguest, on the serial console under QEMU) and powers off; each time is from launch to
the marker.  QEMU is `qemu-system-i386 -accel tcg` (Debian's qemu-system-x86).
Then `--stats` says where lguest's time went, and the same guest measures virtio
throughput with busybox `dd`: block writes (with fsync) and reads of a 16 MiB disk file,
and 4 MiB through the console to our stdout, against the host doing the same I/O
directly on the same file and on a pipe.
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
# Under QEMU a kernel without a serial console has no /dev/console: init opens ttyS0 itself.
if [ -e /dev/hvc1 ]; then exec </dev/hvc1 >/dev/hvc1 2>&1; else exec </dev/ttyS0 >/dev/ttyS0 2>&1; fi
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


IO_INIT = PROLOGUE + """
exec </dev/hvc1 >/dev/hvc1 2>/dev/hvc1
time -p dd if=/dev/zero of=/dev/vda bs=65536 count=256 conv=fsync 2>&1 | sed 's/^/WRITE /'
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
time -p dd if=/dev/vda of=/dev/null bs=65536 2>&1 | sed 's/^/READ /'
echo CONSOLE-START
dd if=/dev/zero bs=4096 count=1024 2>/dev/null | tr '\\0' x
echo
echo CONSOLE-END
poweroff -f
"""
DISK_BYTES = 16 << 20
CONSOLE_BYTES = 4 << 20


def rate(lines: list[str], tag: str) -> float:
    """MB/s from `time -p dd ...` in the guest: its line 'real <seconds>'."""
    seconds = float(next(line for line in lines if line.startswith(f"{tag} real ")).split()[2])
    return DISK_BYTES / seconds / 1e6


def guest_io(kernel: str, image: Path, tmp: Path) -> tuple[float, float, float]:
    """(write, read, console) MB/s inside the guest; the console timed as its bytes arrive."""
    disk = tmp / "disk.img"
    disk.write_bytes(bytes(DISK_BYTES))
    command = [sys.executable, "-m", "lguest.launcher.main", f"--initrd={image}", f"--block={disk}", "64",
               kernel, "console=hvc0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout
    seen, began, ended = b"", 0.0, 0.0
    while chunk := proc.stdout.read1(1 << 20):
        seen += chunk
        if not began and b"CONSOLE-START" in seen:
            began = time.perf_counter()
        if not ended and b"CONSOLE-END" in seen:
            ended = time.perf_counter()
    proc.wait()
    text = seen.decode(errors="replace")
    lines = text.splitlines()
    write, read = rate(lines, "WRITE"), rate(lines, "READ")
    console = text.split("CONSOLE-START", 1)[1].split("CONSOLE-END", 1)[0]
    assert console.count("x") == CONSOLE_BYTES, "the console lost bytes"
    return write, read, CONSOLE_BYTES / (ended - began) / 1e6


def host_io(tmp: Path) -> tuple[float, float, float]:
    path, chunk = tmp / "host.img", bytes(65536)
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(DISK_BYTES // len(chunk)):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    write = DISK_BYTES / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    with path.open("rb") as f:
        while f.read(65536):
            pass
    read = DISK_BYTES / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    pipeline = f"head -c {CONSOLE_BYTES} /dev/zero | tr '\\0' x | cat >/dev/null"
    subprocess.run(["sh", "-c", pipeline], check=True)
    return write, read, CONSOLE_BYTES / (time.perf_counter() - start) / 1e6


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
        io_image = Path(tmp) / "io.cpio.gz"
        io_image.write_bytes(gzip.compress(newc([*dirs, ("bin/busybox", 0o100755, Path(busybox).read_bytes()),
                                                 ("init", 0o100755, IO_INIT.encode())])))
        guest = guest_io(kernel, io_image, Path(tmp))
        host = host_io(Path(tmp))
    print(f"launch to init marker: {ours:.2f} s lguest, {qemu:.2f} s QEMU TCG, ratio {ours / qemu:.2f}x")
    print(stats.stderr.splitlines()[-1])
    names = ("block write (fsync)", "block read", "console output")
    for name, ours_rate, host_rate in zip(names, guest, host, strict=True):
        ratio = host_rate / ours_rate
        print(f"{name:20} {ours_rate:8.1f} MB/s guest {host_rate:9.1f} MB/s host, ratio {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
