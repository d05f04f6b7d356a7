"""How the user stops the Launcher, whatever the Guest is doing: signals and escape keys.

Python runs signal handlers on the main thread between bytecodes, and our main
thread lives inside the emulator: a Guest spinning without traps never lets a
handler run, and an exception raised from one inside an emulator callback (a TLB
fill, a port access) is swallowed by ctypes and turns into a refused fill.  So no
handler here raises.  The C-level handler writes the signal's number to a wakeup
pipe (`signal.set_wakeup_fd`); a watcher thread reads it and asks the running Guest
to stop (`Guest.stop_run`, which rings the vCPU's doorbell and wakes a halted one).
The run loop returns, and the Launcher restores the terminal and exits 128+signum.

SIGUSR1 asks for a snapshot the same way: the watcher hands the running Guest the
Launcher's save action, which its vCPU runs at its next safe point.

The keyboard gets its own thread for the same reason, started before the first boot:
Ctrl-] (a small menu, as telnet's: `s` saves a snapshot, `q` quits, `c` or any other
key continues) and three lone Ctrl-C within a second work before the Guest's console
driver is up, while it halts, spins, floods or restarts.  Everything else typed waits
in a buffer until the console's input queue takes it, across restarts too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

from lguest.host.core import Guest

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SNAPSHOT_SIGNAL = signal.SIGUSR1
ESCAPE_STATUS = 128 + signal.SIGINT  # the escape keys end us as a ^C would
STOPPED_BY_USER = "stopped from the console (Ctrl-C three times, or Ctrl-])"
CTRL_C = b"\x03"
ESCAPE = b"\x1d"  # Ctrl-]
MENU_PROMPT = b"\r\nlguest: s save a snapshot, q quit, c continue? "
MENU_SAVE, MENU_QUIT = b"s", b"q"
STDERR = 2
CTRL_C_COUNT = 3
CTRL_C_WINDOW = 1.0  # seconds
PIPE_BUFFER_LIMIT = 1 << 20  # piped input beyond this waits for the Guest to read
READ_SIZE = 4096


# tour:L.100 Signals and escape keys
# The user must always be able to stop a Guest, whatever it does: spin without a trap,
# halt for ever, flood the console, restart in a loop.  The main thread is inside the
# emulator, where a Python signal handler may not run for a long time, so SIGINT, SIGTERM
# and SIGHUP are written to a pipe by the C-level handler and a watcher thread turns them
# into a StopRequest.  The keyboard has its own thread too, watching for Ctrl-] and three
# quick Ctrl-Cs.  Both end the same way: `Guest.stop_run` rings the vCPU's doorbell, the
# run loop returns, and the Launcher restores the terminal and exits.
class StopRequest:
    """The first request to stop (exit status and message), passed to the running Guest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status: int | None = None
        self.message = ""
        self._guest: Guest | None = None
        # What a snapshot request has the running Guest do at its next safe point.
        self.save_action: Callable[[Guest], None] = lambda guest: None

    def request(self, status: int, message: str) -> None:
        """Any thread: stop now, or as soon as the next Guest starts."""
        with self._lock:
            if self.status is None:
                self.status, self.message = status, message
            guest = self._guest
        if guest is not None:
            guest.stop_run()

    def request_snapshot(self) -> None:
        """Any thread: have the running Guest saved at its next safe point (SIGUSR1, Ctrl-] s)."""
        with self._lock:
            guest = self._guest
        if guest is not None:
            guest.call_at_safe_point(self.save_action)

    def running(self, guest: Guest | None) -> None:
        """The Guest now being run (None between boots); told at once if a stop came first."""
        with self._lock:
            self._guest = guest
            stop = self.status is not None
        if stop and guest is not None:
            guest.stop_run()


@contextlib.contextmanager
def stopped_by_signals(stop: StopRequest) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP become stop requests, SIGUSR1 a snapshot request (main thread only)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = {sig: signal.signal(sig, _note_only) for sig in (*STOP_SIGNALS, SNAPSHOT_SIGNAL)}
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch_signals, args=(read_end, stop), daemon=True,
                               name="lguest-signals")
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.write(write_end, b"\0")  # no signal is numbered 0: the watcher's cue to finish
        watcher.join()
        os.close(read_end)
        os.close(write_end)


