"""TLB misses of pages no answer covers yet, walked in C (fills.c's `walk`: the plain
case of `PageTables.demand_page`), against the pure-Python Host's walk (--no-native):
the Guest must see the same A/D bits in its PTEs, the same page faults (error codes,
cr2), the same device registers and the same kills, whichever walked."""

from __future__ import annotations

import pytest
from conftest import lguest, run_both_ways, symbol
from test_paging import EXTRA, FAIL, TOUCH_16_PAGES, TWO_SPACES

# Point `vaddr` at `pte` silently, then drop every shadow (FLUSH_TLB(1)): the next miss
# finds nothing recorded, and on the native path C walks it.
REMAP = """
.macro REMAP vaddr, pte
	movl $page_table, %ebx
	movl \\vaddr, %ecx
	movl \\pte, %edx
	call set_pte_in
	HCALL LHCALL_FLUSH_TLB, $1
.endm
"""

# The #PF handler logs (cr2, error code), maps the page with `fix_pte` (SET_PTE) and
# returns to run the access again; a fault on END_PAGE powers off.
WALK_GUEST = EXTRA + REMAP + """
	.set END_PAGE, 0x30f000
	.data
fix_pte: .long 0
faults:	.long 0
log:	.space 8 * 16
seen:	.space 4 * 16
	.text
on_pf:
	pushl %eax
	pushl %ebx
	pushl %ecx
	pushl %edx
	pushl %esi
	movl faults, %eax
	movl lguest_data + LD_CR2, %ecx
	movl %ecx, log(,%eax,8)
	movl 20(%esp), %edx
	movl %edx, log + 4(,%eax,8)
	incl faults
	andl $0xfffff000, %ecx
	cmpl $END_PAGE, %ecx
	je finish
	movl $page_table, %ebx
	movl fix_pte, %edx
	call set_pte_in
	HCALL LHCALL_SET_PTE, $page_dir, %ecx, %edx
	popl %esi
	popl %edx
	popl %ecx
	popl %ebx
	popl %eax
	addl $4, %esp
	jmp lguest_iret
finish:	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 14, on_pf
	/* A clean page: a read sets ACCESSED, then a write (after a read-only answer) DIRTY. */
	movl $0x11111111, frames
	REMAP $0x300000, $frames+0x07
	movl 0x300000, %eax
	movl %eax, seen
	movl page_table + 0x300 * 4, %eax
	movl %eax, seen + 4
	movl $0x22, 0x300004
	movl page_table + 0x300 * 4, %eax
	movl %eax, seen + 8
	/* A read-only page, written by the kernel. */
	REMAP $0x301000, $frames+4096+0x25
	movl 0x301000, %eax
	movl $frames + 4096 + 0x67, fix_pte
	movl $0x33, 0x301008
	/* Not present. */
	REMAP $0x302000, $frames+8192+0x66
	movl $frames + 8192 + 0x67, fix_pte
	movl 0x302010, %eax
	/* A device window: a load reaches the console's registers, a fetch is refused. */
	REMAP $0x303000, $0x2100063
	movw 0x303000 + 18, %ax
	movw %ax, seen + 12
	movb $0xc3, frames + 3 * 4096		/* ret */
	movl $frames + 3 * 4096 + 0x67, fix_pte
	call 0x303000
	/* From ring 3: a supervisor page, a read-only one, a clean one, then the end. */
	REMAP $0x304000, $frames+4*4096+0x23
	REMAP $0x305000, $frames+5*4096+0x25
	REMAP $0x306000, $frames+6*4096+0x05
	REMAP $END_PAGE, $0
	movl $0x66666666, frames + 6 * 4096
	TO_USER user
user:
	movl $frames + 4 * 4096 + 0x67, fix_pte
	movl 0x304000, %eax
	movl $frames + 5 * 4096 + 0x67, fix_pte
	movl $1, 0x305000
	movl 0x306000, %eax
	movl %eax, seen + 16
	movl END_PAGE, %eax
	jmp .
"""

PAGE = 4096


def guest_view(guest, elf, names_and_sizes) -> list[bytes]:
    """What the Guest can see of these symbols' memory."""
    return [guest.memory.read(symbol(elf, name), size) for name, size in names_and_sizes]


