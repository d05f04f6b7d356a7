"""Hypercalls: how the Guest asks the Host for privileged work (mirrors hypercalls.c, spec §1).

A hypercall is `int $0x1f` at ring 1 with the call number in %eax and up to four
arguments in %ebx, %ecx, %edx and %esi.  Nothing is returned: a bad request kills
the Guest.  Calls the Guest may batch sit in a 64-slot ring inside lguest_data and
are run, in order, before every synchronous call (`do_async_hcalls`).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lguest import abi
from lguest.abi import Hcall, LguestData
from lguest.host.pgformat import PAE, mismatch

if TYPE_CHECKING:
    from lguest.host.core import Guest

HcallArgs = tuple[int, int, int, int, int]  # arg0 (the number) .. arg4
HCALL_REGS = ("eax", "ebx", "ecx", "edx", "esi")  # §1.1: where arg0..arg4 travel
STACK_PAGES_MAX = 2  # §6.8: SET_STACK's stack may span this many pages (hypercalls.c too)


# tour:H.40 A hypercall reaches the Host
# The Guest loaded a call number in %eax, up to four arguments in %ebx, %ecx, %edx and %esi,
# and ran `int $0x1f` at ring 1 (chapter G).  The Switcher left the emulator on that trap,
# the run loop noted it ("What each return from the Guest means") and, on its next turn,
# comes here (on the native path the common ones never leave the emulator: "The common
# hypercalls, served in C").  The registers are read in one go.  Before INIT nothing but INIT is allowed.
# After it, the Host first drains the Guest's ring of queued calls, in order, and only then
# runs the call in the registers: the Guest may batch page-table updates and rely on them
# being done before a call that depends on them.  Nothing is returned to the Guest: a call
# either works or kills it, and the loop then resumes the Guest just after its `int`.
def do_hypercalls(guest: Guest) -> None:
    """Run the pending synchronous hypercall (and first, the async ring)."""
    args: HcallArgs = tuple(guest.switcher.get_many(HCALL_REGS))  # type: ignore[assignment]
    if guest.lguest_data is None:
        initialize(guest, args)
        return
    do_async_hcalls(guest)
    if not guest.dead:
        do_hcall(guest, args, queued=False)


# tour:H.50 INIT: lguest_data
# The first hypercall hands the Host the guest-physical address of lguest_data, the page
# both sides share (§3.6).  It must lie wholly inside the Guest's RAM.  The Host reads what
# the Guest filled in (where its `iret` that re-enables interrupts sits, which vector is its
# system call, where its kernel's mappings start, which cannot overlap the Switcher at the
# top of memory), and writes what the Guest must know: the time, that there is no TSC rate
# to trust, and how much of the address space is reserved for the Switcher.  From here on
# the run loop reads irq_enabled and blocked_interrupts in this page, and writes cr2,
# irq_pending and the time into it.
def initialize(guest: Guest, args: HcallArgs) -> None:
    """LGUEST_INIT, the first hypercall (§3.6); any other call first is fatal."""
    nr, gpa = args[0], args[1]
    guest.trace_hcall(args, queued=False)
    if nr != Hcall.LGUEST_INIT:
        guest.kill(f"hypercall {nr} before INIT")
        return
    if not guest.memory.ok(gpa, LguestData.SIZE):
        guest.kill(f"bad guest page {gpa:#010x}")
        return
    memory = guest.memory
    memory.write_u32(gpa + LguestData.TSC_KHZ, 0)  # no constant-rate TSC to offer (docs/design.md)
    syscall_vec = memory.read_u32(gpa + LguestData.SYSCALL_VEC)
    if syscall_vec not in (abi.SYSCALL_VECTOR, guest.syscall_vector):
        guest.kill("bad syscall vector")
        return
    guest.noirq_iret = memory.read_u32(gpa + LguestData.NOIRQ_IRET)
    guest.lguest_data = gpa
    guest.gates_changed()
    guest.write_timestamp()
    kernel_address = memory.read_u32(gpa + LguestData.KERNEL_ADDRESS)
    memory.write_u32(gpa + LguestData.RESERVE_MEM, abi.RESERVE_MEM)
    if kernel_address >= abi.SWITCHER_ADDR:
        guest.kill(f"bad kernel address {kernel_address:#x}")
        return
    guest.pages.kernel_address = kernel_address
    # Our own writes above must not be hidden behind a stale translation.
    guest.pages.clear_all()


# tour:H.60 The async ring, and one call from it: SET_PTE
# Calls that can wait (page-table updates mostly) are not made one trap each: the Guest
# writes them into a 64-slot ring in lguest_data and marks each slot's status byte used. The
# Host keeps its own cursor and, on the next synchronous hypercall (FLUSH_ASYNC when the
# Guest has nothing else to ask), takes the slots in order, runs each as if it had come in
# registers (`do_hcall`), and marks it free again.  Take SET_PTE: the Guest changed one
# entry of its page tables.  `do_hcall` finds its handler in the table at the bottom of this
# file, which hands the change to the shadow page tables ("SET_PTE, and a TLB gone stale").
# A bad slot, or a status byte the Host cannot write back, kills the Guest.
def do_async_hcalls(guest: Guest) -> None:
    """Drain the async ring (§1.4) in order, starting at the Host's cursor."""
    base = guest.lguest_data
    assert base is not None
    memory = guest.memory
    status = memory.read(base + LguestData.HCALL_STATUS, abi.LHCALL_RING_SIZE)
    for _ in range(abi.LHCALL_RING_SIZE):
        n = guest.next_hcall
        if status[n] == abi.HCALL_FREE:
            break
        guest.next_hcall = (n + 1) % abi.LHCALL_RING_SIZE
        slot = base + LguestData.HCALLS + n * LguestData.HCALL_SIZE
        if not memory.ok(slot, LguestData.HCALL_SIZE):
            guest.kill("Fetching async hypercalls")
            return
        args: HcallArgs = struct.unpack("<5I", memory.read(slot, LguestData.HCALL_SIZE))
        do_hcall(guest, args, queued=True)
        if guest.dead:
            return
        if not memory.write(base + LguestData.HCALL_STATUS + n, bytes([abi.HCALL_FREE])):
            guest.kill("Writing result for async hypercall")
            return


