"""TLB misses the Host already answered, answered again in C (fills.c; no lguest
counterpart: lguest's shadow page tables were walked by the real CPU).

Every miss in the emulator's TLB asks `PageTables.translate` through a Python
callback, some microseconds each, and most ask again what the current shadow
already answered before the emulator's TLB was flushed (a context switch, a
FLUSH_TLB, a SET_PTE of a page it held).  So the page tables keep, here, the
answers they gave (physical page and permissions, per page and per kind of
access, kernel or user), and the native path's TLB-fill hook is C that repeats
them; the rules of `translate` stay in Python, but one (below).

Each shadow has its own table (so an address space switched back to is answered
at once), and only answers that come from a shadow's entries are kept.  The page
tables drop them exactly where the entry behind them changes: a page's when
SET_PTE or `demand_page` changes its entry (a first write sets DIRTY), a whole
table when SET_PGD, FLUSH_TLB, eviction or a full flush drops many entries at
once.  Kernel mappings are the same in every address space: a page another
shadow's table answered from Guest entries the current directory leads to as well
is copied into the current table (fills.c's `adopt`), and the page tables record
its PTE in that shadow as the walk would have (`take_records`, replayed in order
with the hypercalls C logged).

One rule of `translate` runs in C as well: the plain case of `demand_page`
(fills.c's `walk`, two-level format only).  A page no answer covers, whose Guest
directory entry and PTE are present, plain and allow the access, is walked in C: A/D
set in the Guest's PTE, the page's other answers forgotten, the class that missed
granted, the entry logged for the page tables to record like an adoption.  Like
`translate`, C answers from the shadow's record where that holds an entry: a slot
keeps the record a walk or a SET_PTE gave it (`set_pte`), and a bit per page says
where the record may hold an entry C does not know (the page tables keep it exact
where they drop records, `unrecorded`; C where it changes one); there Python decides.  C
needs RAM's size in pages for the checks (`limit_ram`).  Anything else (no answer
kept, a refusal, a kill, a device window, PAE, the Switcher's
pages, virtual-8086 mode, and every miss while the Host has news the hook cannot
see: an exit pending, a failed hook, a frame for the trampoline, the Host's own
loads outside the emulator) goes to the Switcher's Python hook.

While the CPU itself delivers a trap (interrupts.c), its accesses are the kernel's
whatever CS says: then the C hook answers them alone, from the kernel's answers and
the Switcher's STATE_PAGE (interrupts.c delivers only when it can), and for that
the page tables also keep the kernel-write answer a shadow entry gives to a frame
Python pushed (`keep_kernel_write`, `keep_where`).

A refusal the page tables give may become the Guest's #PF raised by the CPU
itself, without stopping the emulator (`raise_page_fault`, when the Host says so
from inside the Python hook; see the Guest's `_cpu_page_fault`).  The plain
refusals C raises alone (`refuse_here`: lguest_data.cr2 and the emulator's exact
address; `take_raised` for the one interrupts.c could not deliver).

What it owns: the table, the C hook's installation in one engine, the count
of misses answered without Python (--stats), the bits saying where a shadow's record
may hold an entry, and the switch to raise a fault.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import UC_HOOK_TLB_FILL, UC_MEM_READ, UC_MEM_WRITE, Uc
from unicorn.unicorn_py3.unicorn import uc_tlb_entry, uclib
from unicorn.x86_const import UC_X86_REG_CS, UC_X86_REG_EFLAGS

from lguest import abi
from lguest.host import native

TABLES = 5  # one per shadow (page_tables.SHADOW_SLOTS), and linear mode's
SLOTS = 8192
CLASSES = 7  # read, write, fetch, from ring 1 and from ring 3; and where the Host found the page
RECORDS = 1024
RECORD_BYTES = (1 << 20) // 8  # a bit per page of the address space, per table
RECORD_WORDS = (1 << 20) // 512 // 64  # and a bit per 512 pages that may have one set
WHERE = 6  # never a fill's answer: for interrupts.c's check of where a frame goes
FillHook = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                            ctypes.POINTER(uc_tlb_entry), ctypes.c_void_p)


class _Slot(ctypes.Structure):
    """struct answer_slot of fills.c."""

    _fields_ = (("generation", ctypes.c_uint64), ("tlb_epoch", ctypes.c_uint64), ("page", ctypes.c_uint32),
                ("known", ctypes.c_uint32), ("paddr", ctypes.c_uint32 * CLASSES),
                ("perms", ctypes.c_uint32 * CLASSES), ("pde", ctypes.c_uint32), ("pte", ctypes.c_uint32))


class _Record(ctypes.Structure):
    """struct new_record of fills.c."""

    _fields_ = (("logged", ctypes.c_uint32), ("which", ctypes.c_uint32), ("page", ctypes.c_uint32),
                ("pte", ctypes.c_uint32))


class _Table(ctypes.Structure):
    """struct fill_table of fills.c."""

    _fields_ = (("python_decides", ctypes.c_int32), ("keep", ctypes.c_int32), ("keep_pde", ctypes.c_uint32),
                ("keep_pte", ctypes.c_uint32), ("ram", ctypes.c_void_p), ("ram_size", ctypes.c_uint32),
                ("pgdir", ctypes.c_uint32 * TABLES), ("reg_read", ctypes.c_void_p), ("cs", ctypes.c_int32),
                ("eflags", ctypes.c_int32), ("switcher", ctypes.c_uint32), ("state_page", ctypes.c_uint32),
                ("delivering", ctypes.c_int32), ("python", FillHook),
                ("served", ctypes.c_uint64), ("reread", ctypes.c_uint64), ("tlb_epoch", ctypes.c_uint64),
                ("lost_track", ctypes.c_int32), ("current", ctypes.c_uint32),
                ("generation", ctypes.c_uint64 * TABLES), ("slot", ctypes.c_void_p),
                ("raise_fault", ctypes.c_int32), ("fault_errcode", ctypes.c_uint32), ("env", ctypes.c_void_p),
                ("raise_err", ctypes.c_void_p), ("adopted", ctypes.c_uint64),
                ("hcalls_logged", ctypes.c_void_p), ("pfn_limit", ctypes.c_uint32),
                ("walked", ctypes.c_uint64), ("recorded", ctypes.c_void_p),
                ("recorded_chunks", (ctypes.c_uint64 * RECORD_WORDS) * TABLES), ("records", ctypes.c_uint32),
                ("record", _Record * RECORDS), ("cr2_at", ctypes.c_uint32),
                ("old_exception_at", ctypes.c_uint32), ("exact", ctypes.c_int32), ("raised", ctypes.c_int32),
                ("raised_page", ctypes.c_uint32), ("raised_errcode", ctypes.c_uint32),
                ("raised_cr2", ctypes.c_uint32), ("raised_fetch", ctypes.c_int32),
                ("refused", ctypes.c_uint64))


# tour:S.160 TLB fills of pages already validated, served in C
# Most TLB misses ask again what a shadow already answered: the emulator's TLB was flushed
# by a context switch, a FLUSH_TLB or a SET_PTE, and the page is still shadowed.  On the
# native path the TLB-fill hook is C that repeats the answers the page tables gave
# (physical page and permissions, per shadow, per page, per kind of access, kernel or
# user); the rules stay in `translate`, written once.  Wherever a shadow entry changes the
# page tables forget the answers given from it, and every page the C hook may answer
# unseen counts as one the emulator's TLB may hold, so a SET_PTE of it still flushes.  The
# Switcher's pages, virtual-8086 mode and a miss while an exit is pending go to the
# Switcher's Python hook, as if the C one were not there.  One thing the C hook does on its
# own: after a table forgot everything (FLUSH_TLB, SET_PGD, a new address space in that
# shadow) it still remembers which two Guest entries (directory entry and PTE, two-level
# format) each answer rested on, and if the Guest's tables hold exactly those now, the
# walk would give the same answer: it is given again, without Python.  Anything changed
# (a PTE, a directory entry) goes to Python, which walks and checks, as lguest's
# demand_page did after its shadows were dropped.  And one rule runs in C too: where
# no answer and no entry the shadow records covers a page, a present, plain entry that
# allows the access is walked in C, as `demand_page` would (A/D set, the entry logged
# for the page tables to record); a refusal, a kill or a device window is Python's.
class FillAnswers:
    """The C TLB-fill hook of one engine, with the answers the page tables gave."""

    def __init__(self, uc: Uc, ram_address: int, ram_size: int,
                 python: Callable[[Uc, int, int, uc_tlb_entry, object], bool], state_page: int) -> None:
        """`state_page`: the Switcher's page the CPU reads while it delivers a trap."""
        table = self._table = _Table()
        # The answers themselves (megabytes), apart, so that closing the engine frees them
        # at once: the Switcher's objects form cycles only the collector breaks.
        self._slots: ctypes.Array | None = ((_Slot * SLOTS) * TABLES)()
        table.slot = ctypes.addressof(self._slots)
        self._recorded: ctypes.Array | None = ((ctypes.c_uint8 * RECORD_BYTES) * TABLES)()
        table.recorded = ctypes.addressof(self._recorded)
        table.state_page = state_page
        table.ram, table.ram_size = ram_address, ram_size
        table.tlb_epoch = 1  # an empty slot's 0 was never answered to the TLB
        table.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        table.cs, table.eflags = UC_X86_REG_CS, UC_X86_REG_EFLAGS
        table.switcher = abi.SWITCHER_ADDR
        for which in range(TABLES):
            table.generation[which] = 1  # an empty slot's 0 is never current
        table.python_decides = 1  # until the Switcher starts emulating
        table.python = FillHook(lambda _uc, vaddr, access, entry, _data: python(uc, vaddr, access,
                                                                                entry.contents, None))
        library = native.library()
        library.lguest_fills_table_size.restype = ctypes.c_size_t
        if library.lguest_fills_table_size() != ctypes.sizeof(_Table):
            raise native.NativeBuildError("fills.c and fills.py disagree on struct fill_table")
        self._forget = library.lguest_fills_forget
        self._forget.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)
        self._learn = library.lguest_fills_learn
        self._learn.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                                ctypes.c_uint32, ctypes.c_uint32)
        self._may_hold = library.lguest_fills_may_hold
        self._may_hold.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32)
        self._may_hold.restype = ctypes.c_bool
        self._tlb_flushed = library.lguest_fills_tlb_flushed
        self._tlb_flushed.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        self._forget_all = library.lguest_fills_forget_all
        self._forget_all.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        self._set_pte = library.lguest_fills_set_pte
        self._set_pte.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32)
        self._unrecorded = library.lguest_fills_unrecorded
        self._unrecorded.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint64)
        self._address = ctypes.addressof(table)
        self._old_exception: ctypes.c_int32 | None = None  # the CPU's "exception in flight"
        self._hook = native.add_hook(uc, UC_HOOK_TLB_FILL, "lguest_tlb_fill_hook", table)

    @property
    def address(self) -> int:
        """The table, for other C that must forget answers (hypercalls.c)."""
        return self._address

    @property
    def served(self) -> int:
        """Misses answered in C, which the page tables never saw (refusals included)."""
        return self._table.served + self._table.refused

    @property
    def refused(self) -> int:
        """Refusals C raised as the Guest's #PF itself."""
        return self._table.refused

    def release(self) -> None:
        """The engine is closed: free the answers (megabytes) now, not whenever the
        collector finds the Switcher's cycles; the counts stay readable."""
        self._table.python = FillHook()
        self._table.slot = self._table.recorded = None
        self._slots = self._recorded = None

    def ask_python(self, ask: bool) -> None:
        """Send every miss to the Python hook (True) or only those with no answer kept.

        Asking also ends a delivery a QEMU fault cut short (interrupts.c): from now
        on accesses are classed by CS again."""
        self._table.python_decides = ask
        if ask:
            self._table.delivering = 0

    def let_cpu_raise(self, env: int, old_exception_at: int) -> bool:
        """Let the C hook make the CPU raise the Guest's #PF itself (`raise_page_fault`):
        `env` is the engine's CPUX86State, `old_exception_at` the offset of its "exception
        in flight" field.  False if this emulator does not export QEMU's raise."""
        raise_err = getattr(uclib, "raise_exception_err_x86_64", None)
        if raise_err is None:
            return False
        self._table.env = env
        self._table.old_exception_at = old_exception_at
        self._table.raise_err = ctypes.cast(raise_err, ctypes.c_void_p).value
        self._old_exception = ctypes.c_int32.from_address(env + old_exception_at)
        return True

    def may_raise(self) -> bool:
        """Can the refusal being answered become a #PF the CPU raises itself?  Only from
        inside the C hook while it decides alone (no exit pending, the Host not loading
        outside the emulator), and with no exception in flight, which QEMU would turn
        into a double fault."""
        old = self._old_exception
        return old is not None and old.value == -1 and not self._table.python_decides

    def raise_page_fault(self, errcode: int) -> None:
        """Answer this refusal by having the CPU raise #PF(errcode) (fills.c), instead
        of stopping the emulator."""
        self._table.fault_errcode, self._table.raise_fault = errcode, 1

    def refuse_here(self, cr2_at: int, exact: bool) -> None:
        """Let C raise the plain refusals itself (fills.c's `refuse`): `cr2_at` is where
        lguest_data.cr2 is (0: gate 14 is not the CPU's, Python decides), `exact` whether
        the emulator notes each miss's address (exact_fill.py)."""
        self._table.cr2_at, self._table.exact = cr2_at, exact

    def note_raised(self, page: int, errcode: int, cr2: int, fetch: bool) -> None:
        """The Python hook has the CPU raise this #PF (`raise_page_fault`): noted as C notes
        its own, for the interrupt hook if interrupts.c cannot deliver it."""
        table = self._table
        table.raised_page, table.raised_errcode, table.raised_cr2 = page, errcode, cr2
        table.raised_fetch, table.raised = fetch, 1

    def take_raised(self) -> tuple[int, int, int, bool] | None:
        """(page, error code, cr2, fetch) of the #PF C raised that the CPU did not
        deliver (interrupts.c), once; None if there is none."""
        table = self._table
        if not table.raised:
            return None
        table.raised = 0
        return table.raised_page, table.raised_errcode, table.raised_cr2, bool(table.raised_fetch)

    def use(self, which: int) -> None:
        """The current shadow changed: its table answers from now on."""
        self._table.current = which

    @property
    def reread(self) -> int:
        """Answers made current again by re-reading the Guest's entries (after a forget_all)."""
        return self._table.reread

    @property
    def adopted(self) -> int:
        """Answers copied from another shadow's table, whose Guest entries the current
        shadow's directory leads to as well (kernel pages, shared by every space)."""
        return self._table.adopted

    def order_with(self, logged: int) -> None:
        """`logged`: the address of the count of changes C's hypercalls logged (a uint32),
        so that each adoption says where it falls among them."""
        self._table.hcalls_logged = logged

    @property
    def walked(self) -> int:
        """Misses answered by walking the Guest's tables in C (`PageTables.demand_page`'s
        plain case)."""
        return self._table.walked

    def take_records(self) -> list[tuple[int, int, int, int]]:
        """(changes logged before it, table, page, PTE) of each entry walked or adopted in C
        since last asked, which the page tables record as their own walk would have,
        oldest first (and the log emptied)."""
        table = self._table
        count = table.records
        if not count:
            return []
        table.records = 0
        return [(r.logged, r.which, r.page, r.pte) for r in table.record[:count]]

    def limit_ram(self, pfn_limit: int) -> None:
        """The Guest's RAM ends at page frame `pfn_limit`: a walk in C answers nothing beyond
        (a device window, or a kill: Python's)."""
        self._table.pfn_limit = pfn_limit

    def unrecorded(self, which: int, start: int, end: int) -> None:
        """Shadow `which`'s record holds no entry for a page in [start, end) any more."""
        self._unrecorded(self._address, which, start, end)

    def keep_this_answer(self, pde: int = 0, pte: int = 0) -> None:
        """The answer the page tables are giving (to the miss the C hook passed on) may be
        repeated for the same kind of access from the same ring, in the current shadow.
        `pde` and `pte` (two-level format, just walked and checked) are the Guest
        entries it rests on: while the Guest's tables hold exactly those, the answer
        stands even after the table forgot everything."""
        table = self._table
        table.keep, table.keep_pde, table.keep_pte = 1, pde, pte

    def watch_directory(self, which: int, pgdir: int) -> None:
        """Shadow `which` now shadows the two-level directory at `pgdir` (0: no re-reads)."""
        self._table.pgdir[which] = pgdir

    def tlb_flushed(self) -> None:
        """The emulator's whole TLB was flushed: nothing answered before is held any more."""
        self._tlb_flushed(self._address, self._table.current)

    def may_hold(self, which: int, start: int, end: int) -> bool:
        """Could the emulator's TLB hold an answer this hook gave, from shadow `which`, for a
        page in [start, end), since the last full flush?"""
        return self._may_hold(self._address, which, start, end)

    def learn_kernel_write(self, page: int, paddr: int, perms: int, pte: int) -> None:
        """The answer the page tables would give a kernel write to `page` in the
        current shadow, kept without a miss (for the frames the CPU pushes itself), from
        `pte`, the shadow's record (two-level format; 0: not said)."""
        self._learn(self._address, page, UC_MEM_WRITE - UC_MEM_READ, paddr, perms, pte)

    def learn_where(self, page: int, paddr: int) -> None:
        """Where the page tables found `page` (no access granted), kept like an answer."""
        self._learn(self._address, page, WHERE, paddr, 0, 0)

    def forget(self, which: int, page: int) -> None:
        """A shadow's entry for this page changed."""
        self._forget(self._address, which, page)

    def set_pte(self, which: int, page: int, record: int) -> None:
        """A SET_PTE changed shadow `which`'s entry for `page`: its answers go, and the
        record is `record` now (0: none; a PAE entry's low half, never read)."""
        self._set_pte(self._address, which, page, record)

    def forget_all(self, which: int) -> None:
        """A shadow lost many entries at once."""
        self._forget_all(self._address, which)
