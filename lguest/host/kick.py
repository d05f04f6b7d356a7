"""Getting a running vCPU's attention from another thread.

The timer and the Launcher's device threads raise interrupts while the vCPU is
deep inside the emulator.  Unicorn's emu_stop() ends emulation, but a stop that
lands just before emu_start() begins is forgotten.  So a kick is a request the
vCPU must acknowledge: a small thread repeats emu_stop() every 50 µs until the
vCPU's run loop comes round and says it has seen it (DESIGN: "prove the kick
mechanism"; tests/test_interrupts.py does, with thousands of kicks).

The same thread also plays the part of the original Host's own timer tick: an
interrupt the Guest could not take (its irq_enabled was 0) must be looked at
again soon even if the Guest never traps (`kick_later`), because its `iret` back
to a busy user program re-enables interrupts without telling anyone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RETRY_SECONDS = 50e-6


class Kicker:
    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._wanted = threading.Event()
        self._cond = threading.Condition()
        self._later: float | None = None  # monotonic time of a scheduled kick
        self._closed = False
        self.kicks = 0  # emu_stop calls made, for statistics
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="lguest-kick", daemon=True)
            self._thread.start()

    def kick(self) -> None:
        """Ask the vCPU to come out of the emulator (any thread)."""
        with self._cond:
            self._ensure_thread()
            self._wanted.set()
            self._cond.notify()

    def kick_later(self, delay: float) -> None:
        """Kick in `delay` seconds, unless a kick is already due sooner."""
        with self._cond:
            self._ensure_thread()
            due = time.monotonic() + delay
            if self._later is None or due < self._later:
                self._later = due
                self._cond.notify()

    def acknowledge(self) -> None:
        """The vCPU's run loop is outside the emulator and will look at what is pending."""
        self._wanted.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._wanted.set()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted.is_set() and not self._closed:
                    if self._later is not None and time.monotonic() >= self._later:
                        self._later = None
                        self._wanted.set()
                        break
                    timeout = None if self._later is None else self._later - time.monotonic()
                    self._cond.wait(timeout)
                if self._closed:
                    return
            while self._wanted.is_set() and not self._closed:
                self._stop()
                self.kicks += 1
                time.sleep(RETRY_SECONDS)
