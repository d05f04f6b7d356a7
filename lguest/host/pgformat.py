"""The two shapes a Guest's page tables can have (spec §6.3): i386's two levels, or PAE's three.

A Guest built without PAE keeps a page directory of 1024 32-bit entries, each
naming a page table of 1024 32-bit PTEs.  A PAE Guest keeps a page-directory-pointer
table (PDPT) of four 64-bit entries, 32-byte aligned, each naming a page middle
directory (PMD) of 512 entries, each naming a table of 512 64-bit PTEs whose top bit is
NX.  `PageTables` asks its format to walk and check; what it does with the PTE it
gets back (shadowing, A/D bits, MMIO, the kill for a bad PTE) is the same for both.

Host and Guest must agree on the format (the Launcher decides it from the kernel image
or the user's option).  A Guest in the other format is caught at NEW_PGTABLE: its
directory is misaligned for our format, or only the other format maps the code that
is switching to it (`mismatch`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from lguest import abi
from lguest.host.memory import GuestMemory, hex32

PTE_NX = 1 << 63
# PAE: a PDPT entry may carry only P; the pfn is bits 12..51 of any entry.
PDPT_FLAGS = abi.PTE_PRESENT
PAE_PFN_MASK = ((1 << 52) - 1) & ~0xFFF
PAE_PDPT_SHIFT = 30  # each PDPT entry maps 1 GiB
PAE_PMD_SHIFT = 21  # each PMD entry maps 2 MiB
PAE_PDPT_ALIGN = 32
PF_FETCH = 0x10  # #PF error code: the access was an instruction fetch (with EFER.NXE)


class Walk(NamedTuple):
    """Where a walk ended: (gpa of the PTE, the PTE), or no PTE and maybe a reason to kill."""

    pte_gpa: int | None
    pte: int = 0
    bad: str | None = None  # the kill message for a malformed upper-level entry


NO_PTE = Walk(None)


class Level(NamedTuple):
    """One upper level of a walk: which address bits index it, the flags its entries may
    carry, and what the Guest dies of when one of them is malformed."""

    shift: int
    index_mask: int
    allowed: int
    bad: str


@dataclass(frozen=True)
class PageFormat:
    """A format is data: its entry size, its upper levels, how a PTE is indexed."""

    name: str  # for messages: "non-PAE" or "PAE"
    top_entries: int  # PTRS_PER_PGD: SET_PGD's index must be below this
    top_shift: int  # how much address one top-level entry maps (log2)
    top_align: int  # NEW_PGTABLE's address is a multiple of this
    pfn_mask: int  # the bits of an entry that are the page frame's address
    nx_mask: int  # a PTE bit that forbids fetches (0: none)
    fetch_error: int  # the #PF error-code bit an instruction fetch sets (I/D; 0: none)
    entry_size: int  # bytes per entry, at every level
    levels: tuple[Level, ...]  # the upper levels, top first
    pte_index_mask: int  # PTEs per table, less one

    def page(self, entry: int) -> int:
        """The gpa of the page an entry names."""
        return entry & self.pfn_mask

    def pfn(self, entry: int) -> int:
        return (entry & self.pfn_mask) >> abi.PAGE_SHIFT

    def table(self, entry: int, allowed: int, pfn_limit: int) -> int | None:
        """The gpa of the table an upper-level entry names; None if it carries a flag
        outside `allowed` (PAE's high bits, NX included, count as flags) or leaves RAM."""
        page = entry & self.pfn_mask
        if entry & ~self.pfn_mask & ~allowed or page >> abi.PAGE_SHIFT >= pfn_limit:
            return None
        return page

    def walk(self, mem: GuestMemory, top: int, vaddr: int, pfn_limit: int, quiet: bool) -> Walk:
        """From the top-level table at `top` down to vaddr's PTE, checking each entry."""
        size, table = self.entry_size, top
        for level in self.levels:
            entry = _read(mem, table + size * ((vaddr >> level.shift) & level.index_mask), size, quiet)
            if entry is None or not entry & abi.PTE_PRESENT:
                return NO_PTE
            table = self.table(entry, level.allowed, pfn_limit)
            if table is None:
                return Walk(None, 0, level.bad)
        pte_gpa = table + size * ((vaddr >> abi.PAGE_SHIFT) & self.pte_index_mask)
        pte = _read(mem, pte_gpa, size, quiet)
        return NO_PTE if pte is None else Walk(pte_gpa, pte)


_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from


def _read(mem: GuestMemory, gpa: int, size: int, quiet: bool) -> int | None:
    """One entry (this is every TLB miss's walk: straight from RAM when in bounds).

    Out of bounds it is None, after the kill `mem.read` makes, unless `quiet`.
    """
    if gpa >= 0 and gpa + size <= mem.size:
        return (_U32 if size == 4 else _U64)(mem.ram, gpa)[0]
    if not quiet:
        mem.read(gpa, size)
    return None


BAD_PGD, BAD_PMD = "bad page directory entry", "bad page middle directory entry"
TWO_LEVEL = PageFormat("non-PAE", abi.PTRS_PER_PGD, abi.PGDIR_SHIFT, abi.PAGE_SIZE, 0xFFFFF000, 0, 0,
                       entry_size=4, pte_index_mask=0x3FF,
                       levels=(Level(abi.PGDIR_SHIFT, 0x3FF, abi.PAGE_TABLE_FLAGS, BAD_PGD),))
PAE = PageFormat("PAE", 4, PAE_PDPT_SHIFT, PAE_PDPT_ALIGN, PAE_PFN_MASK, PTE_NX, PF_FETCH,
                 entry_size=8, pte_index_mask=0x1FF,
                 levels=(Level(PAE_PDPT_SHIFT, 0x3, PDPT_FLAGS, BAD_PGD),
                         Level(PAE_PMD_SHIFT, 0x1FF, abi.PAGE_TABLE_FLAGS, BAD_PMD)))


def mismatch(fmt: PageFormat, mem: GuestMemory, top: int, eip: int, pfn_limit: int) -> str | None:
    """Why the table at `top` is in the other format than `fmt`, or None if nothing says so.

    Either `top` is aligned for the other format only, or our walk of the
    Guest's running code finds nothing while the other format's finds a PTE: the
    Guest would die of an unexplained page fault on its very next instruction.
    """
    other = PAE if fmt is TWO_LEVEL else TWO_LEVEL
    wrong = f"{other.name} page tables in a Guest run as {fmt.name} (NEW_PGTABLE {hex32(top)}"
    if top % other.top_align == 0 and top % fmt.top_align:
        return f"{wrong} is not page aligned)"  # only a PDPT may sit inside a page
    if top % fmt.top_align:
        return f"NEW_PGTABLE {hex32(top)} is not {fmt.top_align}-byte aligned"  # in no format
    if _maps(fmt, mem, top, eip, pfn_limit) or not _maps(other, mem, top, eip, pfn_limit):
        return None
    return f"{wrong} maps the running code at {hex32(eip)} only as {other.name})"


def _maps(fmt: PageFormat, mem: GuestMemory, top: int, vaddr: int, pfn_limit: int) -> bool:
    pte_gpa, pte, _ = fmt.walk(mem, top, vaddr & 0xFFFFFFFF, pfn_limit, quiet=True)
    return pte_gpa is not None and bool(pte & abi.PTE_PRESENT) and fmt.pfn(pte) < pfn_limit
