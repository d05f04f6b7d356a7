"""Shadow page tables: the emulated TLB is lguest's shadow (mirrors page_tables.c, spec §6).

The Guest keeps ordinary i386 page tables in its own RAM, two-level or PAE
(`pgformat`, chosen when the Guest is made).  The CPU never walks them: every
TLB miss in the emulator asks `translate`, which is lguest's `demand_page()`:
walk the Guest's tables, check them, set ACCESSED/DIRTY, and answer with the
physical page and the permissions the access may have, or refuse (the Switcher
then reports a #PF with the error code we return).

Like lguest we keep up to four shadows, one per Guest page directory recently
used (`Shadow`): the Guest entries we validated, so that switching back to an
address space answers misses without walking the Guest's tables again.  What the
Guest changes in its tables reaches us only through hypercalls (SET_PTE,
SET_PGD, SET_PMD, FLUSH_TLB, NEW_PGTABLE); each drops what it invalidates here, and
marks the emulator's TLB stale when it may hold a dropped translation: the run loop
flushes it before the Guest runs again (`take_tlb_flush`), so this module never
touches the CPU.

On the native path C serves most SET_PTEs (native_hypercalls.py) and logs them, and
the C fill hook walks the plain case of `demand_page` itself (fills.c) and logs the
entries it walked; every entry point here replays both logs first (`catch_up`).  C
walks only where a shadow records no entry for the page, so every change to a
shadow's record tells it (C keeps track of its own changes, and of a SET_PTE's;
`_unrecorded` of the page tables' drops).

What it owns: the shadows, the walk of the Guest's tables (through its `PageFormat`),
the device windows' pages (no RAM behind them), and the kernel stack SET_STACK asked us
to keep mapped.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lguest import abi
from lguest.host.memory import GuestMemory, hex32
from lguest.host.native_hypercalls import LOGGED_FLUSH_ALL, LOGGED_FLUSH_USER, LOGGED_SET_PGD, LOGGED_SWITCH
from lguest.host.pgformat import PAE, TWO_LEVEL, PageFormat
from lguest.host.switcher import PERM_EXEC, PERM_READ, PERM_WRITE

if TYPE_CHECKING:
    from lguest.host.fills import FillAnswers
    from lguest.host.native_hypercalls import NativeHypercalls

SHADOW_SLOTS = 4
ADDRESS_SPACE = 1 << 32
# What linear mode pretends the Guest's tables say (§6.2).
LINEAR_PTE_FLAGS = abi.PTE_PRESENT | abi.PTE_RW


@dataclass
class Shadow:
    """One shadowed Guest page directory: the Guest PTEs we have validated, by page."""

    pgdir: int
    table: int = SHADOW_SLOTS  # its answers in the native path's C hook (fills.py); linear mode's last
    ptes: dict[int, int] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)  # pages with answers kept there

    def drop_user_part(self, kernel_address: int) -> None:
        self.ptes = {page: pte for page, pte in self.ptes.items() if page >= kernel_address}

    def drop_range(self, start: int, end: int) -> None:
        self.ptes = {page: pte for page, pte in self.ptes.items() if not start <= page < end}


class PageTables:
    """One Guest's shadows (lguest's `struct pgdir` array and its helpers)."""

    def __init__(self, memory: GuestMemory, kill: Callable[[str], None], pae: bool = False) -> None:
        self.memory = memory
        self.kill = kill
        self.format: PageFormat = PAE if pae else TWO_LEVEL
        self.linear = True  # until the first NEW_PGTABLE
        self.shadows: list[Shadow] = []
        self.current = Shadow(0)  # linear mode's blank shadow
        self.pfn_limit = memory.size >> abi.PAGE_SHIFT
        self.device_limit = self.pfn_limit  # pfns from pfn_limit up to here: device windows or gap
        self._kernel_address = 0  # where the Guest kernel's part of every space begins (INIT)
        self._stack = (0, 0)  # SET_STACK's esp1, and how many pages below it must stay mapped
        self.tlb_may_hold: set[int] = set()  # pages the emulator's TLB may hold since its last flush
        self.tlb_stale = False  # the emulator's TLB must be flushed before the Guest runs
        self.mmio_pages: set[int] = set()  # device windows the Launcher mapped (pfns)
        # The native path's copy of our answers, per shadow (fills.py): every change
        # to a shadow's entries below tells it (`_forget`).  The C hook answers a page
        # of the current shadow's `answered` without us, so those pages are always
        # in tlb_may_hold.
        self.answers: FillAnswers | None = None
        # The native path's hypercalls (native_hypercalls.py): C serves SET_PTE from what
        # `_tell_native` hands it, and logs what it did for `catch_up` to replay here.
        self.native: NativeHypercalls | None = None

    def keep_answers(self, answers: FillAnswers) -> None:
        """From now on, keep every answer a shadow gives in `answers`."""
        self.answers = answers
        answers.use(self.current.table)
        answers.limit_ram(self.pfn_limit)

    def let_native_set_ptes(self, native: NativeHypercalls) -> None:
        """From now on C serves SET_PTE too: tell it the shadows, replay what it did; and
        the pinned stack is C's copy, which a SET_STACK served in C changes."""
        native.pinned_stack = self._stack
        self.native = native
        if self.answers is not None:
            self.answers.order_with(native.logged_address)
        self._tell_native()

    def _tell_native(self) -> None:
        """What SET_PTE's rule needs, to C, wherever it changes here (after `catch_up`)."""
        if self.native is not None:
            self.native.shadows_are(self.format, self._kernel_address, self.pfn_limit, self.device_limit,
                                    [shadow.pgdir for shadow in self.shadows], self.current.table,
                                    [bool(shadow.ptes) for shadow in self.shadows])

    def catch_up(self) -> None:
        """Replay into the shadows the SET_PTEs and switches C served, in order: every
        entry point that reads or changes a shadow, or what the rules depend on, calls
        this first.  C already took each page (each switch: everything) out of the
        emulator's TLB, so none of them marks the TLB stale.  Between them fall the
        entries the fill hook walked, or adopted from another shadow's table
        (`_recorded_in_c`)."""
        records = self.answers.take_records() if self.answers is not None else []
        log = self.native.take_log() if self.native is not None else []
        if not (log or records):
            return
        done = 0
        for logged, table, page, pte in records:
            self._replay(log[done:logged])
            done = logged
            self._recorded_in_c(table, page, pte)
        self._replay(log[done:])
        self._tell_native()  # which shadows hold entries: C knows only what it did

    def _replay(self, log: list[tuple[int, int, int, int]]) -> None:
        for what, pgdir, vaddr, pte in log:
            if what == LOGGED_SWITCH:
                self._switched_in_c(pgdir)
            elif what == LOGGED_SET_PGD:
                self._drop_top_entry(pgdir, vaddr, forgotten_in_c=True)
            elif what == LOGGED_FLUSH_USER:
                self._drop_user_part(forgotten_in_c=True)
            elif what == LOGGED_FLUSH_ALL:
                self._cleared_in_c()
            elif self._update_shadows(pgdir, vaddr, pte, forgotten_in_c=True):
                self.tlb_may_hold.discard(vaddr & ~0xFFF)

    def _recorded_in_c(self, table: int, page: int, pte: int) -> None:
        """The fill hook answered `page` in shadow `table` from a walk of its own, or from
        the entries another shadow walked, found unchanged under this one's directory
        (fills.c): record the PTE as `demand_page`'s walk would have (it is checked,
        ACCESSED and DIRTY already set in the Guest's PTE as the access needed)."""
        shadow = self.shadows[table]
        shadow.ptes[page] = pte
        shadow.answered.add(page)

    def _unrecorded(self, shadow: Shadow, start: int, end: int) -> None:
        """The shadow holds no PTE in [start, end) any more (its pages dropped already):
        C may walk them (fills.c's `recorded` bits; a change to one page's record tells
        C through `_forget` or `set_pte`)."""
        if self.answers is not None:
            self.answers.unrecorded(shadow.table, start, end)

    def _switched_in_c(self, pgdir: int) -> None:
        """NEW_PGTABLE to a shadow we hold, served in C: the fill hook answers from it
        already and the emulator's TLB was flushed.  C served it only where `new_pgtable`
        would not pin the stack (the shadow holds entries) or would find nothing to do
        (a kernel-write answer for each stack page)."""
        self.current = next(s for s in self.shadows if s.pgdir == pgdir)
        self.tlb_may_hold = set(self.current.answered)

    @property
    def kernel_address(self) -> int:
        return self._kernel_address

    @kernel_address.setter
    def kernel_address(self, address: int) -> None:
        self.catch_up()
        self._kernel_address = address
        self._tell_native()

    def _forget(self, shadow: Shadow, page: int | None = None) -> None:
        """The shadow's entry for `page` (None: many) changed: its kept answers go."""
        if self.answers is None:
            return
        if page is None:
            shadow.answered.clear()
            self.answers.forget_all(shadow.table)
        else:
            # Even a page not in `answered`: the hook may have made an old answer for it
            # current again by re-reading the Guest's entries.
            shadow.answered.discard(page)
            self.answers.forget(shadow.table, page)

    def keep_kernel_write(self, vaddr: int) -> None:
        """The CPU itself may write a trap frame here (interrupts.c): if the current
        shadow allows a kernel write as it stands (DIRTY already set), keep the answer
        `translate` would give, as if the miss had come (no side effect on the Guest)."""
        self.catch_up()
        page = vaddr & ~0xFFF
        gpte = self.current.ptes.get(page)
        if (self.answers is None or gpte is None or not self._allows(gpte, True, False, False)
                or not gpte & abi.PTE_DIRTY):
            return
        self.tlb_may_hold.add(page)
        self.current.answered.add(page)
        self.answers.learn_kernel_write(page, self.format.page(gpte), self._permissions(gpte, True, False),
                                        self._entries_behind(page, gpte, walked=False)[1])

    def keep_where(self, vaddr: int) -> None:
        """Keep where `peek` finds vaddr's page now, in the current shadow and forgotten
        with its entry (interrupts.c checks the CPU's frame lands where ours would)."""
        gpa = self.peek(vaddr)
        if self.answers is None or gpa is None:
            return
        page = vaddr & ~0xFFF
        self.current.answered.add(page)
        self.answers.learn_where(page, gpa & ~0xFFF)

    def add_device_window(self, gpa: int, size: int) -> None:
        """The Launcher mapped a device's registers here: the Guest may map these pages
        (as MMIO, never RAM), and the ones between RAM and them (which then fault)."""
        self.catch_up()
        first, end = gpa >> abi.PAGE_SHIFT, (gpa + size) >> abi.PAGE_SHIFT
        self.mmio_pages.update(range(first, end))
        self.device_limit = max(self.device_limit, end)
        self._tell_native()

    @property
    def pgdir(self) -> int:
        """The current Guest directory (C may have switched: replayed first)."""
        self.catch_up()
        return self.current.pgdir

    # --- demand_page ------------------------------------------------------------------------
