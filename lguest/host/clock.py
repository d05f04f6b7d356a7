"""The Guest's clock: a one-shot timer that raises irq 0 (spec §4.8).

SET_CLOCKEVENT(ns) arms it `ns` nanoseconds from now; 0 cancels it.  It runs
whether or not the Guest is running, like the original's hrtimer.  One thread per
Guest waits for the deadline (Linux re-arms every tick: a thread per arm would
cost more than the tick).  We count on the monotonic clock, so a wall-clock step
on the host neither fires nor delays the Guest's tick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TIMER_IRQ = 0


class Clock:
    def __init__(self, raise_irq: Callable[[int], object]) -> None:
        self.raise_irq = raise_irq
        self._deadline: int | None = None  # time.monotonic_ns() at which irq 0 fires
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def set(self, delta_ns: int) -> None:
        with self._cond:
            self._deadline = time.monotonic_ns() + delta_ns if delta_ns else None
            if self._thread is None and delta_ns:
                self._thread = threading.Thread(target=self._run, name="lguest-clock", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic_ns()
                if remaining > 0:
                    self._cond.wait(remaining / 1e9)
                    continue
                self._deadline = None
                self._cond.release()
                try:
                    self.raise_irq(TIMER_IRQ)
                finally:
                    self._cond.acquire()
