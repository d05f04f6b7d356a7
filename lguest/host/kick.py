"""Getting a running vCPU's attention from another thread.

The timer and the Launcher's device threads raise interrupts while the vCPU is
deep inside the emulator.  They ring the Switcher's doorbell (cpu.py, kick.c): at
the start of its next translated block the vCPU stops by itself, which is the one
place stopping Unicorn is clean.  A doorbell rung while the vCPU is outside the
emulator simply stops the next entry at once; the run loop then delivers.

This module adds the original Host's own timer tick: an interrupt the Guest could
not take (its irq_enabled was 0) must be looked at again soon even if the Guest
never traps (`kick_later`), because its `iret` back to a busy user program
re-enables interrupts without telling anyone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Kicker:
    def __init__(self, ring: Callable[[], None]) -> None:
        self._ring = ring
        self._cond = threading.Condition()
        self._later: float | None = None  # monotonic time of a scheduled kick
        self._closed = False
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        """Ask the vCPU to come out of the emulator (any thread)."""
        self._ring()

    def kick_later(self, delay: float) -> None:
        """Kick in `delay` seconds, unless a kick is already due sooner."""
        with self._cond:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lguest-kick", daemon=True)
                self._thread.start()
            due = time.monotonic() + delay
            if self._later is None or due < self._later:
                self._later = due
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._later is None:
                    self._cond.wait()
                elif time.monotonic() >= self._later:
                    self._later = None
                    self._ring()
                else:
                    self._cond.wait(self._later - time.monotonic())
