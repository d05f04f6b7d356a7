"""The Launcher against hostile Guests and odd surroundings (issue 9, Launcher side).

Signals and escape keys must stop the Launcher whatever the Guest does, with the
terminal restored and the conventional status; host I/O errors, bad options and
unusual standard streams must end in a clear line and a chosen status, never in
exit 3 (our own bug) or a hang.  Every run here is the real `lguest` command on a
real Guest, a real pseudo-terminal, real files, pipes and signals.
"""

from __future__ import annotations

import fcntl
import os
import pty
import resource
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import ROOT, RUN_TIMEOUT, lguest

LAUNCHER = [sys.executable, "-m", "lguest.launcher.main"]
READY = b"ready\n"
ESCAPE, CTRL_C = b"\x1d", b"\x03"
QUIT = ESCAPE + b"q"  # Ctrl-] opens the escape menu; q quits
STOPPED_BY_USER = "stopped from the console (Ctrl-C three times, or Ctrl-])"

# Each Guest prints READY through the early console (the console's emerg_wr, reached
# through the PCI_CFG window: bar 0, offset 60 + 8, length 4) once it is in its bad state.
SAY_READY = "\tcall say_ready\n"
SAY_READY_CODE = """
cfg_write:				/* config dword %ecx of slot 1 := %eax */
	pushl %eax
	movl $0x80000800, %eax
	orl %ecx, %eax
	movw $0xcf8, %dx
	outl %eax, %dx
	popl %eax
	movw $0xcfc, %dx
	outl %eax, %dx
	ret
say_ready:
	pushal
	movl $0x80000888, %eax
	movw $0xcf8, %dx
	outl %eax, %dx
	movb $0, %al
	movw $0xcfc, %dx
	outb %al, %dx			/* cap.bar = 0: a byte-wide field */
	movl $0x8c, %ecx
	movl $68, %eax
	call cfg_write			/* cap.offset = emerg_wr */
	movl $0x90, %ecx
	movl $4, %eax
	call cfg_write			/* cap.length = 4 */
	movl $ready, %esi
1:	movzbl (%esi), %eax
	testl %eax, %eax
	jz 2f
	movl $0x94, %ecx
	call cfg_write			/* one character through the window */
	incl %esi
	jmp 1b
2:	popal
	ret
	.data
ready:	.asciz "ready\\n"
	.text
"""
GUESTS = {
    "spins": "test_main:\n\tINIT\n" + SAY_READY + "\tjmp .\n",
    "halts forever": "test_main:\n\tINIT\n" + SAY_READY + "1:\tHCALL LHCALL_HALT\n\tjmp 1b\n",
    "spins with interrupts off": "test_main:\n\tINIT\n\tmovl $0, lguest_data + LD_IRQ_ENABLED\n\tcli\n"
                                 + SAY_READY + "\tjmp .\n",
    "floods interrupts": """
timer:	pushal
	HCALL LHCALL_SET_CLOCKEVENT, $1		/* the next tick at once */
	popal
	jmp lguest_iret
test_main:
	INIT
	GATE 0x20, timer
	movl $0, lguest_data + LD_BLOCKED
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	HCALL LHCALL_SET_CLOCKEVENT, $1
""" + SAY_READY + "\tjmp .\n",
    "touches pages": """
test_main:
	INIT
	call setup_user_paging
""" + SAY_READY + """
1:	HCALL LHCALL_FLUSH_TLB, $1		/* every page must be filled again */
	movl $0x200000, %eax
2:	movl (%eax), %ebx
	addl $0x1000, %eax
	cmpl $0x400000, %eax
	jne 2b
	jmp 1b
""",
}