# tour:H.110 A page fault: from a TLB miss to demand_page
# The Guest's page tables live in its own RAM and the emulated CPU never walks them. Instead
# Unicorn's TLB is our shadow page table: whenever it has no translation for an address it
# calls the Switcher's TLB-fill hook ("The TLB-fill hook: a page fault leaves the Guest"),
# which asks `translate`.  If the current shadow already holds a validated entry that allows
# this access, that is the answer.  Otherwise `demand_page` walks the Guest's two-level
# tables, checks the entry (present, writable for a write, user for ring 3; never a 4 MiB
# page, never outside RAM, a device window only for loads and stores), sets ACCESSED and
# DIRTY in the Guest's entry as the CPU would, and remembers it.  The answer grants only the
# kind of access that missed, so a first write to a clean page comes back here to set DIRTY.
# If the walk fails, the answer is a #PF error code: the Switcher leaves the emulator, and
# the run loop gives the fault to the Guest ("A page fault, back to the Guest").
    def translate(self, vaddr: int, write: bool, fetch: bool, user: bool) -> tuple[int, int] | int:
        """Answer one TLB miss (§6.3): (physical page, permissions) or a #PF error code."""
        self.catch_up()
        page = vaddr & ~0xFFF
        gpte = self.current.ptes.get(page)
        walked = False
        if gpte is None or not self._allows(gpte, write, user, fetch) or (write and not gpte & abi.PTE_DIRTY):
            gpte, error = self.demand_page(vaddr, write, user, fetch)
            if gpte is None:
                return error
            walked = True
        self.tlb_may_hold.add(page)
        answer = self.format.page(gpte), self._permissions(gpte, write, fetch)
        if self.answers is not None and self.current.ptes.get(page) == gpte:
            # Only an answer from the shadow can be repeated: a device window's is
            # walked again every time.
            self.answers.keep_this_answer(*self._entries_behind(page, gpte, walked))
            self.current.answered.add(page)
        return answer

    def _entries_behind(self, page: int, gpte: int, walked: bool) -> tuple[int, int]:
        """The (directory entry, PTE) a two-level walk just checked for `page`: while the
        Guest's tables hold exactly these, the C hook may give the same answer again
        after forgetting (fills.c's re-read).  An answer from the shadow's record gives
        only its PTE (the hook keeps the directory entry an earlier walk checked with
        that same PTE).  (0, 0) where the hook may not re-read: PAE, linear mode."""
        if self.format is not TWO_LEVEL or self.linear:
            return 0, 0
        if not walked:
            return 0, gpte
        return self.memory.read_u32(self.current.pgdir + (page >> abi.PGDIR_SHIFT) * 4), gpte

    def demand_page(self, vaddr: int, write: bool, user: bool,
                    fetch: bool = False) -> tuple[int | None, int]:
        """Walk and check the Guest's tables; remember the PTE.

        (the Guest PTE, with ACCESSED/DIRTY set, 0) if fixed, else (None, #PF error code).

        On the native path the C fill hook applies the plain case of these rules itself
        (fills.c's `walk`, two-level format): a Python callback per first touch of a
        page (a fork's new address space, a table that forgot its answers) costs
        microseconds, and these are most of a fork's misses.  It answers only where
        the outcome is an answer (directory entry and PTE present and plain, the access
        allowed, the page in RAM), with what this walk would give, A/D set alike, and
        logs the entry for `catch_up` to record; everything else (a refusal and its
        error code, a kill, a device window, PAE) comes here.  This copy is the
        pure-Python Host's (--no-native); tests/test_native_walk.py runs Guests both
        ways and compares what they see.
        """
        error = abi.PF_WRITE * write | abi.PF_USER * user | self.format.fetch_error * fetch
        pte_gpa, gpte = self._walk(vaddr)
        if pte_gpa is None or not gpte & abi.PTE_PRESENT:
            return None, error
        if not self._allows(gpte, write, user, fetch):
            return None, error | 1  # present, but this access is not allowed
        if self._is_mmio(gpte):
            # A device window: straight to the device's registers (never to RAM, never run).
            if self.format.pfn(gpte) in self.mmio_pages and not fetch:
                return gpte | abi.PTE_DIRTY, 0
            return None, error
        if not self._valid(gpte):
            return None, error
        new = gpte | abi.PTE_ACCESSED | (abi.PTE_DIRTY if write else 0)
        if new != gpte and not self.linear:
            self.memory.write_u32(pte_gpa, new)
        page = vaddr & ~0xFFF
        self._forget(self.current, page)  # e.g. a read's answer, given before DIRTY was set
        self.current.ptes[page] = new
        return new, 0

    def _allows(self, gpte: int, write: bool, user: bool, fetch: bool) -> bool:
        """RW, USER and (PAE) NX, as a CPU with EFER.NXE set checks them."""
        return not ((write and not gpte & abi.PTE_RW) or (user and not gpte & abi.PTE_USER)
                    or (fetch and gpte & self.format.nx_mask))

    def _is_mmio(self, gpte: int) -> bool:
        """A page of a device's window: never mapped as RAM (§6.3 step 5)."""
        return not gpte & abi.PTE_PSE and self.pfn_limit <= self.format.pfn(gpte) < self.device_limit

    def _valid(self, gpte: int) -> bool:
        """No 4 MiB pages and nothing outside RAM (§6.3 step 6): else the Guest dies."""
        if gpte & abi.PTE_PSE or self.format.pfn(gpte) >= self.pfn_limit:
            self.kill("bad page table entry")
            return False
        return True

    @staticmethod
    def _permissions(gpte: int, write: bool, fetch: bool) -> int:
        """Grant only the class of access that missed (docs/design.md: 5x faster than RWX).

        Code is never writable through the TLB, so Guest stores don't hit QEMU's
        self-modifying-code path; data is writable only once the Guest PTE is dirty,
        so the first write to a clean page comes back to us to set DIRTY (a read
        fault maps it write-protected, as lguest's shadow does).
        """
        if fetch:
            return PERM_EXEC
        if write or (gpte & abi.PTE_DIRTY and gpte & abi.PTE_RW):
            return PERM_WRITE
        return PERM_READ

    def _walk(self, vaddr: int, quiet: bool = False) -> tuple[int | None, int]:
        """(gpa of the PTE, PTE) for vaddr, or (None, 0) if the directory entry is absent.

        A malformed directory entry kills the Guest, unless `quiet` (the Host only
        looking, e.g. for a trace) asks for no side effects.  Addresses the Host
        computes (esp + 8, eip - 1) wrap at 4 GiB, as the CPU's would.
        """
        vaddr &= 0xFFFFFFFF
        if self.linear:
            return 0, (vaddr & ~0xFFF) | LINEAR_PTE_FLAGS
        self.catch_up()
        pte_gpa, gpte, bad = self.format.walk(self.memory, self.current.pgdir, vaddr, self.pfn_limit, quiet)
        if bad and not quiet:
            self.kill(bad)
        return pte_gpa, gpte

    def peek(self, vaddr: int) -> int | None:
        """The gpa behind vaddr in RAM, or None; never kills, never sets A/D."""
        pte_gpa, gpte = self._walk(vaddr, quiet=True)
        gpa = self.format.page(gpte) | (vaddr & 0xFFF)
        if pte_gpa is None or not gpte & abi.PTE_PRESENT or not self.memory.ok(gpa, 1):
            return None
        return gpa

    def guest_pa(self, vaddr: int) -> int | None:
        """Follow a Guest-virtual address the Host must touch (kill `Bad address` if unmapped)."""
        pte_gpa, gpte = self._walk(vaddr)
        if pte_gpa is None or not gpte & abi.PTE_PRESENT:
            self.kill(f"Bad address {hex32(vaddr)}")
            return None
        return self.format.page(gpte) | (vaddr & 0xFFF)

    # --- the emulator's TLB ---------------------------------------------------------------
    def flush(self) -> None:
        """The emulator must forget every translation it has cached."""
        self.tlb_stale = True
        self.tlb_may_hold = set(self.current.answered)

    def _flush_if_held(self, start: int, end: int) -> None:
        """Flush only if the emulator may hold a translation in [start, end)."""
        if end - start == abi.PAGE_SIZE:
            held = start in self.tlb_may_hold  # one page: not a walk over every held one
        else:
            held = any(start <= page < end for page in self.tlb_may_hold)
        if not held and self.answers is not None:
            held = self.answers.may_hold(self.current.table, start, end)
        if held:
            self.flush()

    def take_tlb_flush(self) -> bool:
        """Must the emulator's TLB be flushed now?  (Asked, and answered, once.)"""
        stale, self.tlb_stale = self.tlb_stale, False
        return stale

    # --- what the hypercalls change ---------------------------------------------------------
    def holds(self, pgdir: int) -> bool:
        """Does a shadow hold this Guest directory (never in linear mode)?"""
        self.catch_up()
        return any(shadow.pgdir == pgdir for shadow in self.shadows)

    def new_pgtable(self, pgdir: int) -> None:
        """NEW_PGTABLE (§6.4): switch to the shadow of the Guest's directory at `pgdir`."""
        self.catch_up()
        if self.linear:
            self.linear = False
            self.shadows = []
        shadow = next((s for s in self.shadows if s.pgdir == pgdir), None)
        if shadow is None:
            shadow = self._new_shadow(pgdir)
        self.current = shadow
        if self.answers is not None:
            self.answers.use(shadow.table)
        self._tell_native()
        self.flush()
        if not shadow.ptes:
            self.pin_stack()

    def _new_shadow(self, pgdir: int) -> Shadow:
        """A free slot, or a random victim keeping its kernel part (identical in all)."""
        if len(self.shadows) < SHADOW_SLOTS:
            shadow = Shadow(pgdir, len(self.shadows))
            self.shadows.append(shadow)
        else:
            shadow = random.choice(self.shadows)
            shadow.pgdir = pgdir
            shadow.drop_user_part(self.kernel_address)
        self._unrecorded(shadow, 0, self.kernel_address if shadow.ptes else ADDRESS_SPACE)
        self._forget(shadow)
        if self.answers is not None and self.format is TWO_LEVEL:
            self.answers.watch_directory(shadow.table, pgdir)
        return shadow

    def flush_tlb(self, everything: int) -> None:
        """FLUSH_TLB (§6.5): 0 drops the current user part; else every shadow entirely."""
        self.catch_up()
        if everything:
            self.clear_all()
            return
        self._drop_user_part()
        self._tell_native()  # it may hold no entries now

    def _drop_user_part(self, forgotten_in_c: bool = False) -> None:
        """FLUSH_TLB 0's rule (hypercalls.c applies it too, having forgotten the answers
        and flushed the emulator's TLB itself)."""
        self.current.drop_user_part(self.kernel_address)
        if forgotten_in_c:
            self.current.answered.clear()
            self.tlb_may_hold = set()
        else:
            self._unrecorded(self.current, 0, self.kernel_address)
            self._forget(self.current)
            self.flush()

    def _cleared_in_c(self) -> None:
        """FLUSH_TLB(1) served in C (hypercalls.c): `clear_all`'s rule, C having forgotten
        every answer and flushed the emulator's TLB; the stack pages it pinned again by
        walking them follow in the log as entries it recorded (`_recorded_in_c`)."""
        for shadow in [*self.shadows, self.current]:
            shadow.ptes.clear()
            shadow.answered.clear()
        self.tlb_may_hold = set()

    def clear_all(self) -> None:
        """Throw away every shadow entry, kernel part included, and re-pin the stack
        (hypercalls.c applies it too, where it can pin the stack by walking in C)."""
        self.catch_up()
        for shadow in [*self.shadows, self.current]:
            shadow.ptes.clear()
            self._unrecorded(shadow, 0, ADDRESS_SPACE)
            self._forget(shadow)
        self._tell_native()
        self.flush()
        self.pin_stack()

