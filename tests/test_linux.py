"""An unmodified Linux 4.9 lguest guest on our Host and Launcher (issue: real Linux).

These run when LGUEST_LINUX_BZIMAGE names a 4.9 i386 lguest bzImage (README, "Booting a
real Linux guest"); LGUEST_LINUX_VMLINUX may name its ELF vmlinux too.  The initramfs is
built here from a static i386 busybox: LGUEST_BUSYBOX, or Debian's busybox-static:i386
fetched with apt-get.
"""

from __future__ import annotations

import gzip
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, lguest

BZIMAGE = os.environ.get("LGUEST_LINUX_BZIMAGE")
VMLINUX = os.environ.get("LGUEST_LINUX_VMLINUX")
TRANSCRIPT = ROOT.parent / "shared" / "spec" / "linux-4.9-guest-console.txt"
MARKER = "GUEST-BOOTED"

pytestmark = pytest.mark.skipif(not BZIMAGE, reason="set LGUEST_LINUX_BZIMAGE to a Linux 4.9 lguest bzImage")


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's "newc" format: (path, mode, contents)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(b"%08x" % f for f in fields) + encoded
        out += bytes(-len(out) % 4)  # the name ends on a 4-byte boundary
        out += data
        out += bytes(-len(out) % 4)  # and so does the file
    return bytes(out)


@pytest.fixture(scope="module")
def busybox(tmp_path_factory) -> bytes:
    if os.environ.get("LGUEST_BUSYBOX"):
        return Path(os.environ["LGUEST_BUSYBOX"]).read_bytes()
    work = tmp_path_factory.mktemp("busybox")
    fetched = subprocess.run(["apt-get", "download", "busybox-static:i386"], cwd=work, capture_output=True)
    debs = list(work.glob("*.deb"))
    if fetched.returncode or not debs:
        pytest.skip("no static i386 busybox: set LGUEST_BUSYBOX (or allow apt-get busybox-static:i386)")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "pkg")], check=True)
    return (work / "pkg" / "bin" / "busybox").read_bytes()


PROLOGUE = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""
ON_HVC1 = "exec </dev/hvc1 >/dev/hvc1 2>&1\n"


def initramfs(tmp_path: Path, busybox: bytes, script: str) -> Path:
    dirs = [(d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "mnt", "tmp")]
    archive = newc([*dirs, ("bin/busybox", 0o100755, busybox), ("init", 0o100755, script.encode())])
    path = tmp_path / "initramfs.cpio.gz"
    path.write_bytes(gzip.compress(archive))
    return path


def boot(tmp_path: Path, busybox: bytes, script: str, *options: str, kernel: str | None = None):
    image = initramfs(tmp_path, busybox, script)
    return lguest(f"--initrd={image}", *options, "64", kernel or BZIMAGE, "console=hvc0", "panic=-1")


def messages(text: str) -> list[str]:
    return [re.sub(r"^\[ *[0-9.]+\] ", "", line.rstrip("\r")) for line in text.splitlines()]


def test_boots_to_init_on_hvc1(tmp_path, busybox) -> None:
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + f"echo {MARKER}\npoweroff -f\n")
    assert (run.status, run.reason) == (0, "CRASH: Power down")
    assert MARKER in run.stdout
    ours = messages(run.stdout)
    volatile = re.compile(r"Linux version|Memory:|RAMDISK|\.init|\.data|\.text|BogoMIPS|CPU:|Freeing initrd|"
                          r"Reserving virtual")
    expected = [line for line in messages(TRANSCRIPT.read_text()) if not volatile.search(line)]
    missing = [line for line in expected if line not in ours]
    assert missing == []


def test_init_on_dev_console_goes_silent_like_the_original(tmp_path, busybox) -> None:
    """hvc0 loses its backend when the virtio console binds (as hvc1): nothing more shows."""
    run = boot(tmp_path, busybox, PROLOGUE + f"echo {MARKER}\npoweroff -f\n")
    assert (run.status, run.reason) == (0, "CRASH: Power down")
    lines = messages(run.stdout)
    assert MARKER not in run.stdout
    assert len(lines) == len(messages(TRANSCRIPT.read_text()))
    assert lines[-1] == "Serial: 8250/16550 driver, 4 ports, IRQ sharing disabled"


