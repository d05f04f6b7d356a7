"""The common hypercalls, served in C (hypercalls.c; no lguest counterpart: lguest's
hypercalls were one trap into the Host's kernel code, never a return to a user process).

A fork is a storm of SET_PTE hypercalls, and each one used to stop the emulator,
run `hypercalls.do_hypercalls` and start the emulator again.  On the native path the
interrupt hook serves FLUSH_ASYNC and SET_PTE itself, sync or queued in the async
ring, and a context switch's NEW_PGTABLE, SET_STACK and LOAD_TLS, SET_PGD and
FLUSH_TLB (the "A context switch without an exit" stop), from a table this module
keeps: where the ring is, the Host's cursor into it (the only copy:
`Guest.next_hcall` reads and writes it here), TS's flag (the only copy too:
`Guest.ts`; C sets CR0.TS with it, as `Switcher.set_task_switched` does), and what SET_PTE's
rule needs to know of the shadows, which the page tables hand over as data wherever
they change it (`PageTables._tell_native`).

C does SET_PTE's part that the emulator sees at once (the page leaves its TLB, and
the fill answers of that page are forgotten) and logs the change; the page tables
replay the log into their shadows, with the rule written in Python, before they
next read or change one (`PageTables.catch_up`).  Anything unusual goes to the
Python hook as if C were not there.  A tracer that wants every hypercall (--trace,
the gdb stub, a timeline) means no native hypercalls; one that only counts them
(--stats=json's census) is told the counts (`count_served`).

What it owns: the table (SET_STACK's stack and TS's flag live only there), and the counts of what C
served until Python adds them in.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CS,
    UC_X86_REG_EAX,
    UC_X86_REG_EBX,
    UC_X86_REG_ECX,
    UC_X86_REG_EDX,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_ESI,
)

from lguest import abi
from lguest.abi import Hcall, LguestData
from lguest.host import calibration, native
from lguest.host.hypercalls import STACK_PAGES_MAX
from lguest.host.switcher import GDT_ADDR, STATE_PAGE, TSS_ADDR, TSS_ESP1, TSS_SS1

if TYPE_CHECKING:
    from lguest.host.core import Tracer
    from lguest.host.pgformat import PageFormat
    from lguest.host.switcher import Switcher

SHADOWS = 4  # page_tables.SHADOW_SLOTS
LOG_ENTRIES = 1024
CALLS = 32
REGS = (UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX, UC_X86_REG_ESI,
        UC_X86_REG_CS, UC_X86_REG_EFLAGS)
LOGGED = struct.Struct("<III4xQ")  # struct logged_change: what, pgdir, vaddr, pte
# what a logged change is
LOGGED_SET_PTE, LOGGED_SWITCH, LOGGED_SET_PGD, LOGGED_FLUSH_USER, LOGGED_FLUSH_ALL = range(5)
U32, U64 = ctypes.c_uint32, ctypes.c_uint64


class _Logged(ctypes.Structure):
    _fields_ = (("what", U32), ("pgdir", U32), ("vaddr", U32), ("unused", U32), ("pte", U64))


class _Table(ctypes.Structure):
    """struct hcall_table of hypercalls.c."""

    _fields_ = (("uc", ctypes.c_void_p), ("reg_read_batch", ctypes.c_void_p), ("reg_read", ctypes.c_void_p),
                ("reg_write", ctypes.c_void_p), ("cr0", ctypes.c_int32), ("regs", ctypes.c_int32 * len(REGS)),
                ("guest_pl", ctypes.c_int32), ("tlb_flush_page", ctypes.c_void_p),
                ("tlb_flush", ctypes.c_void_p), ("cpu", ctypes.c_void_p),
                ("fills", ctypes.c_void_p), ("ram", ctypes.c_void_p), ("ram_size", U64),
                ("flush_async", U32), ("set_pte", U32), ("set_pgd", U32), ("send_interrupts", U32),
                ("new_pgtable", U32), ("set_stack", U32), ("load_tls", U32), ("flush_tlb", U32),
                ("ts", U32),
                ("gdt", ctypes.c_void_p), ("tls_min", U32), ("max_stack_pages", U32),
                ("tss", ctypes.c_void_p),
                ("tss_esp1", U32), ("tss_ss1", U32), ("top_entries", U32), ("irq_pending_offset", U32),
                ("blocked_offset", U32), ("irqs_pending", ctypes.c_void_p),
                ("status_offset", U32), ("slots_offset", U32),
                ("slot_size", U32), ("ring_size", U32), ("free", U32), ("switcher", U32),
                ("present", U64), ("accessed", U64), ("dirty", U64), ("pse", U64),
                ("ready", ctypes.c_int32), ("lguest_data", U32), ("next_hcall", U32), ("kernel_address", U32),
                ("pfn_mask", U64), ("nx_mask", U64), ("pfn_limit", U64), ("device_limit", U64),
                ("shadows", U32), ("current", U32), ("pgdir", U32 * SHADOWS), ("filled", U32),
                ("ss1", U32), ("esp1", U32), ("stack_top", U32), ("stack_pages", U32),
                ("task_switched", U32),
                ("tls_loaded", U32), ("tls", U32 * (2 * abi.GDT_ENTRY_TLS_ENTRIES)),
                ("served", U64 * CALLS), ("total", U64), ("logged", U32), ("log", _Logged * LOG_ENTRIES))


def only_counts(tracer: Tracer | None) -> bool:
    """Does this tracer (if any) let hypercalls go unseen, told only how many there were?"""
    return tracer is None or getattr(tracer, "only_counts", False)


# tour:S.165 The common hypercalls, served in C
# A fork+exec is a storm of SET_PTE hypercalls, 109,176 of 130,840 in our profile, and each
# was an exit from the emulator, a Python handler and a re-entry.  On the native path the C
# interrupt hook serves SET_PTE and FLUSH_ASYNC itself, sync or from the async ring, from a
# table the Host keeps as data: where the ring is and the Host's cursor into it (one copy,
# that Python uses too), which directory each shadow holds, where the kernel starts, where
# RAM ends.  Most of a fork's SET_PTEs touch no shadow at all (the child's directory is not
# shadowed yet): nothing to do.  For the rest, C drops the page from the emulator's TLB with
# QEMU's own function and forgets its fill answers, and logs the change; the page tables
# replay the log, with the rule written once in Python, before they next look at a shadow
# ("SET_PTE, and a TLB gone stale").  Anything unusual, a kill included, goes to Python.
class NativeHypercalls:
    """The table hypercalls.c serves hypercalls from, for one Guest."""

    def __init__(self, switcher: Switcher, cpu: calibration.EngineCpu, ram: int, ram_size: int) -> None:
        assert switcher.trap_hook is not None and switcher.fill_answers is not None
        library = native.library()
        library.lguest_hcall_table_size.restype = ctypes.c_size_t
        if library.lguest_hcall_table_size() != ctypes.sizeof(_Table):
            raise native.NativeBuildError("hypercalls.c and native_hypercalls.py disagree on their table")
        table = self._table = _Table()
        table.uc = switcher.uc._uch.value
        table.reg_read_batch = ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p).value
        table.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        table.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
        table.cr0 = UC_X86_REG_CR0
        table.regs[:] = REGS
        table.guest_pl = abi.GUEST_PL
        table.tlb_flush_page = ctypes.cast(uclib.tlb_flush_page_x86_64, ctypes.c_void_p).value
        table.tlb_flush = ctypes.cast(uclib.tlb_flush_x86_64, ctypes.c_void_p).value
        table.cpu = cpu.cpu
        table.fills = switcher.fill_answers.address
        table.ram, table.ram_size = ram, ram_size
        table.flush_async, table.set_pte = Hcall.FLUSH_ASYNC, Hcall.SET_PTE
        table.set_pgd, table.send_interrupts = Hcall.SET_PGD, Hcall.SEND_INTERRUPTS
        table.new_pgtable, table.set_stack = Hcall.NEW_PGTABLE, Hcall.SET_STACK
        table.max_stack_pages = STACK_PAGES_MAX
        table.load_tls, table.tls_min = Hcall.LOAD_TLS, abi.GDT_ENTRY_TLS_MIN
        table.flush_tlb, table.ts = Hcall.FLUSH_TLB, Hcall.TS
        table.gdt = switcher.state_page + GDT_ADDR - STATE_PAGE
        table.tss = switcher.state_page + TSS_ADDR - STATE_PAGE
        table.tss_esp1, table.tss_ss1 = TSS_ESP1, TSS_SS1
        table.irq_pending_offset = LguestData.IRQ_PENDING
        table.blocked_offset = LguestData.BLOCKED_INTERRUPTS
        table.status_offset, table.slots_offset = LguestData.HCALL_STATUS, LguestData.HCALLS
        table.slot_size, table.ring_size = LguestData.HCALL_SIZE, abi.LHCALL_RING_SIZE
        table.free = abi.HCALL_FREE
        table.switcher = abi.SWITCHER_ADDR
        table.present, table.accessed, table.dirty, table.pse = (abi.PTE_PRESENT, abi.PTE_ACCESSED,
                                                                  abi.PTE_DIRTY, abi.PTE_PSE)
        self._counted = [0] * CALLS  # what Python has added in of `served`
        self._total = 0  # and of `total`
        switcher.trap_hook.serve_hypercalls(table)

    # --- what the Host says -----------------------------------------------------------------
    def watch_irqs(self, pending: int) -> None:
        """The pending irqs live at `pending` (native_irqs.py): a hypercall made while one
        the Guest could take waits goes to Python, which delivers it."""
        self._table.irqs_pending = pending

    def start(self, lguest_data: int | None) -> None:
        """INIT gave lguest_data (None: not yet, or a Guest restored before INIT)."""
        self._table.lguest_data = lguest_data or 0
        self._table.ready = lguest_data is not None

    @property
    def next_hcall(self) -> int:
        return self._table.next_hcall

    @next_hcall.setter
    def next_hcall(self, n: int) -> None:
        self._table.next_hcall = n

    def shadows_are(self, fmt: PageFormat, kernel_address: int, pfn_limit: int, device_limit: int,
                    pgdirs: list[int], current: int, filled: list[bool]) -> None:
        """What SET_PTE's and NEW_PGTABLE's rules need, as the page tables have it now
        (their log replayed): `filled`, which shadows hold entries."""
        table = self._table
        table.pfn_mask, table.nx_mask, table.top_entries = fmt.pfn_mask, fmt.nx_mask, fmt.top_entries
        table.kernel_address, table.pfn_limit, table.device_limit = kernel_address, pfn_limit, device_limit
        table.shadows = len(pgdirs)
        table.pgdir[:len(pgdirs)] = pgdirs
        table.current = current
        table.filled = sum(1 << i for i, holds in enumerate(filled) if holds)

# tour:S.166 A context switch without an exit
# Linux switches tasks with three queued calls: NEW_PGTABLE for the next address space,
# SET_STACK for its kernel stack, LOAD_TLS for its thread-local segments; then it flushes
# the ring.  C serves all three, and the SET_PGDs and FLUSH_TLBs around them, wherever
# the Python rule would simply say "done": a directory a shadow already holds, whose
# stack needs no pinning; a stack the current shadow already holds for the kernel to
# write; descriptors in RAM that the rules of "Segments: the Guest's GDT, filtered" let
# through.  A switch flushes the emulator's whole TLB and turns the C fill hook to the
# new shadow's answers; it goes in the same log as the SET_PTEs, in order, for the page
# tables to follow.  SET_STACK's stack has one copy, here, and C writes the TSS the CPU
# reads; the real GDT too, and the Host's copy takes the new descriptors when it next
# looks.  Linux also queues a TS with a switch, for lazy FPU use: C sets CR0.TS itself and
# keeps the Guest's flag, whose one copy is here, for the #NM that comes back to the Host.
# Anything else, every kill included, is the Python handler's, as before.
    # --- SET_STACK's stack: the only copy, which C changes too ----------------------------
    @property
    def kernel_stack(self) -> tuple[int, int]:
        """(ss1, esp1): where traps from user mode land."""
        return self._table.ss1, self._table.esp1

    @kernel_stack.setter
    def kernel_stack(self, stack: tuple[int, int]) -> None:
        self._table.ss1, self._table.esp1 = stack

    @property
    def pinned_stack(self) -> tuple[int, int]:
        """(top, pages): the stack the page tables keep mapped in every address space."""
        return self._table.stack_top, self._table.stack_pages

    @pinned_stack.setter
    def pinned_stack(self, stack: tuple[int, int]) -> None:
        self._table.stack_top, self._table.stack_pages = stack

    # --- TS's flag: the only copy, which C changes too ---------------------------------------
    @property
    def task_switched(self) -> int:
        """The Guest's last TS argument: nonzero, it asked for #NM on its next FPU use."""
        return self._table.task_switched

    @task_switched.setter
    def task_switched(self, ts: int) -> None:
        self._table.task_switched = ts

    # --- what C did ---------------------------------------------------------------------------
    def take_tls(self) -> list[tuple[int, int]] | None:
        """The TLS descriptors of the last LOAD_TLS C served, as the Host keeps them
        (fixed up), if the Host has not seen them yet."""
        table = self._table
        if not table.tls_loaded:
            return None
        table.tls_loaded = 0
        words = list(table.tls)
        return list(zip(words[::2], words[1::2], strict=True))

    @property
    def logged_address(self) -> int:
        """Where C counts the changes it logged (fills.c orders its own log by it)."""
        return ctypes.addressof(self._table) + _Table.logged.offset

    def take_log(self) -> list[tuple[int, int, int, int]]:
        """(what, pgdir, vaddr, pte) of each change C made to what the shadows hold: a
        SET_PTE that touched one, a switch to one (NEW_PGTABLE), a SET_PGD of a shadowed
        directory (its index in `vaddr`), a FLUSH_TLB of the user part; oldest first
        (and the log emptied)."""
        table = self._table
        count = table.logged
        if not count:
            return []
        table.logged = 0
        raw = ctypes.string_at(ctypes.addressof(table.log), count * LOGGED.size)
        return list(LOGGED.iter_unpack(raw))

    def take_counts(self) -> list[tuple[int, int]]:
        """(call number, how many) C served since last asked (cheap when none)."""
        if self._table.total == self._total:
            return []
        self._total = self._table.total
        served = list(self._table.served)
        fresh = [(nr, now - then) for nr, (now, then) in enumerate(zip(served, self._counted, strict=True))
                 if now != then]
        self._counted = served
        return fresh

    @property
    def served(self) -> int:
        """Hypercalls C served, sync and queued."""
        return self._table.total


def serve_hypercalls(switcher: Switcher, ram: int, ram_size: int,
                     tracer: Tracer | None) -> NativeHypercalls | None:
    """The native hypercall table for this Guest, or None where Python must see every call:
    the pure-Python Host, a tracer that wants each one, or an engine whose CPU is unknown."""
    if switcher.trap_hook is None or switcher.fill_answers is None or not only_counts(tracer):
        return None
    cpu = calibration.engine_cpu(switcher.uc)
    if cpu is None:
        return None
    return NativeHypercalls(switcher, cpu, ram, ram_size)
