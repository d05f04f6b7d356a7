"""The Guest's clock: a one-shot timer that raises irq 0 (mirrors the clockdev of
interrupts_and_traps.c: guest_set_clockevent and its hrtimer; spec §4.8).

SET_CLOCKEVENT(ns) arms it `ns` nanoseconds from now; 0 cancels it.  It runs
whether or not the Guest is running, like the original's hrtimer.  One thread per
timer waits for the deadline (Linux re-arms every tick: a thread per arm would
cost more than the tick).  We count on the monotonic clock, so a wall-clock step
on the host neither fires nor delays the Guest's tick.

What it owns: `OneShot`, the timer thread (the doorbell's delayed ring uses it
too), and `Clock`, SET_CLOCKEVENT's timer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TIMER_IRQ = 0


class OneShot:
    """Call `fire` once, on a thread of its own, when the armed deadline passes."""

    def __init__(self, fire: Callable[[], object], name: str) -> None:
        self._fire = fire
        self._name = name
        self._deadline: float | None = None  # time.monotonic() at which to fire
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, delay: float, keep_sooner: bool = False) -> None:
        """Fire in `delay` seconds (or keep an earlier deadline, with keep_sooner)."""
        with self._cond:
            due = time.monotonic() + delay
            if keep_sooner and self._deadline is not None and self._deadline <= due:
                return
            self._deadline = due
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def remaining(self) -> float | None:
        """Seconds until the armed deadline (never below 0), or None if not armed."""
        with self._cond:
            return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> None:
        with self._cond:
            self._deadline = None
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
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._deadline = None
                self._cond.release()
                try:
                    self._fire()
                finally:
                    self._cond.acquire()


# tour:H.160 The clock
# The Guest has no timer chip: it asks for one interrupt at a time with SET_CLOCKEVENT
# (nanoseconds from now).  A timer thread waits for the deadline and raises irq 0 with the
# same call the Launcher's devices use, from any thread: mark it pending, ring the doorbell
# ("The doorbell: another thread needs the vCPU").  The vCPU, in the emulator or asleep in
# HALT, comes back to its run loop and delivers it ("When an interrupt may be delivered").
# The time itself reaches the Guest in lguest_data, written at INIT and with every
# interrupt.
class Clock:
    def __init__(self, raise_irq: Callable[[int], object]) -> None:
        self._timer = OneShot(lambda: raise_irq(TIMER_IRQ), "lguest-clock")

    def set(self, delta_ns: int) -> None:
        if delta_ns:
            self._timer.arm(delta_ns / 1e9)
        else:
            self._timer.cancel()

    def next_deadline_ns(self) -> int | None:
        """Nanoseconds until the armed tick, or None: what a snapshot keeps, since a
        deadline on this process's monotonic clock means nothing to another process."""
        remaining = self._timer.remaining()
        return None if remaining is None else round(remaining * 1e9)

    def close(self) -> None:
        self._timer.close()