def _note_only(_signum: int, _frame: object) -> None:
    """The Python-level handler: the wakeup pipe already told the watcher everything."""


def _watch_signals(fd: int, stop: StopRequest) -> None:
    while True:
        for signum in os.read(fd, 64):
            if signum == 0:
                return
            if signum == SNAPSHOT_SIGNAL:
                stop.request_snapshot()
                continue
            stop.request(128 + signum, f"stopped by {signal.Signals(signum).name}")


class Keyboard:
    """The Launcher's stdin, read by its own thread from start-up to exit."""

    def __init__(self, fd: int, stop: StopRequest) -> None:
        self.fd = fd
        self.is_terminal = os.isatty(fd)
        self.ended = False  # end of input (or the terminal went away)
        self.listener: Callable[[], None] = lambda: None  # the console: keys are waiting
        self._stop = stop
        self._buffer = bytearray()
        self._changed = threading.Condition()
        self._ctrl_c: list[float] = []
        self._menu_open = False  # Ctrl-] was typed: the next key is the menu's
        threading.Thread(target=self._read, daemon=True, name="lguest-keyboard").start()

    def take(self, room: int) -> bytes | None:
        """Up to `room` bytes typed so far (b"" if none yet); None once input has ended."""
        with self._changed:
            data = bytes(self._buffer[:room])
            del self._buffer[:room]
            self._changed.notify()
            return None if not data and self.ended else data

    def escape_requested(self, data: bytes) -> bool:
        """The third Ctrl-C within a second.

        Only keys read on their own count (a read holding nothing but Ctrl-Cs counts
        each: fast typing arrives together), so pasted text never stops us.
        """
        if data.strip(CTRL_C):
            self._ctrl_c.clear()
            return False
        now = time.monotonic()
        self._ctrl_c = [t for t in self._ctrl_c if now - t < CTRL_C_WINDOW] + [now] * len(data)
        return len(self._ctrl_c) >= CTRL_C_COUNT

    def _read(self) -> None:
        while data := self._read_some():
            if self.escape_requested(data):
                self._stop.request(ESCAPE_STATUS, STOPPED_BY_USER)
                continue
            self._take(data)
        if self._menu_open:  # input ended at the menu: as the escape key always did, stop
            self._stop.request(ESCAPE_STATUS, STOPPED_BY_USER)
        with self._changed:
            self.ended = True
        self.listener()

    def _take(self, data: bytes) -> None:
        """Keys for the Guest, except Ctrl-] and the menu choice after it (as telnet's)."""
        while data:
            if self._menu_open:
                self._choose(data[:1])
                data = data[1:]
                continue
            keys, escape, data = data.partition(ESCAPE)
            if keys:
                self._give(keys)
            if escape:
                self._menu_open = True
                self._tell(MENU_PROMPT)

    def _choose(self, key: bytes) -> None:
        """The key after Ctrl-]: save, quit, or anything else to carry on."""
        self._menu_open = False
        self._tell(key + b"\r\n" if key.isalpha() else b"\r\n")
        if key == MENU_QUIT:
            self._stop.request(ESCAPE_STATUS, STOPPED_BY_USER)
        elif key == MENU_SAVE:
            self._stop.request_snapshot()

    @staticmethod
    def _tell(text: bytes) -> None:
        with contextlib.suppress(OSError):  # stderr closed: the choice still counts
            os.write(STDERR, text)

    def _give(self, keys: bytes) -> None:
        with self._changed:
            self._buffer += keys
            self.listener()
            # A pipe can wait for the Guest; a terminal is always read, for its escape keys.
            while len(self._buffer) >= PIPE_BUFFER_LIMIT and not self.is_terminal:
                self._changed.wait()

    def _read_some(self) -> bytes:
        try:
            return os.read(self.fd, READ_SIZE)
        except OSError:  # EIO: the terminal was closed under us; that is an end of input
            return b""