# tour:H.120 SET_PTE, and a TLB gone stale
# The Guest tells us of every change to its tables (chapter G), here one entry.  Every
# shadow of that address space (of every space, for a kernel address, which all spaces
# share) drops the old entry, or takes the new one at once if the Guest marks it accessed,
# since it will be used soon.  The emulator may still hold the old translation in its TLB:
# if the page is one it may have filled since its last flush, the TLB is marked stale, and
# the run loop flushes it before the Guest runs again ("The run loop").  This module never
# touches the CPU itself.  On the native path most SET_PTEs never get here: C applies the
# same rule in the emulator and logs it, and `catch_up` replays the log into the shadows
# ("The common hypercalls, served in C").
    def set_pte(self, pgdir: int, vaddr: int, pte: int, pte_high: int = 0) -> None:
        """SET_PTE (§6.6): the Guest changed one PTE; pre-fill it if it was just used.

        A PAE Guest's PTE is 64 bits: its high half comes as a fourth argument.

        Only shadows are changed, so a PTE no shadow covers (a directory we do not
        track, or any before the first NEW_PGTABLE) is none of our business: it is
        not even checked, as in lguest.
        """
        self.catch_up()
        if vaddr >= abi.SWITCHER_ADDR:
            self.kill("attempt to set pte into Switcher pages")
            return
        if self.format.nx_mask:
            pte |= pte_high << 32
        if self._update_shadows(pgdir, vaddr, pte):
            page = vaddr & ~0xFFF
            self._flush_if_held(page, page + abi.PAGE_SIZE)
        self._tell_native()  # a shadow may hold no entries now

    def _update_shadows(self, pgdir: int, vaddr: int, pte: int, forgotten_in_c: bool = False) -> bool:
        """SET_PTE's rule for the shadows (hypercalls.c applies it too, and logs it for
        `catch_up`, having forgotten the page's answers itself): is the current shadow
        one of those it touched?"""
        page = vaddr & ~0xFFF
        kernel = vaddr >= self.kernel_address
        shadows = self.shadows if kernel else [s for s in self.shadows if s.pgdir == pgdir]
        if not shadows:
            return False
        prefill = bool(pte & (abi.PTE_ACCESSED | abi.PTE_DIRTY)) and pte & abi.PTE_PRESENT
        if prefill and (self._is_mmio(pte) or not self._valid(pte)):
            prefill = False
        for shadow in shadows:
            if prefill:
                shadow.ptes[page] = pte
            else:
                shadow.ptes.pop(page, None)
            shadow.answered.discard(page)
            if not forgotten_in_c and self.answers is not None:
                # As hypercalls.c does: forget the page's answers, hand over the record.
                self.answers.set_pte(shadow.table, page, pte & 0xFFFFFFFF if prefill else 0)
        return kernel or self.current in shadows

    def set_pgd(self, pgdir: int, index: int) -> None:
        """SET_PGD (§6.7).  We reject index 1024 (PAE: 4) too, where the original tested `>`."""
        self.catch_up()
        entries = self.format.top_entries
        if index >= entries:
            self.kill(f"Attempt to set pgd {index}/{entries}")
            return
        self._drop_top_entry(pgdir, index)
        self._tell_native()

    def _drop_top_entry(self, pgdir: int, index: int, forgotten_in_c: bool = False) -> None:
        """SET_PGD's rule (hypercalls.c applies it too, having forgotten the answers and,
        for the current shadow, flushed the emulator's whole TLB itself)."""
        start = index << self.format.top_shift
        end = start + (1 << self.format.top_shift)
        for shadow in self.shadows:
            if shadow.pgdir == pgdir:
                shadow.drop_range(start, end)
                if forgotten_in_c:
                    shadow.answered.clear()
                    if shadow is self.current:
                        self.tlb_may_hold = set()
                    continue
                self._unrecorded(shadow, start, end)
                self._forget(shadow)
                if shadow is self.current:
                    self._flush_if_held(start, end)

    # --- the kernel stack (§6.8) ----------------------------------------------------------------
    @property
    def stack_top(self) -> int:
        return (self._stack if self.native is None else self.native.pinned_stack)[0]

    @property
    def stack_pages(self) -> int:
        return (self._stack if self.native is None else self.native.pinned_stack)[1]

    def set_stack(self, top: int, pages: int) -> None:
        """SET_STACK: these pages below `top` must stay mapped and writable."""
        if self.native is None:
            self._stack = top, pages
        else:
            self.native.pinned_stack = top, pages
        self.pin_stack()

    def pin_stack(self) -> None:
        """Make sure the SET_STACK pages are mapped and writable (else `bad stack page`).

        The C hook keeps each kernel-write answer: a NEW_PGTABLE back to this shadow
        is served in C only while it holds them (fills.c `lguest_fills_stack_pinned`)."""
        for i in range(self.stack_pages):
            page = (self.stack_top - 1 - i * abi.PAGE_SIZE) & 0xFFFFFFFF
            if isinstance(self.translate(page, True, False, False), int):
                self.kill(f"bad stack page {hex32(page)}")
                return
            self.keep_kernel_write(page)