def test_the_walk_in_c_gives_what_the_python_walk_gives(asm_guest) -> None:
    elf = asm_guest(WALK_GUEST)
    native, python = run_both_ways(elf)
    shown = [("seen", 4 * 16), ("log", 8 * 16), ("faults", 4), ("page_table", PAGE), ("frames", 8 * PAGE)]
    assert guest_view(native, elf, shown) == guest_view(python, elf, shown)
    frames = symbol(elf, "frames")
    seen = [python.memory.read_u32(symbol(elf, "seen") + 4 * i) for i in range(5)]
    assert seen[:3] == [0x11111111, frames | 0x27, frames | 0x67]  # A after the read, D after the write
    assert seen[3] & 0xFFFF == 2 and seen[4] == 0x66666666  # num_queues; a clean user page read
    log = [python.memory.read_u32(symbol(elf, "log") + 4 * i) for i in range(12)]
    assert list(zip(log[::2], log[1::2], strict=True)) == [
        (0x301008, 3), (0x302010, 0), (0x303000, 0), (0x304000, 5), (0x305000, 7), (0x30F000, 4)]
    assert native.switcher.fill_answers.walked >= 4  # the clean page twice, the user pages
    assert native.switcher.python_fills < python.switcher.python_fills


SET_PGD_1 = "\tHCALL LHCALL_SET_PGD, $page_dir, $1"


@pytest.mark.parametrize(("setup", "reason"), [
    ("REMAP $0x300000, $0x3000e7", "bad page table entry"),  # PSE/PAT
    ("REMAP $0x300000, $0x8000067", "bad page table entry"),  # beyond RAM and devices
    ("movl $frames + 0x67, pt2\n\tmovl $pt2 + 0x0e7, page_dir + 4\n" + SET_PGD_1, "bad page directory entry"),
    ("movl $0x3000067, page_dir + 4\n" + SET_PGD_1, "bad page directory entry"),
], ids=["pte PSE", "pte beyond RAM", "pde PSE", "pde beyond RAM"])
def test_what_the_walk_in_c_leaves_to_python_kills_alike(asm_guest, setup: str, reason: str) -> None:
    """An entry C will not answer goes to Python, which walks again and kills."""
    vaddr = "0x300000" if "REMAP" in setup else "0x400000"
    elf = asm_guest(EXTRA + REMAP + f"""
test_main:
	INIT
	call setup_user_paging
	{setup}
	movl {vaddr}, %eax
	POWEROFF
""")
    runs = [lguest(*native, "32", str(elf)) for native in ((), ("--no-native",))]
    assert [(run.status, run.reason) for run in runs] == [(1, reason)] * 2


def test_two_spaces_sharing_kernel_tables_walk_alike(asm_guest) -> None:
    """A's kernel pages are walked (a read, then a write), B's shadow is new: its kernel
    pages are adopted or walked, its private page walked; the same A/D bits and records
    both ways."""
    elf = asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	andl $~0x60, kernel_pt			/* clean: the walks set A and D */
	andl $~0x60, user_a
	andl $~0x60, user_b
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	call touch_16_pages
	cmpl $0xc0c0, 0xc0000000
	jne fail
	movl $1, 0xc0000004
	cmpl $0xaaaa, 0x400000
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	call touch_16_pages
	cmpl $0xc0c0, 0xc0000000
	jne fail
	movl $2, 0xc0000008
	cmpl $0xbbbb, 0x400000
	jne fail
	movl $3, 0x400004
	POWEROFF
