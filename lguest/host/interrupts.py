"""Interrupts and traps: the Guest's IDT and how the Host enters it (mirrors
interrupts_and_traps.c; spec §4).

The emulated CPU never delivers through an IDT, so the Host does what the CPU
would: it keeps the Guest's 256 gates (LOAD_IDT_ENTRY), and to reflect a trap it
pushes the frame the Guest's handler expects on the right stack and jumps to the
handler at ring 1 (`deliver_trap`, lguest's push_guest_interrupt_stack and
guest_run_interrupt).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from lguest import abi

if TYPE_CHECKING:
    from lguest.host.core import Guest

GATE_PRESENT = 0x8000
FRAME_REGS = ("eip", "cs", "eflags", "esp", "ss")
EFLAGS_CLEARED_ON_ENTRY = abi.X86_EFLAGS_TF | abi.X86_EFLAGS_NT | abi.X86_EFLAGS_RF | abi.X86_EFLAGS_VM


def gate_type(hi: int) -> int:
    return (hi >> 8) & 0xF


def gate_dpl(hi: int) -> int:
    return (hi >> 13) & 3


class Idt:
    """The Guest's 256 gates, as LOAD_IDT_ENTRY left them (lguest's `idt` in lg_cpu.arch)."""

    def __init__(self, kill: Callable[[str], None]) -> None:
        self.kill = kill
        self.entries: list[tuple[int, int]] = [(0, 0)] * abi.IDT_ENTRIES

    def load_entry(self, num: int, lo: int, hi: int) -> None:
        """LOAD_IDT_ENTRY: lguest's set_trap rules (§4.5)."""
        if num in abi.IDT_IGNORED_VECTORS:
            return
        if num >= abi.IDT_ENTRIES:
            self.kill(f"Setting idt entry {num}")
            return
        if not hi & GATE_PRESENT:
            self.entries[num] = (0, 0)
            return
        if gate_type(hi) not in (abi.GATE_INTERRUPT, abi.GATE_TRAP):
            self.kill(f"bad IDT type {gate_type(hi)}")
            return
        # The selector is always the Guest kernel's; the low byte and bit 12 go.
        self.entries[num] = ((abi.KERNEL_CS << 16) | (lo & 0xFFFF), hi & 0xFFFFEF00)

    def present(self, num: int) -> bool:
        return num < abi.IDT_ENTRIES and bool(self.entries[num][1] & GATE_PRESENT)

    def software_int_dpl(self, vector: int, syscall_vector: int) -> int:
        """The DPL of the real gate an `int n` meets (§4.4's Switcher stub gates).

        Vectors that could go direct copy the DPL of the Guest's own gate; the
        hypercall gate is DPL 1; every other stub is DPL 0.
        """
        if vector == abi.LGUEST_TRAP_ENTRY:
            return abi.GUEST_PL
        if vector < abi.FIRST_EXTERNAL_VECTOR or vector == syscall_vector:
            return gate_dpl(self.entries[vector][1])
        return 0


# tour:H.70 Reflecting a trap into the Guest
# The Guest gave us its IDT one gate at a time (LOAD_IDT_ENTRY, kept in `Idt` above with
# lguest's rules: interrupt or trap gates only, always the Guest kernel's code segment). Our
# emulated CPU never delivers through an IDT, so to give the Guest a trap the Host does what
# the CPU would: push the frame the handler expects (EFLAGS, CS, EIP, and the error code for
# the traps that have one) on the Guest's kernel stack, switching first to the stack
# SET_STACK named if the trap came from user mode (then the old SS:ESP go on too), and
# resume at the handler in ring 1.  An interrupt gate also turns the Guest's virtual
# interrupt flag off (irq_enabled = 0), as the CPU would clear IF.  The pushed EFLAGS says
# what irq_enabled said, so the Guest's `iret` path restores it.
def deliver_trap(guest: Guest, num: int, errcode: int = 0) -> bool:
    """Reflect trap `num` into the Guest (§4.3 "reflect"); False if it has no handler."""
    if not guest.idt.present(num):
        return False
    lo, hi = guest.idt.entries[num]
    frame = interrupt_frame(guest, num in abi.TRAPS_WITH_ERROR_CODE, errcode)
    if frame is not None:
        run_handler(guest, lo, hi, *frame)
    return True


# tour:H.80 An interrupt, through the same gates
# External interrupts use vectors 32 and up and the same machinery as traps, without an
# error code.  One subtlety from lguest: if the Guest is sitting exactly on the `iret` that
# would re-enable its interrupts (noirq_iret, named at INIT), the frame that `iret` was
# about to pop is still on its stack.  Rather than push another frame on top, the Host
# reuses it, as if the `iret` had finished and the interrupt had come right after.
def deliver_interrupt(guest: Guest, vector: int) -> None:
    """Deliver a virtual interrupt through IDT entry `vector` (present, checked by caller).

    If the Guest sits on its final `iret` (noirq_iret), the frame that `iret` was
    about to pop is still on the stack: reuse it instead of pushing another, as
    if the `iret` had completed and the interrupt arrived right after (§4.7).
    """
    lo, hi = guest.idt.entries[vector]
    switcher = guest.switcher
    if switcher.get("eip") == guest.noirq_iret:
        esp = switcher.get("esp")
        gpa = guest.pages.guest_pa(esp + 8)
        if gpa is None:
            return
        switcher.set("eflags", guest.memory.read_u32(gpa) & ~EFLAGS_CLEARED_ON_ENTRY)
        run_handler(guest, lo, hi, esp, switcher.get("ss"))
        return
    frame = interrupt_frame(guest, False, 0)
    if frame is not None:
        run_handler(guest, lo, hi, *frame)


