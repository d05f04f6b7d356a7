"""Interrupts the emulated CPU delivers itself (irqs.c; no lguest counterpart: lguest's
Host delivered them in its run loop, and so does the pure-Python Host).

The clock and the devices raise irqs from their own threads.  On the pure-Python
path each raise rings the doorbell: the vCPU leaves the emulator at its next block
and the run loop delivers.  On the native path the raise asks the emulated CPU
itself to look at the next block boundary, as QEMU's devices do, and C delivers
through the real IDT, with lguest's rules (`Guest.try_deliver_interrupt`'s, written
again in C), whatever it can; anything else stops the emulator as the doorbell did,
and the run loop decides.

Python decides, per irq, as data: whether the CPU may deliver it and whether the
Guest's gate turns its interrupts off (`update`, wherever the Guest's IDT changes
and at INIT).  The pending irqs have one copy, in C's table, which every thread
changes atomically; `Guest.irqs_pending` reads it.

What it owns: that table, the CPU class's hook in one engine (calibration.py proves
where it goes), the raise, the late check for a raise QEMU can miss, and the counts
of irqs C delivered (--stats).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING

from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_EIP

from lguest import abi
from lguest.host import native
from lguest.host.calibration import CpuInterrupts, EngineCpu, cpu_interrupts
from lguest.host.clock import OneShot
from lguest.host.interrupts import as_trap_gate, gate_type

if TYPE_CHECKING:
    from lguest.host.core import Guest
    from lguest.host.interrupts import NativeGates

# QEMU clears the CPU's "look at interrupt_request" mark with a plain store just before it
# reads interrupt_request (no barrier on this build), so a raise can land between the two
# and be missed.  Rare, but then nobody would look: a raise also arms this late check,
# which rings the doorbell if an irq is still pending by then (as the run loop's own
# recheck does for an irq the Guest could not take).
LATE_CHECK_SECONDS = 0.02


class IrqGate(IntEnum):
    """How the CPU may deliver an irq (irqs.c's enum irq_gate)."""

    ASK_PYTHON = 0
    TRAP_GATE = 1  # the Guest's gate is a trap gate: irq_enabled stays as it is
    INTERRUPT_GATE = 2  # an interrupt gate: irq_enabled goes to 0


class _IrqTable(ctypes.Structure):
    """struct irq_table of irqs.c."""

    _fields_ = (("pending", ctypes.c_uint32), ("gate", ctypes.c_uint8 * abi.LGUEST_IRQS),
                ("enabled", ctypes.c_int32), ("python_decides", ctypes.c_void_p),
                ("lguest_data", ctypes.c_uint32), ("noirq_iret", ctypes.c_uint32), ("uc", ctypes.c_void_p),
                ("cpu", ctypes.c_void_p), ("env", ctypes.c_void_p), ("interrupt_request", ctypes.c_void_p),
                ("icount_high", ctypes.c_void_p), ("x86_exec_interrupt", ctypes.c_void_p),
                ("hardirq", ctypes.c_void_p), ("stop", ctypes.c_void_p), ("reg_read", ctypes.c_void_p),
                ("reg_eip", ctypes.c_int32), ("gates", ctypes.c_void_p), ("fills", ctypes.c_void_p),
                ("ram", ctypes.c_void_p), ("ram_size", ctypes.c_uint32),
                ("delivered", ctypes.c_uint64 * abi.LGUEST_IRQS), ("total", ctypes.c_uint64))


def irq_gate(guest: Guest, irq: int) -> IrqGate:
    """The rule irqs.c consults: after INIT, a present gate (lguest's `idt_present`)."""
    vector = abi.FIRST_EXTERNAL_VECTOR + irq
    if guest.lguest_data is None or not guest.idt.present(vector):
        return IrqGate.ASK_PYTHON
    if gate_type(guest.idt.entries[vector][1]) == abi.GATE_INTERRUPT:
        return IrqGate.INTERRUPT_GATE
    return IrqGate.TRAP_GATE


# tour:H.145 Interrupts the CPU delivers itself
# The clock and the devices raise irqs from their own threads.  On the pure-Python path each
# raise rings the doorbell, and the run loop above delivers.  On the native path a raise
# asks the emulated CPU, as QEMU's own devices do: it marks the irq pending (one copy, in C)
# and sets the CPU's interrupt_request, and at its next block boundary the CPU calls its
# class's cpu_exec_interrupt, which is irqs.c's: there the rules of "When an interrupt may be
# delivered" run again, in C, and the real IDT does the rest, as for the traps the CPU
# delivers.  Python decides per irq, as data, whether the CPU may (a present gate after
# INIT) and whether its gate turns the Guest's interrupts off.  What C cannot do (interrupts
# off, everything blocked, the Guest on its last `iret`) stops the emulator as the doorbell
# would, and this loop decides.  QEMU may miss a raise that lands just as it looks (it
# clears its mark without a barrier), so a raise also arms a late check that rings the
# doorbell if the irq is still pending by then.
class NativeIrqs:
    """The irqs one Guest's CPU delivers itself, and the one copy of what is pending."""

    def __init__(self, guest: Guest, gates: NativeGates, cpu: EngineCpu, fields: CpuInterrupts,
                 ram_address: int, ring: Callable[[], None]) -> None:
        switcher = guest.switcher
        assert switcher.trap_hook is not None and switcher.fill_answers is not None
        self._guest = guest
        self._ring = ring
        self._taken = [0] * abi.LGUEST_IRQS
        self._taken_total = 0
        table = self._table = _IrqTable()
        table.python_decides = switcher.trap_hook.python_decides_address
        table.uc = ctypes.cast(switcher.uc._uch, ctypes.c_void_p).value
        table.cpu, table.env = cpu.cpu, cpu.env
        table.interrupt_request, table.icount_high = fields.interrupt_request, fields.icount_high
        table.x86_exec_interrupt = fields.x86_exec_interrupt
        table.hardirq = ctypes.cast(uclib.do_interrupt_x86_hardirq_x86_64, ctypes.c_void_p).value
        table.stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        table.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        table.reg_eip = UC_X86_REG_EIP
        table.gates, table.fills = gates.address, switcher.fill_answers.address
        table.ram, table.ram_size = ram_address, guest.memory.size
        library = native.library()
        library.lguest_irq_table_size.restype = ctypes.c_size_t
        if library.lguest_irq_table_size() != ctypes.sizeof(_IrqTable):
            raise native.NativeBuildError("irqs.c and native_irqs.py disagree on struct irq_table")
        self._raise = library.lguest_irq_raise
        self._raise.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        self._raise.restype = ctypes.c_bool
        self._clear = library.lguest_irq_clear
        self._clear.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        self._forget = library.lguest_irqs_forget
        self._forget.argtypes = (ctypes.c_void_p,)
        install = library.lguest_irqs_install
        install.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
        install.restype = ctypes.c_bool
        self._address = ctypes.addressof(table)
        self._lock = threading.Lock()  # a raise never touches a closed engine
        self._closed = False
        self._late = OneShot(self._ring_if_pending, "lguest-irq-check")
        self.installed = install(self._address, fields.exec_interrupt_slot)
        # A Guest nobody closed: C must not keep its table once it is collected.
        weakref.finalize(self, self._forget, self._address)

    @classmethod
    def for_guest(cls, guest: Guest, ram_address: int, ring: Callable[[], None]) -> NativeIrqs | None:
        """The table for a Guest whose CPU delivers traps itself, or None (the pure-Python
        Host, or an emulator whose fields were not proven)."""
        gates, switcher = guest.native_gates, guest.switcher
        if gates is None or switcher.trap_hook is None or not switcher.doorbell.gated:
            return None
        cpu = gates.cpu
        fields = cpu_interrupts(cpu)
        if fields is None:
            return None
        irqs = cls(guest, gates, cpu, fields, ram_address, ring)
        return irqs if irqs.installed else None

    # --- what Python decides -------------------------------------------------------------
    def update(self, vector: int) -> None:
        """The Guest's gate for `vector` changed (interrupts.py wrote the real one)."""
        irq = vector - abi.FIRST_EXTERNAL_VECTOR
        if not 0 <= irq < abi.LGUEST_IRQS:
            return
        kind = irq_gate(self._guest, irq)
        self._table.gate[irq] = kind
        if kind is not IrqGate.ASK_PYTHON:
            self._guest.switcher.write_real_gate(vector, *as_trap_gate(*self._guest.idt.entries[vector]))

    def update_all(self) -> None:
        """INIT (or a restored state)."""
        guest = self._guest
        self._table.lguest_data = guest.lguest_data or 0
        self._table.noirq_iret = guest.noirq_iret
        for irq in range(abi.LGUEST_IRQS):
            self.update(abi.FIRST_EXTERNAL_VECTOR + irq)

    def deliver_here(self, on: bool) -> None:
        """Let the CPU deliver (True), or ring the doorbell for every raise (a debugger,
        a tracer that must see each interrupt)."""
        self._table.enabled = on

    # --- pending irqs: one copy, any thread -------------------------------------------------
    @property
    def pending(self) -> int:
        return self._table.pending

    @property
    def pending_address(self) -> int:
        """Where the pending irqs are, for other C that must see them (hypercalls.c)."""
        return self._address + _IrqTable.pending.offset

    def raise_irq(self, irq: int) -> bool:
        """Mark irq pending and ask the CPU to look; False if the doorbell must ring."""
        with self._lock:
            if self._closed:
                return False
            asked = self._raise(self._address, irq)
        if asked:
            self._late.arm(LATE_CHECK_SECONDS, keep_sooner=True)
        return asked

    def clear(self, bits: int) -> None:
        """The run loop delivered these (or a restored state says they are not pending)."""
        self._clear(self._address, bits)

    def _ring_if_pending(self) -> None:
        if self._table.pending:
            self._ring()

    # --- counting, closing ---------------------------------------------------------------
    def take_counts(self) -> list[tuple[int, int]]:
        """(irq, how many C delivered) since last asked."""
        if self._table.total == self._taken_total:
            return []
        self._taken_total = self._table.total
        taken = []
        for irq, total in enumerate(self._table.delivered):
            if total != self._taken[irq]:
                taken.append((irq, total - self._taken[irq]))
                self._taken[irq] = total
        return taken

    def close(self) -> None:
        """The engine is closing: no raise reaches it, and its CPU is forgotten."""
        with self._lock:
            self._closed = True
            self._table.enabled = 0
            self._forget(self._address)
        self._late.close()