""" + TOUCH_16_PAGES + FAIL)
    guests = run_both_ways(elf)
    shown = [("kernel_pt", 4), ("user_a", 4), ("user_b", 4), ("frames", 3 * PAGE)]
    assert guest_view(guests[0], elf, shown) == guest_view(guests[1], elf, shown)
    frames = symbol(elf, "frames")
    assert guests[1].memory.read_u32(symbol(elf, "kernel_pt")) == frames | 0x67
    assert guests[1].memory.read_u32(symbol(elf, "user_a")) == (frames + PAGE) | 0x27
    assert guests[1].memory.read_u32(symbol(elf, "user_b")) == (frames + 2 * PAGE) | 0x67
    records = []
    for guest in guests:
        guest.pages.catch_up()
        records.append([(s.pgdir, s.ptes) for s in guest.pages.shadows])
    assert records[0] == records[1]
    assert guests[0].switcher.fill_answers.walked >= 4


def test_the_record_answers_before_any_walk(asm_guest) -> None:
    """Where the shadow records an entry, `translate` answers from it and walks only if
    it does not allow the access; a walk then forgets what the page's old entry
    answered.  Entries changed silently show it: C must answer as the record says
    (a kernel page's record outlives FLUSH_TLB(0); a read answered from a read-only
    entry is not repeated once a write walked a new one; an entry SET_PTE recorded is
    the one that answers, also after C's table forgot it)."""
    elf = asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	movl $0xdddd, frames + 3 * 4096
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0xc0c0, 0xc0000000
	jne fail
	HCALL LHCALL_FLUSH_TLB, $0
	movl $frames + 3 * 4096 + 0x67, kernel_pt	/* silently */
	cmpl $0xc0c0, 0xc0000000			/* the record's */
	jne fail
	movl $frames + 0x67, kernel_pt
	HCALL LHCALL_SET_PTE, $dir_a, $0xc0000000, $frames + 0x67
	movl $frames + 4096 + 0x25, user_a		/* read-only, recorded */
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames + 4096 + 0x25
	cmpl $0xaaaa, 0x400000
	jne fail
	movl $frames + 3 * 4096 + 0x27, user_a		/* writable elsewhere, silently */
	movl $0x1234, 0x400004				/* the record refuses: a walk */
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0xdddd, 0x400000				/* the walked entry's page */
	jne fail
	cmpl $0x1234, 0x400004
	jne fail
	movl $frames + 4096 + 0x67, user_a		/* recorded ... */
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames + 4096 + 0x67
	movl $frames + 3 * 4096 + 0x67, user_a		/* ... and changed silently */
	cmpl $0xaaaa, 0x400000				/* the record's */
	jne fail
	HCALL LHCALL_SET_PGD, $dir_a, $2		/* C's table forgets; the record stays */
	cmpl $0xaaaa, 0x400000
	jne fail
	POWEROFF
""" + FAIL)
    guests = run_both_ways(elf)
    shown = [("kernel_pt", 4), ("user_a", 4), ("frames", 4 * PAGE)]
    assert guest_view(guests[0], elf, shown) == guest_view(guests[1], elf, shown)
    assert guests[0].switcher.fill_answers.walked >= 1


def slot_of(page: int) -> int:
    """fills.c's slot for a page (a multiplicative hash)."""
    return (((page >> 12) * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> (64 - 13)


COLLIDING = 0x1D6D000  # shares 0x300000's slot in every table


def test_a_record_c_lost_the_slot_of_is_still_the_record(asm_guest) -> None:
    """A page whose slot another page took keeps its record in the page tables: C must
    leave it to Python (the page's `recorded` bit), which answers from the record even
    where the Guest changed its PTE silently."""
    assert slot_of(COLLIDING) == slot_of(0x300000)
    elf = asm_guest(EXTRA + f"""
test_main:
	INIT
	call setup_user_paging
	movl $pt2 + 0x67, page_dir + ({COLLIDING} >> 22) * 4
	movl $frames + 5 * 4096 + 0x67, pt2 + (({COLLIDING} >> 12) & 0x3ff) * 4
	HCALL LHCALL_FLUSH_TLB, $1
	movl $0x1111, frames
	movl $0x2222, frames + 4096
	movl $0x5555, frames + 5 * 4096
	movl $page_table, %ebx
	movl $0x300000, %ecx
	movl $frames + 0x67, %edx
	call set_pte_in
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $frames + 0x67
	cmpl $0x1111, 0x300000
	jne fail
	cmpl $0x5555, {COLLIDING}			/* walked: its slot was 0x300000's */
	jne fail
	movl $page_table, %ebx
	movl $0x300000, %ecx
	movl $frames + 4096 + 0x67, %edx
	call set_pte_in				/* silently */
	HCALL LHCALL_NEW_PGTABLE, $page_dir		/* the same space: only the TLB goes */
	cmpl $0x1111, 0x300000			/* the record's */
	jne fail
	POWEROFF
""" + FAIL)
    native, _ = run_both_ways(elf)
    assert native.switcher.fill_answers.walked >= 1
