"""Getting a running vCPU's attention from another thread.

The timer and the Launcher's device threads raise interrupts while the vCPU is
deep inside the emulator.  Unicorn's emu_stop() ends emulation, but a stop that
lands just before emu_start() begins is forgotten.  So a kick is a request the
vCPU must acknowledge: a small thread repeats emu_stop() every 50 µs until the
vCPU's run loop comes round and says it has seen it (DESIGN: "prove the kick
mechanism"; tests/test_interrupts.py does, with thousands of kicks).
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
        self._closed = False
        self.kicks = 0  # emu_stop calls made, for statistics
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def kick(self) -> None:
        """Ask the vCPU to come out of the emulator (any thread)."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="lguest-kick", daemon=True)
                self._thread.start()
        self._wanted.set()

    def acknowledge(self) -> None:
        """The vCPU's run loop is outside the emulator and will look at what is pending."""
        self._wanted.clear()

    def close(self) -> None:
        self._closed = True
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._closed:
                return
            while self._wanted.is_set() and not self._closed:
                self._stop()
                self.kicks += 1
                time.sleep(RETRY_SECONDS)
