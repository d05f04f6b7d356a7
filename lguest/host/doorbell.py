"""The doorbell: how other threads get a running vCPU's attention (lguest's
`kick_process` in core.c and `wake_up_process` on an interrupt, interrupts_and_traps.c).

The timer and the Launcher's device threads raise interrupts while the vCPU is
deep inside the emulator.  In lguest, they sent the vCPU's process a signal, or
woke it; here they ring the doorbell: a word in memory that a block hook in C
(doorbell.c) looks at before every translated block the Guest runs, stopping
emulation when it is set.  The start of a block is the one place stopping
Unicorn is clean (see doorbell.c).  A doorbell rung while the vCPU is outside
the emulator stops its next entry at once; the run loop then delivers.

What it owns: the C hook's installation in one engine, ringing (from any
thread), the run loop's answer, and `ring_later`, the original Host's own timer
tick: an interrupt the Guest could not take yet must be looked at again soon
even if the Guest never traps.
"""

from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from lguest.host import native
from lguest.host.clock import OneShot


class _Bell(ctypes.Structure):
    """struct doorbell of doorbell.c."""

    _fields_ = (("rung", ctypes.c_int32), ("stop", ctypes.c_void_p))


# tour:S.120 The doorbell: another thread needs the vCPU
# The clock and the device threads raise interrupts while the vCPU is inside the emulator,
# and must get it back to its run loop.  Unicorn's own `uc_emu_stop` is not safe from
# another thread: landing while the CPU is inside one of our hooks, it can leave an
# instruction half done, to be run twice.  So other threads only ring the doorbell: they set
# one word.  A block hook in C (doorbell.c) reads it before every translated block and stops
# the CPU there, between instructions, on the vCPU's own thread.  The bell stays rung until
# the run loop answers it at the top of its next turn, so a kick can never be lost;
# `ring_later` is the original Host's timer tick, for an interrupt the Guest could not take
# yet.
class Doorbell:
    """One vCPU's doorbell, installed in its engine."""

    def __init__(self, uc: Uc) -> None:
        self._bell = _Bell(0, ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value)
        self._hook = uc_hook_h()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(self._hook), UC_HOOK_BLOCK,
                                ctypes.cast(native.library().lguest_doorbell_hook, ctypes.c_void_p),
                                ctypes.byref(self._bell), ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise UcError(err)
        self._later = OneShot(self.ring, "lguest-kick")

    def ring(self) -> None:
        """The vCPU leaves the emulator at its next block (any thread)."""
        self._bell.rung = 1

    def ring_later(self, delay: float) -> None:
        """Ring in `delay` seconds, unless a ring is already due sooner."""
        self._later.arm(delay, keep_sooner=True)

    def answered(self) -> None:
        """The run loop is about to look at everything pending: no need to stop for it."""
        self._bell.rung = 0

    def close(self) -> None:
        """Stop the delayed ring's thread (the hook goes with its engine)."""
        self._later.close()
