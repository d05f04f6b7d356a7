"""An unmodified Linux 4.9 lguest guest on our Host and Launcher (issue: real Linux).

These run when LGUEST_LINUX_BZIMAGE names a 4.9 i386 lguest bzImage (README, "Booting a
real Linux guest"); LGUEST_LINUX_VMLINUX may name its ELF vmlinux too.  Each runs again for
a PAE build (HIGHMEM64G) when LGUEST_LINUX_PAE_BZIMAGE (and LGUEST_LINUX_PAE_VMLINUX) name
one: the Launcher must tell the two apart from the image alone.  The initramfs is
built here from a static i386 busybox: LGUEST_BUSYBOX, or Debian's busybox-static:i386
fetched with apt-get.

They check what the Host and Launcher are responsible for (the lguest boot path, the
early-console lines that show what they told the kernel, the console going quiet when the
virtio driver binds it as hvc1, power-off, devices), never a whole boot log: how many lines a
kernel prints depends on its configuration, not on us.
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
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, lguest
from test_shell import free_ports

MARKER = "GUEST-BOOTED"
LAST_EARLY_LINE = "Serial: 8250/16550 driver, 4 ports, IRQ sharing disabled"
# Early-console lines, in order, that show what the Host and Launcher gave the kernel: the
# Switcher's reserved top, the memory map and initrd in boot_params, hardware_subarch, the
# command line, the console on PCI slot 1 and its emerg_wr, the lguest clocksource (tsc_khz 0).
HOST_LINES = [
    r"Reserving virtual address space above 0xffc00000",
    r"LGUEST: \[mem 0x0000000000000000-0x0000000003ffffff\] usable",
    r"RAMDISK: \[mem 0x0[0-9a-f]{4}000-0x03ffffff\]",  # the initrd ends at the top of RAM
    r"Booting paravirtualized kernel on lguest",
    r"Kernel command line: console=hvc0 panic=-1",
    r"lguest: Console via virtio-pci emerg_wr",
    r"console \[hvc0\] enabled",
    r"PCI: Using configuration type 1 for base access",
    r"clocksource: Switched to clocksource lguest",
    r"virtio-pci 0000:00:01\.0: enabling device",
    re.escape(LAST_EARLY_LINE),
]
# Lines that differ between two boots of one kernel (timing, the initrd's size).
VOLATILE = re.compile(r"BogoMIPS|RAMDISK|Freeing initrd|Memory:")



@dataclass(frozen=True)
class Kernel:
    pae: bool
    bzimage: str
    vmlinux: str | None


def _kernels() -> list:
    """Both builds, each skipped (saying which variable to set) unless its bzImage is named."""
    params = []
    for pae, variable in ((False, "LGUEST_LINUX_"), (True, "LGUEST_LINUX_PAE_")):
        bzimage = os.environ.get(f"{variable}BZIMAGE")
        what = "a PAE (HIGHMEM64G)" if pae else "a non-PAE (NOHIGHMEM)"
        skip = pytest.mark.skipif(not bzimage, reason=f"set {variable}BZIMAGE to {what} Linux 4.9 bzImage")
        kernel = Kernel(pae, bzimage or "", os.environ.get(f"{variable}VMLINUX"))
        params.append(pytest.param(kernel, id="pae" if pae else "2level", marks=skip))
    return params


@pytest.fixture(scope="module", params=_kernels())
def linux(request) -> Kernel:
    return request.param


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


def boot(tmp_path: Path, busybox: bytes, script: str, kernel: str, *options: str, mem: str = "64"):
    image = initramfs(tmp_path, busybox, script)
    return lguest(f"--initrd={image}", *options, mem, kernel, "console=hvc0", "panic=-1")


def messages(text: str) -> list[str]:
    return [re.sub(r"^\[ *[0-9.]+\] ", "", line.rstrip("\r")) for line in text.splitlines()]


def in_order(patterns: list[str], lines: list[str]) -> list[str]:
    """The patterns not found as an ordered subsequence of `lines` (first unmatched onwards)."""
    rest = iter(lines)
    for n, pattern in enumerate(patterns):
        if not any(re.match(pattern, line) for line in rest):
            return patterns[n:]
    return []


@pytest.fixture(scope="module")
def hvc1_boot(tmp_path_factory, busybox, linux):
    """The plain boot: an /init that prints the marker on hvc1 and powers off."""
    script = PROLOGUE + ON_HVC1 + f"echo {MARKER}\npoweroff -f\n"
    return boot(tmp_path_factory.mktemp("hvc1"), busybox, script, linux.bzimage, "--verbose")


def test_boots_to_init_on_hvc1(hvc1_boot, linux) -> None:
    run = hvc1_boot
    assert (run.status, run.reason) == (0, "CRASH: Power down")
    lines = messages(run.stdout)
    assert in_order(HOST_LINES, lines) == [], lines
    # The kernel's own messages stop at the early console's last line; init's go on, on hvc1.
    assert lines.index(MARKER) > lines.index(LAST_EARLY_LINE)
    # The Launcher read the page-table format from the image (no --pae was given).
    assert f", {'PAE' if linux.pae else 'non-PAE'} paging" in run.stderr


def test_init_on_dev_console_goes_silent_like_the_original(tmp_path, busybox, hvc1_boot, linux) -> None:
    """hvc0 loses its backend when the virtio console binds (as hvc1): nothing more shows,
    yet init runs and powers off.  The boot itself is lguest's: INIT, then NEW_PGTABLE."""
    run = boot(tmp_path, busybox, PROLOGUE + f"echo {MARKER}\npoweroff -f\n", linux.bzimage, "--trace=hcalls")
    assert (run.status, run.reason) == (0, "CRASH: Power down")
    calls = [line.split("hcall ")[1].split("(")[0] for line in run.stderr.splitlines() if "hcall " in line]
    assert calls[:2] == ["LGUEST_INIT", "NEW_PGTABLE"]
    assert calls[-1] == "SHUTDOWN"
    lines = messages(run.stdout)
    assert MARKER not in run.stdout
    assert lines[-1] == LAST_EARLY_LINE
    # Exactly what the other boot showed up to that line: the same kernel, the same Host.
    early = messages(hvc1_boot.stdout)
    early = early[:early.index(LAST_EARLY_LINE) + 1]
    assert [line for line in lines if not VOLATILE.search(line)] == [
        line for line in early if not VOLATILE.search(line)]


