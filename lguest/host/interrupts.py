"""Interrupts and traps: the Guest's IDT and how the Host enters it (mirrors
interrupts_and_traps.c; spec §4).

Unicorn never delivers through an IDT by itself, so the Host does what the CPU
would: it keeps the Guest's 256 gates (LOAD_IDT_ENTRY), and to reflect a trap it
pushes the frame the Guest's handler expects on the right stack and jumps to the
handler at ring 1 (`deliver_trap`, lguest's push_guest_interrupt_stack and
guest_run_interrupt).  On the native path the CPU may deliver some traps itself
through a real IDT (`NativeGates`, interrupts.c): which ones is decided here, as data.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING

from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_EIP, UC_X86_REG_ESP

from lguest import abi
from lguest.host import native
from lguest.host.native_hypercalls import only_counts
from lguest.host.switcher import GDT_ADDR, IDT_ADDR, STATE_PAGE, TSS_ADDR

if TYPE_CHECKING:
    from lguest.host.calibration import EngineCpu
    from lguest.host.core import Guest

GATE_PRESENT = 0x8000
PAGE_FAULT = int(abi.Trap.PF)  # looked up on every fault the CPU may raise itself
FRAME_REGS = ("eip", "cs", "eflags", "esp", "ss")
EFLAGS_CLEARED_ON_ENTRY = abi.X86_EFLAGS_TF | abi.X86_EFLAGS_NT | abi.X86_EFLAGS_RF | abi.X86_EFLAGS_VM


def gate_type(hi: int) -> int:
    return (hi >> 8) & 0xF


def gate_dpl(hi: int) -> int:
    return (hi >> 13) & 3


class Idt:
    """The Guest's 256 gates, as LOAD_IDT_ENTRY left them (lguest's `idt` in lg_cpu.arch)."""

    def __init__(self, kill: Callable[[str], None], changed: Callable[[int], None]) -> None:
        """`changed(num)` is called after each gate the Guest changes."""
        self.kill = kill
        self.changed = changed
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
        elif gate_type(hi) not in (abi.GATE_INTERRUPT, abi.GATE_TRAP):
            self.kill(f"bad IDT type {gate_type(hi)}")
            return
        else:
            # The selector is always the Guest kernel's; the low byte and bit 12 go.
            self.entries[num] = ((abi.KERNEL_CS << 16) | (lo & 0xFFFF), hi & 0xFFFFEF00)
        self.changed(num)

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
    keep_frame_pages(guest, esp, len(data))
    return guest.memory.write(gpa - len(data), data)


def keep_frame_pages(guest: Guest, esp: int, size: int) -> None:
    """Let the C fill hook answer the CPU's own writes of the next frame here (the
    Guest's handler may never write its stack itself), and tell interrupts.c where
    a page-aligned `esp` itself is (the frame goes below it, §4.6).  Without the C
    hook (the pure-Python Host) there is nothing to keep, and no walk is made."""
    if guest.pages.answers is None:
        return
    guest.pages.keep_kernel_write(esp - size)
    guest.pages.keep_kernel_write(esp - 1)
    if not esp & 0xFFF:
        guest.pages.keep_where(esp)


# Vectors that never go direct: the Host must see them.
NEVER_DIRECT = frozenset((abi.Trap.NM, abi.Trap.GP, abi.Trap.PF, abi.LGUEST_TRAP_ENTRY))


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
            and vector not in NEVER_DIRECT)


def sent_direct(guest: Guest, vector: int) -> bool:
    """Does this vector go straight to the Guest: a present trap gate of a vector that
    could be direct (and INIT done)?"""
    if guest.lguest_data is None or not could_be_direct(vector, guest.syscall_vector):
        return False
    hi = guest.idt.entries[vector][1]
    return bool(hi & GATE_PRESENT) and gate_type(hi) == abi.GATE_TRAP


def direct_trap(guest: Guest, vector: int, errcode: int, software: bool) -> bool:
    """The fast path: deliver a trap without leaving the emulator, as lguest's real IDT did.

    Only for a vector `sent_direct`, whose gate's DPL lets an `int n` through.  As
    on the real CPU, the Host does not touch irq_enabled and the pushed EFLAGS
    keeps IF set.  Anything unusual (a stack we cannot see) takes the slow path
    through the Host's run loop instead.
    """
    if not sent_direct(guest, vector) or guest.switcher.in_vm86():
        return False  # (a trap from virtual-8086 mode leaves: run() turns it into #GP)
    lo, hi = guest.idt.entries[vector]
    eip, cs, eflags, esp, ss = guest.switcher.get_many(FRAME_REGS)
    if software and guest.switcher.cpl > gate_dpl(hi):
        return False
    has_err = vector in abi.TRAPS_WITH_ERROR_CODE
    words, ss, esp = frame_words(guest, eip, cs, eflags, esp, ss, has_err, errcode)
    gpa = guest.pages.peek(esp)
    if gpa is None or not guest.memory.ok(gpa - 4 * len(words), 4 * len(words)):
        return False
    keep_frame_pages(guest, esp, 4 * len(words))
    guest.memory.write(gpa - 4 * len(words), struct.pack(f"<{len(words)}I", *reversed(words)))
    guest.enter(gate_handler(lo, hi), abi.KERNEL_CS, eflags & ~EFLAGS_CLEARED_ON_ENTRY,
                esp - 4 * len(words), ss)
    return True


# tour:H.95 Traps the emulated CPU delivers itself
# lguest's direct traps cost the Guest nothing: the real CPU went through the real IDT.  Ours
# can too.  The Switcher's STATE_PAGE holds a real IDT (next to the GDT and the TSS, whose
# ss1/esp1 SET_STACK fills), and QEMU's own delivery code (`x86_cpu_do_interrupt`, inside
# libunicorn) can be called from the C interrupt hook, interrupts.c.  Python still makes
# every decision, as data: for each vector, whether the CPU may deliver it and through
# which gate, rewritten exactly where the Guest's IDT changes (LOAD_IDT_ENTRY) and at INIT.
# Direct vectors get the Guest's own trap gate.  A system call through an interrupt gate
# (Linux 4.9's `int $0x80`) gets a trap gate, so the CPU's real IF stays set, and the C
# hook then does what lguest's reflection did: the pushed EFLAGS says what irq_enabled
# said, and irq_enabled goes to 0.  The C hook delivers only when every access the CPU will
# make is one the C fill hook answers and the frame lands where the Python path would write
# it; anything else comes to Python as before, which is also the whole of `--no-native`.
# Page faults the Guest must handle go the same way: the C fill hook has the CPU raise the
# #PF (after Python refused the access and told cr2), and gate 14, marked for it after
# INIT, gets lguest's reflection rules whether the Guest made it a trap or interrupt gate.
class GateKind(IntEnum):
    """What interrupts.c may do with a vector (its enum gate_kind)."""

    ASK_PYTHON = 0
    DIRECT = 1  # lguest sent it straight to the Guest
    REFLECT_INT = 2  # an interrupt gate: reflected, when an `int n` the gate allows raised it
    REFLECT_FAULT = 3  # a page fault the CPU raised itself, reflected through a trap gate
    REFLECT_FAULT_IRQS_OFF = 4  # ... through an interrupt gate (irq_enabled goes to 0)


def cpu_delivery(guest: Guest, vector: int) -> GateKind:
    """How the CPU may deliver this vector itself (the rule interrupts.c consults).

    What the CPU delivers is no exit: like direct traps, --trace never sees it
    (--no-native traces every reflection)."""
    if sent_direct(guest, vector):
        return GateKind.DIRECT
    if vector == abi.Trap.PF and guest.lguest_data is not None and guest.idt.present(vector):
        interrupt_gate = gate_type(guest.idt.entries[vector][1]) == abi.GATE_INTERRUPT
        return GateKind.REFLECT_FAULT_IRQS_OFF if interrupt_gate else GateKind.REFLECT_FAULT
    if (guest.lguest_data is not None and could_be_direct(vector, guest.syscall_vector)
            and guest.idt.present(vector)):
        return GateKind.REFLECT_INT
    return GateKind.ASK_PYTHON


def real_gate(guest: Guest, vector: int, kind: GateKind) -> tuple[int, int]:
    """The gate the CPU finds in the real IDT: the Guest's, as a trap gate; none for Python."""
    if kind is GateKind.ASK_PYTHON:
        return 0, 0
    return as_trap_gate(*guest.idt.entries[vector])


