"""A Guest's state as data: what a snapshot keeps of the Host's side (no lguest counterpart).

The Host knows nothing of files or formats: `capture` turns a Guest stopped at a
safe point of its run loop into a `GuestState`, and `restore` puts one into a
freshly built Guest (the same RAM size, its RAM already filled by the Launcher).
Everything is plain ints, lists and dicts, so the Launcher may store it as it likes.

Kept: the registers by name (general, EFLAGS, the six selectors, the x87 and SSE
state), CR0.TS, what INIT read (lguest_data, noirq_iret, the syscall vector), the
async ring's cursor, the IDT and GDT, SET_STACK's stack, the current page directory,
pending interrupts, a pending hypercall and HALT, and the clock's next tick as a
delay.  Not kept: the shadow page tables and the emulator's TLB and translated code,
which the Host rebuilds on demand exactly as after a NEW_PGTABLE.

The hidden parts of the segment registers are not saved: a restored Guest is
entered through the trampoline, which loads every selector again from the restored
GDT, as a real CPU would after an `iret`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from unicorn import UcError

from lguest import abi
from lguest.host.memory import hex32

if TYPE_CHECKING:
    from lguest.host.core import Guest

GENERAL_REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")
FRAME_REGS = ("eip", "cs", "eflags", "esp", "ss", "ds", "es", "fs", "gs")
# EFLAGS bits no Guest at ring 1 or 3 can hold: a state with them is not one we saved.
IMPOSSIBLE_EFLAGS = abi.X86_EFLAGS_VM | 0x3000  # virtual-8086 mode, IOPL


class BadState(ValueError):
    """A GuestState no Guest of ours could have been in (the message says what)."""


@dataclass
class GuestState:
    """Everything of a running Guest the Host must give back, as plain data."""

    registers: dict[str, int]  # GENERAL_REGS and FRAME_REGS
    fpu: dict[str, Any]  # Switcher.fpu_state()
    ts: int  # CR0.TS as the Guest asked (TS hypercall)
    lguest_data: int | None
    noirq_iret: int
    syscall_vector: int
    next_hcall: int  # the async ring's cursor
    hcall_pending: bool
    halted: bool
    irqs_pending: int
    ss1: int  # SET_STACK
    esp1: int
    stack_pages: int
    kernel_address: int
    pgdir: int | None  # None: still in linear mode (no NEW_PGTABLE yet)
    idt: list[list[int]]
    gdt: list[list[int]]
    clock_ns: int | None  # nanoseconds to the next tick, None if none armed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestState:
        """The state a dict describes; BadState if it is not shaped like one."""
        try:
            return cls(**data)
        except TypeError as err:
            raise BadState(f"Guest state: {err}") from None


# tour:H.170 A snapshot: the Guest as data
# lguest never saved a Guest; we can, because everything the Host keeps of one is already
# plain data.  Between two runs of the loop (a safe point, where a debugger also looks) no
# hook is running and the CPU's state is whole: `capture` reads the registers by name (the
# x87 and SSE ones too, never Unicorn's build-specific context blob), and what the Host
# learnt from the Guest's hypercalls: INIT's answers, the IDT and GDT, SET_STACK's stack,
# the current page directory, the async ring's cursor, pending interrupts, HALT, and the
# clock's next tick as a delay.  `restore` gives it all to a new Guest through the same doors
# the hypercalls use, so a doctored file can do no more than a Guest could, and enters it
# through the trampoline, which loads every segment afresh.  The shadow page tables are
# simply not there: the first TLB misses fill them, as after a NEW_PGTABLE.
def capture(guest: Guest) -> GuestState:
    """The Guest's state; only at a safe point (between runs, no hook running).

    The clock is read before the pending interrupts: a tick firing in between is
    then kept twice (harmless) rather than lost (a Guest waiting for it would hang).
    """
    switcher, pages = guest.switcher, guest.pages
    clock_ns = guest.clock.next_deadline_ns()
    registers = dict(zip(GENERAL_REGS + FRAME_REGS, switcher.get_many(GENERAL_REGS + FRAME_REGS),
                         strict=True))
    return GuestState(
        registers=registers, fpu=switcher.fpu_state(), ts=guest.ts, lguest_data=guest.lguest_data,
        noirq_iret=guest.noirq_iret, syscall_vector=guest.syscall_vector, next_hcall=guest.next_hcall,
        hcall_pending=guest.hcall_pending, halted=guest.halted, irqs_pending=guest.irqs_pending,
        ss1=guest.ss1, esp1=guest.esp1, stack_pages=pages.stack_pages,
        kernel_address=pages.kernel_address, pgdir=None if pages.linear else pages.pgdir,
        idt=[list(gate) for gate in guest.idt.entries], gdt=[list(entry) for entry in guest.segments.gdt],
        clock_ns=clock_ns)


def restore(guest: Guest, state: GuestState) -> None:
    """Put a saved state into a Guest built but never run; BadState if it cannot be.

    Every part goes in through the door the Guest itself would use (the IDT and GDT
    entry by entry, with their rules; SET_STACK's pinning), so a doctored snapshot can
    give the Guest nothing a hypercall could not.
    """
    _check_frame(state.registers)
    if not (state.lguest_data is None or guest.memory.ok(state.lguest_data, abi.PAGE_SIZE // 4)):
        raise BadState(f"lguest_data {hex32(state.lguest_data)} outside the Guest's memory")
    if not 0 <= state.next_hcall < abi.LHCALL_RING_SIZE:
        raise BadState(f"async hypercall cursor {state.next_hcall}")
    if len(state.idt) != abi.IDT_ENTRIES or len(state.gdt) != abi.GDT_ENTRIES:
        raise BadState("IDT or GDT of the wrong size")
    switcher, pages = guest.switcher, guest.pages
    regs = state.registers
    for reg in GENERAL_REGS:
        switcher.set(reg, regs[reg])
    switcher.load_frame(*(regs[reg] for reg in FRAME_REGS))
    try:
        switcher.set_fpu_state(state.fpu)
    except (KeyError, TypeError, ValueError, UcError) as err:
        raise BadState(f"FPU state: {err}") from None
    guest.ts = state.ts
    switcher.set_task_switched(bool(state.ts))
    guest.lguest_data, guest.noirq_iret = state.lguest_data, state.noirq_iret
    guest.syscall_vector, guest.next_hcall = state.syscall_vector, state.next_hcall
    guest.hcall_pending, guest.halted = state.hcall_pending, state.halted
    guest.irqs_pending = state.irqs_pending & ((1 << abi.LGUEST_IRQS) - 1)
    # An all-zero entry is one the Guest never set (a hypercall leaves its mark on every
    # entry it loads): the new Guest's own is the same, so it is left alone.
    for num, (lo, hi) in enumerate(state.idt):
        if lo or hi:
            guest.idt.load_entry(num, lo, hi)
    for num, (lo, hi) in enumerate(state.gdt):
        if lo or hi:
            guest.segments.load_gdt_entry(num, lo, hi)
    pages.kernel_address = state.kernel_address
    if state.pgdir is not None:
        pages.new_pgtable(state.pgdir)
    guest.set_kernel_stack(state.ss1, state.esp1)
    if state.stack_pages:
        pages.set_stack(state.esp1, state.stack_pages)
    if state.clock_ns is not None:
        guest.clock.set(max(1, state.clock_ns))
    guest.gates_changed()  # lguest_data and the syscall vector came in without INIT
    if guest.dead:
        raise BadState(guest.dead.rstrip("\n"))


def _check_frame(regs: dict[str, int]) -> None:
    """The Guest ran in ring 1 or 3, never 0 or 2, and never in virtual-8086 mode."""
    missing = set(GENERAL_REGS + FRAME_REGS) - regs.keys()
    if missing:
        raise BadState(f"registers missing: {', '.join(sorted(missing))}")
    if regs["cs"] & 3 not in (abi.GUEST_PL, 3) or regs["ss"] & 3 != regs["cs"] & 3:
        raise BadState(f"cs {regs['cs']:#x} and ss {regs['ss']:#x} are not a Guest's ring")
    if regs["eflags"] & IMPOSSIBLE_EFLAGS:
        raise BadState(f"eflags {hex32(regs['eflags'])}")
