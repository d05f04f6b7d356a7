"""Shadow page tables: the emulated TLB is lguest's shadow (page_tables.c, spec §6).

The Guest keeps ordinary two-level i386 page tables in its own RAM.  The CPU never
walks them: every TLB miss in the emulator asks `translate`, which is lguest's
`demand_page()`: walk the Guest's tables, check them, set ACCESSED/DIRTY, and
answer with the physical page and the permissions the access may have, or refuse
(the Switcher then reports a #PF with the error code we return).  Whatever the
Guest changes in its tables reaches the CPU only after it tells us with a
hypercall, which flushes the emulator's TLB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lguest import abi
from lguest.host.cpu import PERM_EXEC, PERM_READ, PERM_WRITE

if TYPE_CHECKING:
    from lguest.host.core import Guest

# What linear mode pretends the Guest's tables say (§6.2).
LINEAR_PGD = abi.PAGE_TABLE_FLAGS
LINEAR_PTE_FLAGS = abi.PTE_PRESENT | abi.PTE_RW


class PageTables:
    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.linear = True  # until the first NEW_PGTABLE
        self.pgdir = 0  # gpa of the Guest's current page directory
        self.pfn_limit = guest.mem.size >> abi.PAGE_SHIFT
        self.device_limit = self.pfn_limit

    # --- demand_page ------------------------------------------------------------------------
    def translate(self, vaddr: int, write: bool, fetch: bool, user: bool) -> tuple[int, int] | int:
        """Answer one TLB miss (§6.3): (physical page, permissions) or a #PF error code."""
        error = abi.PF_WRITE * write | abi.PF_USER * user
        pte_gpa, gpte = self._walk(vaddr)
        if pte_gpa is None or not gpte & abi.PTE_PRESENT:
            return error
        if (write and not gpte & abi.PTE_RW) or (user and not gpte & abi.PTE_USER):
            return error | 1  # present, but this access is not allowed
        pfn = gpte >> abi.PAGE_SHIFT
        if not gpte & abi.PTE_PSE and self.pfn_limit <= pfn < self.device_limit:
            return error  # MMIO: never mapped as RAM
        if gpte & abi.PTE_PSE or pfn >= self.pfn_limit:
            self.guest.kill("bad page table entry")
            return error
        new = gpte | abi.PTE_ACCESSED | (abi.PTE_DIRTY if write else 0)
        if new != gpte and not self.linear:
            self.guest.mem.write_u32(pte_gpa, new)
        return pfn << abi.PAGE_SHIFT, self._permissions(new, write, fetch)

    @staticmethod
    def _permissions(gpte: int, write: bool, fetch: bool) -> int:
        """Grant only the class of access that missed (DESIGN: 5x faster than RWX).

        Code is never writable through the TLB, so Guest stores don't hit QEMU's
        self-modifying-code path; data is writable only once the Guest PTE is dirty,
        so the first write to a clean page comes back to us to set DIRTY.
        """
        if fetch:
            return PERM_EXEC
        if write or (gpte & abi.PTE_DIRTY and gpte & abi.PTE_RW):
            return PERM_WRITE
        return PERM_READ

    def _walk(self, vaddr: int, quiet: bool = False) -> tuple[int | None, int]:
        """(gpa of the PTE, PTE) for vaddr, or (None, 0) if the directory entry is absent.

        A malformed directory entry kills the Guest, unless `quiet` (the Host only
        looking, e.g. for a trace) asks for no side effects.
        """
        if self.linear:
            return 0, (vaddr & ~0xFFF) | LINEAR_PTE_FLAGS
        mem = self.guest.mem
        pgd_gpa = self.pgdir + 4 * (vaddr >> abi.PGDIR_SHIFT)
        if quiet and not mem.ok(pgd_gpa, 4):
            return None, 0
        pgd = mem.read_u32(pgd_gpa)
        if not pgd & abi.PTE_PRESENT:
            return None, 0
        if pgd & 0xFFF & ~abi.PAGE_TABLE_FLAGS or pgd >> abi.PAGE_SHIFT >= self.pfn_limit:
            if not quiet:
                self.guest.kill("bad page directory entry")
            return None, 0
        pte_gpa = (pgd & ~0xFFF) + 4 * ((vaddr >> abi.PAGE_SHIFT) & 0x3FF)
        return pte_gpa, mem.read_u32(pte_gpa)

    def peek(self, vaddr: int) -> int | None:
        """The gpa behind vaddr in RAM, or None; never kills, never sets A/D."""
        pte_gpa, gpte = self._walk(vaddr, quiet=True)
        gpa = (gpte & ~0xFFF) | (vaddr & 0xFFF)
        if pte_gpa is None or not gpte & abi.PTE_PRESENT or not self.guest.mem.ok(gpa, 1):
            return None
        return gpa

    def guest_pa(self, vaddr: int) -> int | None:
        """Follow a Guest-virtual address the Host must touch (kill `Bad address` if unmapped)."""
        pte_gpa, gpte = self._walk(vaddr)
        if pte_gpa is None or not gpte & abi.PTE_PRESENT:
            self.guest.kill(f"Bad address {vaddr:#x}")
            return None
        return (gpte & ~0xFFF) | (vaddr & 0xFFF)

    # --- what the hypercalls change ---------------------------------------------------------
    def flush(self) -> None:
        """Forget every translation the emulator has cached."""
        self.guest.cpu.flush_tlb()

    def new_pgtable(self, pgdir: int) -> None:
        """NEW_PGTABLE (§6.4): switch to the Guest's page directory at `pgdir`."""
        self.linear = False
        self.pgdir = pgdir
        self.flush()

    def set_pte(self, pgdir: int, vaddr: int, pte: int) -> None:
        """SET_PTE (§6.6): the Guest changed one PTE."""
        if vaddr >= abi.SWITCHER_ADDR:
            self.guest.kill("attempt to set pte into Switcher pages")
            return
        self.flush()

    def set_pgd(self, pgdir: int, index: int) -> None:
        """SET_PGD (§6.7).  We reject index 1024 too, where the original tested `>`."""
        if index >= abi.PTRS_PER_PGD:
            self.guest.kill(f"Attempt to set pgd {index}/{abi.PTRS_PER_PGD}")
            return
        self.flush()

    def stack_page_ok(self, vaddr: int) -> bool:
        """Is this stack page present and writable for the Guest kernel (§6.8)?"""
        return not isinstance(self.translate(vaddr, True, False, False), int)