def test_elf_vmlinux_boots_too(tmp_path, busybox, linux) -> None:
    if not linux.vmlinux:
        pytest.skip("set LGUEST_LINUX_VMLINUX (LGUEST_LINUX_PAE_VMLINUX) to the same kernel's ELF vmlinux")
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + f"echo {MARKER}\npoweroff -f\n", linux.vmlinux)
    assert (run.status, MARKER in run.stdout) == (0, True)


@pytest.mark.skipif(not shutil.which("mke2fs") or not shutil.which("debugfs"), reason="needs e2fsprogs")
def test_ext2_disk_written_by_linux(tmp_path, busybox, linux) -> None:
    disk = tmp_path / "disk.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext2", str(disk), "4M"], check=True)
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + """
mount -t ext2 /dev/vda /mnt
echo written by linux > /mnt/hello.txt
umount /mnt
sync
echo DONE
poweroff -f
""", linux.bzimage, f"--block={disk}")
    assert (run.status, "DONE" in run.stdout) == (0, True), run.stdout[-2000:]
    content = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(disk)], capture_output=True, text=True)
    assert content.stdout == "written by linux\n"


def test_hwrng(tmp_path, busybox, linux) -> None:
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + """
echo RNG $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')
poweroff -f
""", linux.bzimage, "--rng")
    found = re.search(r"RNG ([0-9a-f]{32})", run.stdout)
    assert run.status == 0 and found and found.group(1) != "0" * 32


def test_reboot_restarts_cleanly(tmp_path, busybox, linux) -> None:
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
""", linux.bzimage, f"--block={disk}")
    assert run.status == 0
    assert run.stdout.index("FIRST-BOOT") < run.stdout.index("SECOND-BOOT")


def test_two_linux_guests_ping_each_other(tmp_path, busybox, linux) -> None:
    ports = free_ports()
    # Each Guest, once its own ping got an answer, stays up until it has answered one from
    # its peer (the kernel's count of echo requests received), and a second more for that
    # reply to leave; Guest 1 then also waits for Guest 2 to go quiet.  Without the first
    # wait a slow Guest 1 found Guest 2 already gone.
    answered = ("for try in $(seq 60); do [ \"$(awk '/^Icmp:/{if(!c){for(i=1;i<=NF;i++)if($i==\"InEchos\")c=i}"
                "else print $c}' /proc/net/snmp)\" -gt 0 ] && break; sleep 1; done; sleep 1\n")
    scripts = [PROLOGUE + ON_HVC1 + f"""
