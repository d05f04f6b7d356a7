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

from collections.abc import Callable

from lguest.host.clock import OneShot


class Kicker:
    def __init__(self, ring: Callable[[], None]) -> None:
        self._ring = ring
        self._later = OneShot(ring, "lguest-kick")

    def kick(self) -> None:
        """Ask the vCPU to come out of the emulator (any thread)."""
        self._ring()

    def kick_later(self, delay: float) -> None:
        """Kick in `delay` seconds, unless a kick is already due sooner."""
        self._later.arm(delay, keep_sooner=True)

    def close(self) -> None:
        self._later.close()