def as_trap_gate(lo: int, hi: int) -> tuple[int, int]:
    """A Guest gate as the CPU delivers through it: a trap gate, so its real IF stays set
    (the Guest's virtual IF is irq_enabled, which the delivery's fix-up turns off)."""
    return lo, (hi & ~0xF00) | abi.GATE_TRAP << 8


class _GateTable(ctypes.Structure):
    """struct gate_table of interrupts.c."""

    _fields_ = (("kind", ctypes.c_uint8 * abi.IDT_ENTRIES), ("cpu", ctypes.c_void_p),
                ("env", ctypes.c_void_p),
                ("do_interrupt", ctypes.c_void_p), ("reg_read", ctypes.c_void_p), ("reg_eip", ctypes.c_int32),
                ("reg_esp", ctypes.c_int32), ("hflags_at", ctypes.c_uint32), ("is_int_at", ctypes.c_uint32),
                ("segs_at", ctypes.c_uint32), ("fills", ctypes.c_void_p), ("ram", ctypes.c_void_p),
                ("ram_size", ctypes.c_uint32), ("state_page", ctypes.c_void_p), ("gdt_at", ctypes.c_uint32),
                ("tss_at", ctypes.c_uint32), ("idt_at", ctypes.c_uint32), ("kernel_cs", ctypes.c_uint32),
                ("switcher", ctypes.c_uint32), ("irq_enabled", ctypes.c_uint32), ("direct", ctypes.c_uint64),
                ("reflected", ctypes.c_uint64))


