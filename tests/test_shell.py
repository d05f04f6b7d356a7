"""puppy's shell on the Launcher's virtio devices: real bytes through the console,
a disk file, the host's randomness, and a network between two Guests (issue: devices)."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time

from conftest import ROOT, RUN_TIMEOUT, lguest

PROMPT = "puppy$ "


def shell(script: str, *options: str) -> tuple[int, list[str], str]:
    run = lguest(*options, "run", "shell", stdin=script)
    lines = [line.removeprefix(PROMPT) for line in run.stdout.splitlines()]
    return run.status, lines, run.stderr


def test_piped_commands_reach_the_shell(puppy) -> None:
    status, lines, _ = shell("echo hello world\nuptime\nps\nnosuchthing\npoweroff\n")
    assert status == 0
    assert "hello world" in lines
    assert any(line.startswith("up ") and line.endswith(" ms") for line in lines)
    assert any(line.split()[-2:] == ["sh", "running"] for line in lines)
    assert "sh: nosuchthing: not found" in lines


def test_disk_write_survives_the_launcher_being_killed(puppy, tmp_path) -> None:
    """Written and flushed by the Guest, the data is in the file even after SIGKILL,
    and a new boot of the Guest reads it back."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", f"--block={disk}", "run", "shell"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin and proc.stdout
    proc.stdin.write(b"write 5 persistent bytes\n")
    proc.stdin.flush()
    hang_guard = threading.Timer(RUN_TIMEOUT, proc.kill)
    hang_guard.start()
    for line in proc.stdout:
        if b"wrote sector 5" in line:
            break
    hang_guard.cancel()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert disk.read_bytes()[5 * 512:5 * 512 + 16] == b"persistent bytes"
    status, lines, _ = shell("cat 5\npoweroff\n", f"--block={disk}")
    assert status == 0 and "persistent bytes" in lines


def test_read_only_disk_refuses_writes(puppy, tmp_path) -> None:
    disk = tmp_path / "ro.img"
    disk.write_bytes(bytes(8 * 512))
    status, lines, _ = shell("write 1 nope\ncat 1\npoweroff\n", f"--block={disk},ro")
    assert status == 0
    assert disk.read_bytes() == bytes(8 * 512)
    assert "wrote sector 1" not in lines


def test_entropy_device(puppy) -> None:
    status, lines, _ = shell("rng 16\nrng 16\npoweroff\n", "--rng")
    values = [line for line in lines if len(line) == 32 and all(c in "0123456789abcdef" for c in line)]
    assert status == 0 and len(values) == 2 and values[0] != values[1]


def test_shell_benchmark_in_user_mode(puppy) -> None:
    status, lines, _ = shell("bench\npoweroff\n")
    assert status == 0
    assert any(line.startswith("bench checksum 0x0ba02cb5 in ") for line in lines)


def free_ports() -> tuple[int, int]:
    ports = []
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports[0], ports[1]


def test_two_guests_exchange_a_frame_without_root(puppy) -> None:
    a, b = free_ports()
    receiver = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", f"--net=udp:{a}:127.0.0.1:{b}",
                                 "run", "shell"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)
    try:
        # Its shell prompts once the drivers are bound, so the card's buffers are posted.
        booted = read_until_prompt(receiver.stdout.fileno())
        sender = lguest(f"--net=udp:{b}:127.0.0.1:{a}", "run", "shell",
                        stdin="net send hello over udp\npoweroff\n")
        out, _ = receiver.communicate(b"net recv\npoweroff\n", timeout=120)
    finally:
        receiver.kill()
    assert sender.status == 0
    assert "received: hello over udp" in (booted + out).decode()
    assert receiver.returncode == 0


def read_until_prompt(fd: int, timeout: float = 60) -> bytes:
    """What a Launcher prints up to its shell's first prompt (the timeout is a hang guard)."""
    output = b""
    deadline = time.monotonic() + timeout
    while PROMPT.encode() not in output and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            output += chunk
    assert PROMPT.encode() in output, output[-2000:]
    return output


def started_on_a_terminal(controller: int, terminal: int) -> subprocess.Popen:
    """`lguest run shell` on a pseudo-terminal, once its prompt is showing."""
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", "run", "shell"], stdin=terminal,
                            stdout=terminal, stderr=subprocess.PIPE, cwd=ROOT)
    read_until_prompt(controller)
    return proc


def test_terminal_is_restored_after_sigterm(puppy) -> None:
    """On a terminal the Launcher goes raw; SIGTERM must leave the terminal as it was."""
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    proc = started_on_a_terminal(controller, terminal)
    try:
        raw = termios.tcgetattr(terminal)
        assert not raw[3] & termios.ECHO  # raw while running
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                os.read(controller, 65536)  # keep the terminal's output flowing
        assert proc.poll() == 143  # 128 + SIGTERM
        assert termios.tcgetattr(terminal) == before
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        os.close(controller)
        os.close(terminal)


def test_keyboard_escape_stops_the_launcher(puppy) -> None:
    """Ctrl-] then q ends the Launcher whatever the Guest does (exit status 130)."""
    controller, terminal = pty.openpty()
    proc = started_on_a_terminal(controller, terminal)
    try:
        os.write(controller, b"\x1dq")
        assert proc.wait(timeout=30) == 130
        assert b"stopped from the console" in proc.stderr.read()
    finally:
        proc.kill()
        os.close(controller)
        os.close(terminal)


def test_driver_protocol_violation_from_a_guest(asm_guest) -> None:
    """A Guest skipping ACKNOWLEDGE on the console: the Launcher ends it, exit status 1."""
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	call setup_user_paging
	movl $page_table, %ebx
	movl $0x2100063, 0x300 * 4(%ebx)	/* 0x300000 -> the console's BAR0 */
	HCALL LHCALL_FLUSH_TLB, $1
	movb $2, 0x300000 + 20			/* device_status = DRIVER */
	POWEROFF
""")))
    assert (run.status, run.reason) == (1, "console: bad driver: unexpected status transition 0x0 -> 0x2")