def count_served_in_c(guest: Guest) -> None:
    """Add in the hypercalls C served since the last exit (--stats counts every one)."""
    if guest.native_hcalls is None:
        return
    for nr, count in guest.native_hcalls.take_counts():
        guest.stats["hypercalls"] += count
        if guest.tracer is not None:
            guest.tracer.count_served(nr, count)  # type: ignore[attr-defined] (only_counts)


def do_hcall(guest: Guest, args: HcallArgs, queued: bool) -> None:
    """Execute one hypercall (§1.2)."""
    guest.stats["hypercalls"] += 1
    guest.trace_hcall(args, queued)
    handler = (PAE_HANDLERS if guest.pages.format is PAE else HANDLERS).get(args[0])
    if handler is None:
        guest.kill(f"Bad hypercall {args[0]}\n")
        return
    handler(guest, *args[1:])


def hcall_flush_async(guest: Guest, *_: int) -> None:
    """Nothing to do: entering the Host already drained the ring."""


def hcall_init_again(guest: Guest, *_: int) -> None:
    guest.kill("already have lguest_data")


def hcall_shutdown(guest: Guest, reason_gpa: int, how: int, *_: int) -> None:
    """SHUTDOWN: read exactly 128 bytes of reason; a restart replaces the reason."""
    raw = bytearray(guest.memory.read(reason_gpa, abi.SHUTDOWN_REASON_BYTES))
    raw[-1] = 0
    text = raw[: raw.index(0)].decode("utf-8", "replace")
    guest.kill(f"CRASH: {text}")
    guest.shutdown_how = how
    if how == abi.LGUEST_SHUTDOWN_RESTART:
        guest.restart = True


def hcall_new_pgtable(guest: Guest, pgdir: int, *_: int) -> None:
    """NEW_PGTABLE (§6.4), refusing tables in the other format than the Guest's mode."""
    pages = guest.pages
    if pages.holds(pgdir):  # checked when its shadow was made (so C switches to it unchecked)
        pages.new_pgtable(pgdir)
        return
    wrong = mismatch(pages.format, guest.memory, pgdir, guest.switcher.get("eip"), pages.pfn_limit)
    if wrong:
        guest.kill(wrong)
        return
    pages.new_pgtable(pgdir)