class OnTerminal:
    """The `lguest` command with a pseudo-terminal as its stdin and stdout."""

    def __init__(self, *args: str) -> None:
        self.controller, self.terminal = pty.openpty()
        self.settings = termios.tcgetattr(self.terminal)
        self.proc = subprocess.Popen([*LAUNCHER, *args], stdin=self.terminal, stdout=self.terminal,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        self.output = b""

    def wait_for(self, text: bytes, times: int = 1) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while self.output.count(text) < times:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.output[-500:]
            self._read()

    def finish(self) -> tuple[int, str]:
        """Its exit status and stderr, reading the terminal meanwhile so it never blocks."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the Launcher did not stop"
            self._read()
        assert self.proc.stderr
        return self.proc.returncode, self.proc.stderr.read().decode()

    def _read(self) -> None:
        if select.select([self.controller], [], [], 0.05)[0]:
            self.output += os.read(self.controller, 65536)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.controller)
        os.close(self.terminal)


def last_line(stderr: str) -> str:
    """The Launcher's last word, without its `lguest: ` prefix."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1].removeprefix("lguest: ")


@pytest.fixture
def terminal():
    sessions: list[OnTerminal] = []

    def start(*args: str) -> OnTerminal:
        sessions.append(OnTerminal(*args))
        return sessions[-1]

    yield start
    for session in sessions:
        session.close()


# --- signals (issue 9.3, 9.5) -------------------------------------------------------------------

@pytest.mark.parametrize(("guest", "sig"), [
    *((guest, signal.SIGTERM) for guest in GUESTS),
    ("spins", signal.SIGHUP), ("spins", signal.SIGINT), ("halts forever", signal.SIGINT),
    ("touches pages", signal.SIGHUP),
])
def test_signals_stop_any_guest(asm_guest, terminal, guest: str, sig: signal.Signals) -> None:
    """128+signum, the terminal as it was, and no kill reason blamed on the Guest."""
    session = terminal("32", str(asm_guest(GUESTS[guest] + SAY_READY_CODE)))
    session.wait_for(READY.strip())  # a terminal shows "\r\n"
    assert not termios.tcgetattr(session.terminal)[3] & termios.ECHO  # raw while running
    session.proc.send_signal(sig)
    status, stderr = session.finish()
    assert (status, last_line(stderr)) == (128 + sig, f"stopped by {sig.name}")
    assert termios.tcgetattr(session.terminal) == session.settings


def test_sigterm_stops_a_restart_loop(puppy, terminal) -> None:
    session = terminal("run", "restart")
    session.wait_for(b"puppy: command line", 2)
    session.proc.send_signal(signal.SIGTERM)
    status, stderr = session.finish()
    assert (status, last_line(stderr)) == (143, "stopped by SIGTERM")
    assert termios.tcgetattr(session.terminal) == session.settings


def test_sigterm_while_the_host_serves_page_faults_is_never_a_guest_death(asm_guest) -> None:
    """Issue 9.5: ten signals, each landing while TLB fills are being served."""
    elf = str(asm_guest(GUESTS["touches pages"] + SAY_READY_CODE))
    for _ in range(10):
        proc = subprocess.Popen([*LAUNCHER, "32", elf], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout and proc.stdout.readline() == READY
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT)
        assert (proc.returncode, last_line(stderr.decode())) == (143, "stopped by SIGTERM")


# --- escape keys (issue 9.4) ------------------------------------------------------------------

@pytest.mark.parametrize("keys", [QUIT, CTRL_C * 3], ids=["ctrl-] q", "ctrl-c x3"])
@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_escape_keys_stop_any_guest(asm_guest, terminal, guest: str, keys: bytes) -> None:
    """No console driver in these Guests: the keys work anyway."""
    session = terminal("32", str(asm_guest(GUESTS[guest] + SAY_READY_CODE)))
    session.wait_for(READY.strip())  # a terminal shows "\r\n"
    for key in keys.hex(" ").split():
        os.write(session.controller, bytes.fromhex(key))
    status, stderr = session.finish()
    assert (status, last_line(stderr)) == (130, STOPPED_BY_USER)
    assert termios.tcgetattr(session.terminal) == session.settings


@pytest.mark.parametrize(("words", "ready", "times"), [
    (["bench"], b"puppy: command line", 1),
    (["restart"], b"puppy: command line", 2),  # stopped in its restart loop
    (["sleep=100000"], b"puppy: command line", 1),
])
def test_escape_key_stops_puppy(puppy, terminal, words: list[str], ready: bytes, times: int) -> None:
    session = terminal("run", *words)
    session.wait_for(ready, times)
    os.write(session.controller, QUIT)
    status, stderr = session.finish()
    assert (status, last_line(stderr)) == (130, STOPPED_BY_USER)
    assert termios.tcgetattr(session.terminal) == session.settings


def test_keys_typed_during_boot_reach_the_shell(puppy, terminal) -> None:
    """Typed before the console driver is up: buffered for the Guest, not lost."""
    session = terminal("run", "shell")
    session.wait_for(b"puppy: command line")  # the early console: no driver yet
    os.write(session.controller, b"echo typed early\r")
    session.wait_for(b"typed early\r\n", 2)  # the shell's echo of the line, then echo's output
    os.write(session.controller, b"poweroff\r")
    assert session.finish()[0] == 0


# --- block devices and host I/O errors (issue 9.6) ---------------------------------------------

def test_block_file_must_be_a_file_or_a_disk(puppy, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(tmp_path), str(fifo), "/dev/null"):
        run = lguest(f"--block={path},ro", "run", "poweroff")
        assert (run.status, run.stderr) == (2, f"lguest: Bad --block '{path}': not a regular file or"
                                               " a block device\n")


def test_write_refused_by_the_host_is_an_io_error_for_the_guest(puppy, tmp_path: Path) -> None:
    """EFBIG under `ulimit -f`: the Guest's write fails, the Guest carries on."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    limit = 4096  # sectors 8 and up lie beyond it

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([*LAUNCHER, f"--block={disk}", "run", "shell"], input=b"write 20 too far\n"
                          b"write 1 fits\npoweroff\n", capture_output=True, cwd=ROOT, timeout=RUN_TIMEOUT,
                          preexec_fn=small_files)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "write: I/O error" in out and "wrote sector 1" in out
    assert disk.read_bytes()[512:516] == b"fits"


# --- options checked before boot (issue 9.9, 9.10) ---------------------------------------------

@pytest.mark.parametrize("spec", ["udp:70000:127.0.0.1:40000", "udp:40000:127.0.0.1:70000",
                                  "udp:0:127.0.0.1:40000"])
def test_udp_ports_are_range_checked(puppy, spec: str) -> None:
    run = lguest(f"--net={spec}", "run", "poweroff")
    assert (run.status, run.stderr) == (2, f"lguest: Bad --net '{spec}': ports must be 1..65535\n")


def test_too_many_devices(puppy) -> None:
    run = lguest(*["--rng"] * 31, "run", "poweroff")
    assert (run.status, run.stderr) == (2, "lguest: Can only handle 31 PCI devices\n")


# --- standard streams (issue 9.10) --------------------------------------------------------------

def launch(elf: Path, **streams) -> tuple[int, str]:
    proc = subprocess.run([*LAUNCHER, "32", str(elf)], stderr=subprocess.PIPE, cwd=ROOT,
                          timeout=RUN_TIMEOUT, **streams)
    return proc.returncode, proc.stderr.decode()


PRINT_AND_POWER_OFF = "test_main:\n" + SAY_READY + "\tINIT\n\tPOWEROFF\n" + SAY_READY_CODE


@pytest.mark.parametrize("stdin", ["devnull", "closed"])
def test_no_input_is_fine(asm_guest, stdin: str) -> None:
    streams = {"stdin": subprocess.DEVNULL} if stdin == "devnull" else {"preexec_fn": lambda: os.close(0)}
    status, stderr = launch(asm_guest(PRINT_AND_POWER_OFF), stdout=subprocess.DEVNULL, **streams)
    assert (status, last_line(stderr)) == (0, "CRASH: Power down")


def test_stdout_closed(asm_guest) -> None:
    status, stderr = launch(asm_guest(PRINT_AND_POWER_OFF), preexec_fn=lambda: os.close(1))
    assert (status, last_line(stderr)) == (2, "standard output is closed: nowhere to show the Guest's"
                                               " console")


def test_stdout_full(asm_guest) -> None:
    with open("/dev/full", "wb") as full:
        status, stderr = launch(asm_guest(PRINT_AND_POWER_OFF), stdout=full)
    assert (status, last_line(stderr)) == (1, "console: output: No space left on device")


def test_stdout_reader_gone(asm_guest) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        status, stderr = launch(asm_guest(PRINT_AND_POWER_OFF), stdout=write_end)
    finally:
        os.close(write_end)
    assert (status, last_line(stderr)) == (1, "console: output: Broken pipe")


def test_terminal_closed_under_the_launcher(asm_guest, terminal) -> None:
    """The window goes away (input and output fail with EIO); a SIGHUP then ends us cleanly."""
    session = terminal("32", str(asm_guest(GUESTS["spins"] + SAY_READY_CODE)))
    session.wait_for(READY.strip())  # a terminal shows "\r\n"
    os.close(session.controller)
    session.controller = os.open(os.devnull, os.O_RDONLY)  # for close(); never read again
    session.proc.send_signal(signal.SIGHUP)
    session.proc.wait(timeout=RUN_TIMEOUT)
    assert session.proc.stderr
    stderr = session.proc.stderr.read().decode()
    assert (session.proc.returncode, last_line(stderr)) == (129, "stopped by SIGHUP")


def test_stdout_nobody_reads_does_not_deafen_us(asm_guest) -> None:
    """A Guest printing for ever into a pipe nobody drains: SIGTERM still ends us."""
    elf = asm_guest("test_main:\n\tINIT\n1:" + SAY_READY + "\tjmp 1b\n" + SAY_READY_CODE)
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen([*LAUNCHER, "32", str(elf)], stdin=subprocess.DEVNULL, stdout=write_end,
                                stderr=subprocess.PIPE, cwd=ROOT)
        capacity = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
        deadline = time.monotonic() + RUN_TIMEOUT
        # Nearly full (the kernel keeps some room in page-sized pieces): the writes stall.
        while waiting_in_pipe(read_end) < capacity - 2 * select.PIPE_BUF:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (proc.returncode, last_line(stderr.decode())) == (143, "stopped by SIGTERM")


def waiting_in_pipe(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