def frame_words(guest: Guest, eip: int, cs: int, eflags: int, esp: int, ss: int, has_err: bool,
                errcode: int) -> tuple[list[int], int, int]:
    """The words of a trap frame (§4.6), and the (ss, esp) they go below."""
    words = [eflags, cs, eip]
    if ss & 3 != abi.GUEST_PL:
        # From user mode: onto the kernel stack SET_STACK gave us, old ss:esp first.
        words = [ss, esp, *words]
        ss, esp = guest.ss1, guest.esp1
    if has_err:
        words.append(errcode)
    return words, ss, esp


def interrupt_frame(guest: Guest, has_err: bool, errcode: int) -> tuple[int, int] | None:
    """Push the trap frame, its EFLAGS saying what irq_enabled says; the new (esp, ss),
    or None if the Guest died."""
    eip, cs, eflags, esp, ss = guest.switcher.get_many(FRAME_REGS)
    if guest.lguest_data is not None and not guest.read_irq_enabled() & abi.X86_EFLAGS_IF:
        eflags &= ~abi.X86_EFLAGS_IF
    words, ss, esp = frame_words(guest, eip, cs, eflags, esp, ss, has_err, errcode)
    if not push_frame(guest, esp, words):
        return None
    return esp - 4 * len(words), ss


def gate_handler(lo: int, hi: int) -> int:
    return (lo & 0xFFFF) | (hi & 0xFFFF0000)


def run_handler(guest: Guest, lo: int, hi: int, esp: int, ss: int) -> None:
    """guest_run_interrupt: jump to the gate's handler at ring 1."""
    handler = gate_handler(lo, hi)
    eflags = guest.switcher.get("eflags") & ~EFLAGS_CLEARED_ON_ENTRY
    if (gate_type(hi) == abi.GATE_INTERRUPT and guest.lguest_data is not None
            and not guest.memory.write_u32(guest.lguest_data + abi.LguestData.IRQ_ENABLED, 0)):
        guest.kill("Disabling interrupts")
        return
    guest.enter(handler, abi.KERNEL_CS, eflags, esp, ss)


def push_frame(guest: Guest, esp: int, words: list[int]) -> bool:
    """Write the frame below `esp`: translate once, then write guest-physically (§4.6)."""
    gpa = guest.pages.guest_pa(esp)
    if gpa is None:
        return False
    data = struct.pack(f"<{len(words)}I", *reversed(words))
    return guest.memory.write(gpa - len(data), data)


# tour:H.90 Direct traps: no trip through the run loop
# On real hardware lguest pointed some of the CPU's IDT entries straight at the Guest's
# handlers, so a system call or a breakpoint never left the Guest at all.  We mimic it: the
# Switcher calls `direct_trap` from inside its interrupt hook, and when the vector could go
# direct (below 32 or the system-call vector, except #NM, #GP, #PF and the hypercall, which
# the Host must see), the gate is a present trap gate the caller may use, and the stack is
# visible, the frame is pushed and the CPU resumes at the handler without leaving the
# emulator.  Anything unusual returns False and takes the slow path.
def could_be_direct(vector: int, syscall_vector: int) -> bool:
    """§4.4: the vectors lguest let the CPU deliver straight through the real IDT."""
    return ((vector < abi.FIRST_EXTERNAL_VECTOR or vector == syscall_vector)
            and vector not in (abi.Trap.NM, abi.Trap.GP, abi.Trap.PF, abi.LGUEST_TRAP_ENTRY))


def direct_trap(guest: Guest, vector: int, errcode: int, software: bool) -> bool:
    """The fast path: deliver a trap without leaving the emulator, as lguest's real IDT did.

    Only for a present trap gate of a vector that could go direct, whose DPL lets
    an `int n` through.  As on the real CPU, the Host does not touch irq_enabled
    and the pushed EFLAGS keeps IF set.  Anything unusual (no lguest_data yet, a
    stack we cannot see) takes the slow path through the Host's run loop instead.
    """
    if guest.lguest_data is None or not could_be_direct(vector, guest.syscall_vector):
        return False
    lo, hi = guest.idt.entries[vector]
    if not hi & GATE_PRESENT or gate_type(hi) != abi.GATE_TRAP:
        return False
    eip, cs, eflags, esp, ss = guest.switcher.get_many(FRAME_REGS)
    if software and guest.switcher.cpl > gate_dpl(hi):
        return False
    has_err = vector in abi.TRAPS_WITH_ERROR_CODE
    words, ss, esp = frame_words(guest, eip, cs, eflags, esp, ss, has_err, errcode)
    gpa = guest.pages.peek(esp)
    if gpa is None or not guest.memory.ok(gpa - 4 * len(words), 4 * len(words)):
        return False
    guest.memory.write(gpa - 4 * len(words), struct.pack(f"<{len(words)}I", *reversed(words)))
    guest.enter(gate_handler(lo, hi), abi.KERNEL_CS, eflags & ~EFLAGS_CLEARED_ON_ENTRY,
                esp - 4 * len(words), ss)
    return True