def hcall_flush_tlb(guest: Guest, everything: int, *_: int) -> None:
    guest.pages.flush_tlb(everything)


def hcall_load_idt_entry(guest: Guest, num: int, lo: int, hi: int, *_: int) -> None:
    guest.idt.load_entry(num, lo, hi)


def hcall_set_stack(guest: Guest, ss: int, esp: int, pages: int, *_: int) -> None:
    """SET_STACK (§6.8): where traps from user mode land; its pages must be usable."""
    if ss & 3 != abi.GUEST_PL:
        guest.kill(f"bad stack segment {ss}")
        return
    if pages > STACK_PAGES_MAX:
        guest.kill(f"bad stack pages {pages}")
        return
    ss &= 0xFFFF  # a selector: lguest kept 16 bits of it, as the TSS does (hypercalls.c too)
    guest.set_kernel_stack(ss, esp)
    guest.pages.set_stack(esp, pages)


def hcall_ts(guest: Guest, ts: int, *_: int) -> None:
    """TS (§7.5): the Guest wants CR0.TS, to catch its next FPU use (lazy FPU).
    On the native path C serves it (hypercalls.c's `task_switched`, the same rule)."""
    guest.ts = ts
    guest.switcher.set_task_switched(bool(ts))


def hcall_set_clockevent(guest: Guest, delta_ns: int, *_: int) -> None:
    guest.clock.set(delta_ns)


def hcall_halt(guest: Guest, *_: int) -> None:
    guest.halted = True


def hcall_set_pte(guest: Guest, pgdir: int, vaddr: int, pte: int, pte_high: int) -> None:
    guest.pages.set_pte(pgdir, vaddr, pte, pte_high)


def hcall_set_pmd(guest: Guest, *_: int) -> None:
    """SET_PMD (§6.7, PAE only): a PMD entry changed; like lguest, drop every shadow."""
    guest.pages.clear_all()


def hcall_set_pgd(guest: Guest, pgdir: int, index: int, *_: int) -> None:
    guest.pages.set_pgd(pgdir, index)


def hcall_load_tls(guest: Guest, gpa: int, *_: int) -> None:
    guest.segments.load_tls(gpa)


def hcall_load_gdt_entry(guest: Guest, num: int, lo: int, hi: int, *_: int) -> None:
    guest.segments.load_gdt_entry(num, lo, hi)


def hcall_send_interrupts(guest: Guest, *_: int) -> None:
    """Nothing to do: the run loop delivers pending interrupts on the way back in."""


HANDLERS: dict[int, Callable[..., None]] = {
    Hcall.FLUSH_ASYNC: hcall_flush_async,
    Hcall.LGUEST_INIT: hcall_init_again,
    Hcall.SHUTDOWN: hcall_shutdown,
    Hcall.NEW_PGTABLE: hcall_new_pgtable,
    Hcall.FLUSH_TLB: hcall_flush_tlb,
    Hcall.LOAD_IDT_ENTRY: hcall_load_idt_entry,
    Hcall.SET_STACK: hcall_set_stack,
    Hcall.TS: hcall_ts,
    Hcall.SET_CLOCKEVENT: hcall_set_clockevent,
    Hcall.HALT: hcall_halt,
    Hcall.SET_PTE: hcall_set_pte,
    Hcall.SET_PGD: hcall_set_pgd,
    Hcall.LOAD_TLS: hcall_load_tls,
    Hcall.LOAD_GDT_ENTRY: hcall_load_gdt_entry,
    Hcall.SEND_INTERRUPTS: hcall_send_interrupts,
}
# A PAE Guest has one more level of table to tell us about (from a non-PAE one: `Bad hypercall 13`).
PAE_HANDLERS: dict[int, Callable[..., None]] = {**HANDLERS, Hcall.SET_PMD: hcall_set_pmd}


def timestamp() -> tuple[int, int]:
    """CLOCK_REALTIME as the (tv_sec, tv_nsec) pair lguest_data.time holds."""
    now = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return now // 1_000_000_000, now % 1_000_000_000
