"""The doorbell: how other threads get a running vCPU's attention (lguest's
`kick_process` in core.c and `wake_up_process` on an interrupt, interrupts_and_traps.c).

The timer and the Launcher's device threads raise interrupts while the vCPU is
deep inside the emulator.  In lguest, they sent the vCPU's process a signal, or
woke it; here they ring the doorbell: a word in memory, and a block hook in C
(doorbell.c) that stops emulation when it is set.  The start of a block is the
one place stopping Unicorn is clean (see doorbell.c).  A doorbell rung while the
vCPU is outside the emulator stops its next entry at once; the run loop then
delivers.

Two ways to answer it.  On the pure-Python path (or where calibration could not
prove Unicorn's switch for its exit checks) the hook runs before every block.  On
the native path the engine translates without per-access exit checks, so a stop
from another thread can only land where a block starts: ringing calls
`uc_emu_stop` itself, and the hook runs only on the Switcher's code page, where
every entry starts (the trampoline, or the entry gate the Switcher sends
frameless entries through) to catch a ring that came before the emulator ran.

What it owns: the C hook's installation in one engine, ringing (from any
thread), the run loop's answer, the gate's resume address, falling back to the
per-block hook, and `ring_later`, the original Host's own timer tick: an
interrupt the Guest could not take yet must be looked at again soon even if the
Guest never traps.
"""

from __future__ import annotations

import ctypes
import threading

from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_EIP

from lguest import abi
from lguest.host import native
from lguest.host.clock import OneShot


class _Bell(ctypes.Structure):
    """struct doorbell of doorbell.c."""

    _fields_ = (("rung", ctypes.c_int32), ("stop", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
                ("gate", ctypes.c_uint64), ("resume", ctypes.c_uint32), ("eip", ctypes.c_int32))


# tour:S.120 The doorbell: another thread needs the vCPU
# The clock and the device threads raise interrupts while the vCPU is inside the emulator,
# and must get it back to its run loop.  Unicorn's own `uc_emu_stop` is not safe from
# another thread while the engine checks for a stop after every load and store: landing
# while the CPU is inside one of our hooks, it can leave an instruction half done, to be run
# twice.  So on the pure-Python path other threads only ring the doorbell: they set one
# word, and a block hook in C (doorbell.c) reads it before every translated block and stops
# the CPU there, between instructions, on the vCPU's own thread.  On the native path those
# checks are gone ("Workaround: the exit checks, switched off where proven"), a stop can
# only land where a block starts, and ringing stops the emulator at once; the hook then
# watches only the Switcher's code page, where every entry begins.  Either way the bell
# stays rung until the run loop answers it at the top of its next turn, so a kick can never
# be lost; `ring_later` is the original Host's timer tick, for an interrupt the Guest could
# not take yet.
class Doorbell:
    """One vCPU's doorbell, installed in its engine.

    `gate`: the entry gate's address when the engine translates without
    per-access exit checks (the native path), else None (a hook before every block).
    """

    def __init__(self, uc: Uc, gate: int | None) -> None:
        self._uc = uc
        self._bell = _Bell(rung=0, stop=ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value,
                           reg_write=ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value,
                           gate=gate or 0, eip=UC_X86_REG_EIP)
        self.gated = gate is not None
        self._install()
        # A ring from another thread calls into the engine: never once it is closed.
        self._lock = threading.Lock()
        self._closed = False
        self._later = OneShot(self.ring, "lguest-kick")

    def _install(self) -> None:
        """The hook on the Switcher's code page (gated), or before every block."""
        begin, end = (abi.SWITCHER_ADDR, abi.SWITCHER_ADDR + abi.PAGE_SIZE - 1) if self.gated else (1, 0)
        self._hook = native.add_hook(self._uc, UC_HOOK_BLOCK, "lguest_doorbell_hook", self._bell, begin, end)

    def ring(self) -> None:
        """The vCPU leaves the emulator at its next block (any thread)."""
        self._bell.rung = 1
        if self.gated:
            with self._lock:
                if not self._closed:
                    uclib.uc_emu_stop(self._uc._uch)

    def ring_at_entry(self) -> None:
        """Stop the vCPU's next entry into the emulator, not a run in progress (the
        native path's irqs ask a running CPU themselves, native_irqs.py)."""
        self._bell.rung = 1

    def ring_later(self, delay: float) -> None:
        """Ring in `delay` seconds, unless a ring is already due sooner."""
        self._later.arm(delay, keep_sooner=True)

    def answered(self) -> None:
        """The run loop is about to look at everything pending: no need to stop for it."""
        self._bell.rung = 0

    def through_gate(self, resume: int) -> int:
        """Where a frameless entry starts: the gate, whose hook goes on to `resume`."""
        self._bell.resume = resume
        return self._bell.gate

    @property
    def resume(self) -> int:
        """Where the Guest was going when a ring stopped it at the gate."""
        return self._bell.resume

    def ring_every_block(self) -> None:
        """Back to the hook before every block, for the rest of this engine's life
        (the vCPU's thread, outside the emulator)."""
        if not self.gated:
            return
        self.gated = False
        self._bell.gate = 0
        err = uclib.uc_hook_del(self._uc._uch, self._hook)
        if err:
            raise UcError(err)
        self._install()
        self._uc.ctl_flush_tb()  # blocks translated without the hook must go

    def close(self) -> None:
        """Stop the delayed ring's thread (the hook goes with its engine)."""
        with self._lock:
            self._closed = True
        self._later.close()
