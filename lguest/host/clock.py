"""The Guest's clock: a one-shot timer that raises irq 0 (spec §4.8).

SET_CLOCKEVENT(ns) arms it `ns` nanoseconds from now; 0 cancels it.  It runs on
wall-clock time whether or not the Guest is running, like the original's hrtimer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TIMER_IRQ = 0


class Clock:
    def __init__(self, raise_irq: Callable[[int], None]) -> None:
        self.raise_irq = raise_irq
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def set(self, delta_ns: int) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if delta_ns:
                self._timer = threading.Timer(delta_ns / 1e9, self.raise_irq, (TIMER_IRQ,))
                self._timer.daemon = True
                self._timer.start()

    def stop(self) -> None:
        self.set(0)