@pytest.mark.skipif(not VMLINUX, reason="set LGUEST_LINUX_VMLINUX to the same kernel's ELF vmlinux")
def test_elf_vmlinux_boots_too(tmp_path, busybox) -> None:
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + f"echo {MARKER}\npoweroff -f\n", kernel=VMLINUX)
    assert (run.status, MARKER in run.stdout) == (0, True)


@pytest.mark.skipif(not shutil.which("mke2fs") or not shutil.which("debugfs"), reason="needs e2fsprogs")
def test_ext2_disk_written_by_linux(tmp_path, busybox) -> None:
    disk = tmp_path / "disk.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext2", str(disk), "4M"], check=True)
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + """
mount -t ext2 /dev/vda /mnt
echo written by linux > /mnt/hello.txt
umount /mnt
sync
echo DONE
poweroff -f
""", f"--block={disk}")
    assert (run.status, "DONE" in run.stdout) == (0, True), run.stdout[-2000:]
    content = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(disk)], capture_output=True, text=True)
    assert content.stdout == "written by linux\n"


def test_hwrng(tmp_path, busybox) -> None:
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + """
echo RNG $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')
poweroff -f
""", "--rng")
    found = re.search(r"RNG ([0-9a-f]{32})", run.stdout)
    assert run.status == 0 and found and found.group(1) != "0" * 32


def test_reboot_restarts_cleanly(tmp_path, busybox) -> None:
    disk = tmp_path / "flag.img"
    disk.write_bytes(bytes(4096))
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + """
if [ "$(head -c 4 /dev/vda)" = "BOOT" ]; then
    echo SECOND-BOOT
    poweroff -f
fi
echo -n BOOT > /dev/vda
sync
echo FIRST-BOOT
reboot -f
""", f"--block={disk}")
    assert run.status == 0
    assert run.stdout.index("FIRST-BOOT") < run.stdout.index("SECOND-BOOT")


def test_two_linux_guests_ping_each_other(tmp_path, busybox) -> None:
    ports = (45101, 45102)
    scripts = [PROLOGUE + ON_HVC1 + f"""
ip addr add 10.9.0.{me}/24 dev eth0
ip link set eth0 up
sleep 2
ping -c 3 -W 5 10.9.0.{peer} && echo PING-OK
sleep 3
poweroff -f
""" for me, peer in ((1, 2), (2, 1))]
    procs = []
    for n, script in enumerate(scripts):
        work = Path(tempfile.mkdtemp(dir=tmp_path))
        image = initramfs(work, busybox, script)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lguest.launcher.main", f"--initrd={image}",
             f"--net=udp:{ports[n]}:127.0.0.1:{ports[1 - n]}", "64", BZIMAGE, "console=hvc0", "panic=-1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, text=True))
    try:
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all("PING-OK" in out for out in outputs), [out[-1500:] for out in outputs]


SHELL_ON_HVC1 = "exec setsid sh -c 'exec sh -i </dev/hvc1 >/dev/hvc1 2>&1'\n"  # hvc1 becomes its tty


def test_interactive_shell_on_a_terminal(tmp_path, busybox) -> None:
    """A person at a terminal: a job-control shell, Ctrl-C to the foreground job,
    and the lguest interrupt controller ticking in /proc/interrupts."""
    image = initramfs(tmp_path, busybox, PROLOGUE + SHELL_ON_HVC1)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", f"--initrd={image}", "64", BZIMAGE,
                             "console=hvc0", "panic=-1"], stdin=terminal, stdout=terminal,
                            stderr=subprocess.PIPE, cwd=ROOT)

    def type_and_expect(keys: bytes, text: str, timeout: float = 60) -> str:
        os.write(controller, keys)
        seen = b""
        deadline = time.monotonic() + timeout
        while text.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                seen += os.read(controller, 65536)
        assert text.encode() in seen, seen[-2000:]
        return seen.decode(errors="replace")

    try:
        type_and_expect(b"", "/ # ")
        type_and_expect(b"sleep 100\r", "sleep 100")
        time.sleep(2)  # until the shell has made the sleep the foreground job
        type_and_expect(b"\x03", "/ # ", timeout=20)  # Ctrl-C ends the foreground job at once
        type_and_expect(b"printf '%s-%s\\n' ali ve\r", "ali-ve")
        seen = type_and_expect(b"cat /proc/interrupts; echo end-$((1 + 2))\r", "end-3")
        assert "lguest-level" in seen
        os.write(controller, b"poweroff -f\r")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(controller)
        os.close(terminal)