ip addr add 10.9.0.{me}/24 dev eth0
ip link set eth0 up
for try in $(seq 60); do ping -c 1 -W 1 10.9.0.{peer} >/dev/null && echo PING-OK && break; done
{answered}{wait}poweroff -f
""" for me, peer, wait in (
        (1, 2, "for try in $(seq 60); do ping -c 1 -W 1 10.9.0.2 >/dev/null || break; done\n"),
        (2, 1, ""))]
    procs = []
    for n, script in enumerate(scripts):
        work = Path(tempfile.mkdtemp(dir=tmp_path))
        image = initramfs(work, busybox, script)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lguest.launcher.main", f"--initrd={image}",
             f"--net=udp:{ports[n]}:127.0.0.1:{ports[1 - n]}", "64", linux.bzimage,
             "console=hvc0", "panic=-1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, text=True))
    try:
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all("PING-OK" in out for out in outputs), [out[-1500:] for out in outputs]


SHELL_ON_HVC1 = "exec setsid sh -c 'exec sh -i </dev/hvc1 >/dev/hvc1 2>&1'\n"  # hvc1 becomes its tty


def test_interactive_shell_on_a_terminal(tmp_path, busybox, linux) -> None:
    """A person at a terminal: a job-control shell, Ctrl-C to the foreground job,
    and the lguest interrupt controller ticking in /proc/interrupts."""
    image = initramfs(tmp_path, busybox, PROLOGUE + SHELL_ON_HVC1)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", f"--initrd={image}", "64",
                             linux.bzimage, "console=hvc0", "panic=-1"], stdin=terminal, stdout=terminal,
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
        # The job prints "foreground" (its command line only shows "fore''ground") once it runs.
        type_and_expect(b"sh -c 'echo fore''ground; sleep 100'\r", "foreground")
        type_and_expect(b"\x03", "/ # ", timeout=20)  # Ctrl-C ends the foreground job at once
        type_and_expect(b"echo status-$?\r", "status-130")  # killed by SIGINT, not finished
        type_and_expect(b"printf '%s-%s\\n' ali ve\r", "ali-ve")
        seen = type_and_expect(b"cat /proc/interrupts; echo end-$((1 + 2))\r", "end-3")
        assert "lguest-level" in seen
        os.write(controller, b"poweroff -f\r")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(controller)
        os.close(terminal)


def test_memory_above_896_mib_needs_pae(tmp_path, busybox, linux) -> None:
    """1500 MiB: a PAE kernel uses it all (as high memory); a NOHIGHMEM one stops at its
    low-memory limit (896 MiB less its vmalloc area and the Switcher's 4 MiB)."""
    run = boot(tmp_path, busybox, PROLOGUE + ON_HVC1 + "free\npoweroff -f\n", linux.bzimage, mem="1500")
    found = re.search(r"Mem:\s+([0-9]+)", run.stdout)
    assert run.status == 0 and found, run.stdout[-2000:]
    total_mib = int(found.group(1)) // 1024
    if linux.pae:
        assert 1400 < total_mib <= 1500
    else:
        assert total_mib < 896


def test_forced_into_the_other_mode_it_dies_by_name(tmp_path, busybox, linux) -> None:
    """The issue's case: a PAE kernel walked as non-PAE (and the reverse) is named, at its
    first NEW_PGTABLE, instead of dying of `unhandled trap 14`."""
    run = boot(tmp_path, busybox, PROLOGUE, linux.bzimage, "--no-pae" if linux.pae else "--pae")
    theirs, ours = ("PAE", "non-PAE") if linux.pae else ("non-PAE", "PAE")
    assert run.status == 1
    assert re.fullmatch(rf"{theirs} page tables in a Guest run as {ours} \(NEW_PGTABLE 0x[0-9a-f]+ maps the "
                        rf"running code at 0x[0-9a-f]+ only as {theirs}\)", run.reason), run.reason


def test_early_console_alike_both_ways(tmp_path, busybox, linux) -> None:
    """Every early-console byte (seven of each byte's eight `out`s queued in C on the
    native path) comes out the same on the pure-Python Host."""
    early = []
    for path in ((), ("--no-native",)):
        run = boot(tmp_path, busybox, PROLOGUE + "poweroff -f\n", linux.bzimage, *path)
        assert (run.status, run.reason) == (0, "CRASH: Power down")
        lines = messages(run.stdout)
        early.append([line for line in lines[:lines.index(LAST_EARLY_LINE) + 1] if not VOLATILE.search(line)])
    assert early[0] == early[1]
    assert len(early[0]) > 50