class NativeGates:
    """The gates the emulated CPU delivers through (interrupts.c's table, and the real IDT)."""

    def __init__(self, guest: Guest, ram_address: int, delivery: Callable[[ctypes.c_void_p], None],
                 cpu: EngineCpu, segment_caches: int) -> None:
        switcher = guest.switcher
        layout = switcher.context.layout
        assert layout is not None and switcher.fill_answers is not None
        self.guest = guest
        self.cpu = cpu
        table = self._table = _GateTable()
        table.cpu, table.env = cpu.cpu, cpu.env
        table.do_interrupt = ctypes.cast(delivery, ctypes.c_void_p).value
        table.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        table.reg_eip, table.reg_esp = UC_X86_REG_EIP, UC_X86_REG_ESP
        table.hflags_at = cpu.env_offset(layout.hflags)
        table.is_int_at = cpu.env_offset(layout.exception_is_int)
        table.segs_at = segment_caches
        table.fills = switcher.fill_answers.address
        table.ram, table.ram_size = ram_address, guest.memory.size
        table.state_page = switcher.state_page
        table.gdt_at, table.tss_at, table.idt_at = (address - STATE_PAGE for address in (GDT_ADDR, TSS_ADDR,
                                                                                         IDT_ADDR))
        table.kernel_cs, table.switcher = abi.KERNEL_CS, abi.SWITCHER_ADDR
        # Page faults the CPU raises itself (fills.c) only where no tracer must see each one.
        self.raise_faults = (only_counts(guest.tracer) and switcher.fill_answers.let_cpu_raise(
            cpu.env, cpu.env_offset(layout.old_exception)))
        library = native.library()
        library.lguest_gate_table_size.restype = ctypes.c_size_t
        if library.lguest_gate_table_size() != ctypes.sizeof(_GateTable):
            raise native.NativeBuildError("interrupts.c and interrupts.py disagree on struct gate_table")

    @classmethod
    def for_guest(cls, guest: Guest, ram_address: int) -> NativeGates | None:
        """The table for a Guest on the native path, or None where the CPU cannot deliver
        (the pure-Python Host, or an emulator whose CPU or delivery code was not found)."""
        switcher = guest.switcher
        if switcher.trap_hook is None or switcher.fill_answers is None:
            return None
        delivery = getattr(uclib, "x86_cpu_do_interrupt_x86_64", None)
        found = switcher.cpu_for_delivery()
        if delivery is None or found is None:
            return None
        return cls(guest, ram_address, delivery, *found)

    @property
    def table(self) -> ctypes.Structure:
        return self._table

    @property
    def address(self) -> int:
        """The table, for other C that delivers through the same checks (irqs.c)."""
        return ctypes.addressof(self._table)

    @property
    def direct(self) -> int:
        return self._table.direct

    @property
    def reflected(self) -> int:
        return self._table.reflected

    def cpu_raises_fault(self) -> bool:
        """May a page fault the Guest must handle be raised and delivered by the CPU
        (its gate 14 is marked for it)?  Else it leaves the emulator."""
        return self.raise_faults and self._table.kind[PAGE_FAULT] != GateKind.ASK_PYTHON

    def update(self, vector: int) -> None:
        """The Guest's gate for `vector` changed."""
        kind = cpu_delivery(self.guest, vector)
        self.guest.switcher.write_real_gate(vector, *real_gate(self.guest, vector, kind))
        self._table.kind[vector] = kind

    def update_all(self) -> None:
        """INIT (or a restored state) changed what every gate depends on."""
        if self.guest.lguest_data is not None:
            self._table.irq_enabled = self.guest.lguest_data + abi.LguestData.IRQ_ENABLED
        for vector in range(abi.IDT_ENTRIES):
            self.update(vector)
