"""Shadow paging (spec §6) and segments (§5), from real guests, hostile ones included."""

from __future__ import annotations

import pytest
from conftest import lguest, make_guest, mode, run_both_ways

POWER_OFF = (0, "CRASH: Power down")
FAIL = """
fail:	SHUTDOWN $failed
failed:	.asciz "check failed"
"""

# A second page table and page directories to play with, and helpers in assembly:
# set_pte_in(pt in %ebx, vaddr in %ecx, pte in %edx) stores a PTE silently.  The tests
# that run in both page-table formats (the `pae` fixture) write `SETUP_PAGING`, `PT`
# (the table mapping the first 4 MiB) and `PTE_BYTES`; `paging(pae)` defines them.
EXTRA = r"""
	.ifndef PAE
	.set PAE, 0
	.endif
	.if PAE
	.set PT, pae_pt
	.set PTE_BYTES, 8
	.else
	.set PT, page_table
	.set PTE_BYTES, 4
	.endif
.macro SETUP_PAGING
	.if PAE
	call setup_pae_paging
	.else
	call setup_user_paging
	.endif
.endm
	.bss
	.p2align 12
pt2:	.space 4096
dir_a:	.space 4096
dir_b:	.space 4096
frames:	.space 4096 * 8
	.text
/* Point 0x300000 at another PTE, silently, then drop every shadow (FLUSH_TLB(1)). */
.macro REMAP_300000 pte
	movl $PT, %ebx
	movl $0x300000, %ecx
	movl \pte, %edx
	call set_pte_in
	HCALL LHCALL_FLUSH_TLB, $1
.endm
/* Store PTE %edx for vaddr %ecx in the page table at %ebx (index from bits 12-21). */
set_pte_in:
	pushl %eax
	movl %ecx, %eax
	shrl $12, %eax
	andl $0x3ff, %eax
	movl %edx, (%ebx,%eax,PTE_BYTES)
	.if PAE
	movl $0, 4(%ebx,%eax,8)			/* (PAE's two tables are side by side) */
	.endif
	popl %eax
	ret
"""


def paging(pae: bool) -> str:
    """EXTRA for the page-table format of the `pae` fixture."""
    return f"\t.set PAE, {int(pae)}\n" + EXTRA


def run_ok(elf, pae: bool = False) -> None:
    run = lguest(*mode(pae), "32", str(elf))
    assert (run.status, run.reason) == POWER_OFF, run.stderr


def kill_reason(elf, pae: bool = False) -> str:
    run = lguest(*mode(pae), "32", str(elf))
    assert run.status == 1
    return run.reason


# --- malformed Guest page tables kill (§6.3) ---------------------------------------------------

def test_directory_entry_with_extra_flags(asm_guest) -> None:
    assert kill_reason(asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	movl $pt2 + 0x0e7, page_dir + 4		/* PSE: 4 MiB pages are not allowed */
	HCALL LHCALL_SET_PGD, $page_dir, $1
	movl 0x400000, %eax
""")) == "bad page directory entry"


def test_directory_entry_outside_ram(asm_guest) -> None:
    assert kill_reason(asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	movl $0x3000067, page_dir + 4		/* page table at 48 MiB: beyond 32 MiB of RAM */
	HCALL LHCALL_SET_PGD, $page_dir, $1
	movl 0x400000, %eax
""")) == "bad page directory entry"


@pytest.mark.parametrize("pte", ["0x3000e7", "0x8000067", "0xfffff067"],
                         ids=["4 MiB page", "128 MiB: no RAM, no device", "top of memory"])
def test_malformed_pte(asm_guest, pte: str, pae: bool) -> None:
    """No 4 MiB pages, and no Guest PTE may reach memory outside Guest RAM."""
    assert kill_reason(asm_guest(paging(pae) + f"""
test_main:
	INIT
	SETUP_PAGING
	REMAP_300000 ${pte}
	movl $1, 0x300000
"""), pae) == "bad page table entry"


def test_set_pte_of_a_bad_entry_kills_at_once_when_prefilled(asm_guest) -> None:
    """SET_PTE with ACCESSED set is validated and installed immediately (§6.6)."""
    assert kill_reason(asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $0x8000067
	POWEROFF
""")) == "bad page table entry"


def test_pte_pointing_above_ram_is_never_ram(asm_guest, pae: bool) -> None:
    """The 1 MiB above RAM is not RAM and not a device: it faults (§6.3 step 5)."""
    run_ok(asm_guest(paging(pae) + """
pf_handler:
	cmpl $0x300010, lguest_data + LD_CR2
	jne fail
	POWEROFF
test_main:
	INIT
	SETUP_PAGING
	GATE 14, pf_handler
	REMAP_300000 $0x2000067			/* the gap just above 32 MiB of RAM */
	movl 0x300010, %eax
	jmp fail
""" + FAIL), pae)


# --- permissions and error codes (§6.3 step 4) -------------------------------------------------

PF_CHECK = """
pf_handler:
	movl (%esp), %eax
	cmpl expected, %eax
	jne fail
	movl lguest_data + LD_CR2, %eax
	cmpl expected_cr2, %eax
	jne fail
	POWEROFF
	.data
expected: .long 0
expected_cr2: .long 0
	.text
""" + FAIL


def pf_guest(asm_guest, pae: bool, pte: int, access: str, err: int, user: bool = False):
    to_user = "TO_USER user\nuser:" if user else ""
    return asm_guest(paging(pae) + PF_CHECK + f"""
test_main:
	INIT
	SETUP_PAGING
	GATE 14, pf_handler
	REMAP_300000 ${pte:#x}
	movl ${err}, expected
	movl $0x300008, expected_cr2
	{to_user}
	{access}
	jmp .
""")


def test_write_to_read_only_page_from_ring1(asm_guest, pae: bool) -> None:
    run_ok(pf_guest(asm_guest, pae, 0x300065, "movl $1, 0x300008", 3), pae)


def test_write_to_read_only_page_from_ring3(asm_guest, pae: bool) -> None:
    run_ok(pf_guest(asm_guest, pae, 0x300065, "movl $1, 0x300008", 7, user=True), pae)


def test_user_read_of_supervisor_page(asm_guest, pae: bool) -> None:
    run_ok(pf_guest(asm_guest, pae, 0x300063, "movl 0x300008, %eax", 5, user=True), pae)


def test_not_present_read_and_write(asm_guest, pae: bool) -> None:
    run_ok(pf_guest(asm_guest, pae, 0x300066, "movl 0x300008, %eax", 0), pae)
    run_ok(pf_guest(asm_guest, pae, 0x300066, "movl %eax, 0x300008", 6, user=True), pae)


# --- accessed and dirty (§6.3 steps 7-10) ---------------------------------------------------

def test_accessed_and_dirty_bits_are_written_back(asm_guest, pae: bool) -> None:
    run_ok(asm_guest(paging(pae) + """
test_main:
	INIT
	SETUP_PAGING
	REMAP_300000 $0x300007			/* present, rw, user; not accessed, not dirty */
	movl 0x300000, %eax			/* a read: accessed, still clean */
	movl PT + 0x300 * PTE_BYTES, %eax
	cmpl $0x300027, %eax
	jne fail
	movl $5, 0x300004			/* the first write faults again: now dirty */
	movl PT + 0x300 * PTE_BYTES, %eax
	cmpl $0x300067, %eax
	jne fail
	POWEROFF
""" + FAIL), pae)


# --- what the hypercalls change ------------------------------------------------------------

def test_set_pte_remaps_and_a_silent_change_stays_stale(asm_guest) -> None:
    """Changing a PTE without telling the Host keeps the old mapping until a flush."""
    run_ok(asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	movl $0x11111111, frames
	movl $0x22222222, frames + 4096
	movl $page_table, %ebx
	movl $0x300000, %ecx
	movl $frames + 0x67, %edx
	call set_pte_in
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $frames + 0x67
	cmpl $0x11111111, 0x300000
	jne fail
	movl $page_table, %ebx			/* (HCALL clobbers ebx, ecx, edx, esi) */
	movl $0x300000, %ecx
	movl $frames + 4096 + 0x67, %edx
	call set_pte_in				/* silently */
	cmpl $0x11111111, 0x300000		/* the shadow still has the old page */
	jne fail
	HCALL LHCALL_FLUSH_TLB, $0		/* the user part is dropped */
	cmpl $0x22222222, 0x300000
	jne fail
	movl $page_table, %ebx
	movl $0x300000, %ecx
	movl $frames + 0x67, %edx
	call set_pte_in
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $frames + 0x67
	cmpl $0x11111111, 0x300000
	jne fail
	POWEROFF
""" + FAIL))


def test_a_silent_change_is_seen_after_a_full_flush(asm_guest) -> None:
    """FLUSH_TLB(1) drops every shadow: a PTE or a directory entry changed silently is
    walked afresh, even where the native path re-reads the Guest's entries instead of
    asking Python (fills.c), and an unchanged one still answers."""
    run_ok(asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	movl $0x11111111, frames
	movl $0x22222222, frames + 4096
	movl $0x33333333, frames + 8192
	movl $0x44444444, 0x301000
	REMAP_300000 $frames + 0x67
	cmpl $0x11111111, 0x300000
	jne fail
	cmpl $0x44444444, 0x301000
	jne fail
	REMAP_300000 $frames + 4096 + 0x67	/* a new PTE */
	cmpl $0x22222222, 0x300000
	jne fail
	cmpl $0x44444444, 0x301000		/* its neighbour, unchanged */
	jne fail
	/* A new directory entry: pt2, a copy of the table but for 0x300000's third frame. */
	movl $page_table, %esi
	movl $pt2, %edi
	movl $1024, %ecx
	rep movsl
	movl $pt2, %ebx
	movl $0x300000, %ecx
	movl $frames + 8192 + 0x67, %edx
	call set_pte_in
	movl $pt2 + 0x67, page_dir
	HCALL LHCALL_FLUSH_TLB, $1
	cmpl $0x33333333, 0x300000
	jne fail
	movl $page_table + 0x67, page_dir	/* and back, silently: the old entry is stale */
	cmpl $0x33333333, 0x300000
	jne fail
	HCALL LHCALL_FLUSH_TLB, $1
	cmpl $0x22222222, 0x300000
	jne fail
	POWEROFF
""" + FAIL))


def test_native_fills_re_read_the_guest_after_a_full_flush(asm_guest) -> None:
    """After FLUSH_TLB(1) the C hook answers pages whose Guest entries are unchanged
    by re-reading them, without asking Python again (counts, both directions)."""
    elf = asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	movl $32, %edi
1:	movl $0x200000, %esi			/* touch 16 pages, then drop every shadow */
2:	movl (%esi), %eax
	addl $4096, %esi
	cmpl $0x210000, %esi
	jne 2b
	HCALL LHCALL_FLUSH_TLB, $1
	decl %edi
	jnz 1b
	POWEROFF
""" + FAIL)
    native = make_guest(elf, native=True)
    assert native.run().reason == POWER_OFF[1]
    assert native.switcher.fill_answers.reread >= 16 * 30
    python = make_guest(elf, native=False)
    assert python.run().reason == POWER_OFF[1]
    assert python.switcher.python_fills > native.switcher.python_fills + 16 * 30


def test_set_pgd_replaces_a_whole_table(asm_guest) -> None:
    run_ok(asm_guest(EXTRA + """
test_main:
	INIT
	call setup_user_paging
	movl $0x33333333, frames
	movl $pt2, %ebx
	movl $0x400000, %ecx
	movl $frames + 0x67, %edx
	call set_pte_in
	movl $pt2 + 0x67, page_dir + 4
	HCALL LHCALL_SET_PGD, $page_dir, $1
	cmpl $0x33333333, 0x400000
	jne fail
	movl $0, page_dir + 4
	HCALL LHCALL_SET_PGD, $page_dir, $1
	GATE 14, gone
	movl 0x400000, %eax
	jmp fail
gone:	POWEROFF
""" + FAIL))


# Two address spaces sharing the first 4 MiB (identity) and the kernel half at 0xC0000000.
TWO_SPACES = EXTRA + """
	.bss
	.p2align 12
kernel_pt: .space 4096
user_a:	.space 4096
user_b:	.space 4096
	.text
make_spaces:
	movl $page_table + 0x67, dir_a
	movl $page_table + 0x67, dir_b
	movl $kernel_pt + 0x67, dir_a + 768 * 4
	movl $kernel_pt + 0x67, dir_b + 768 * 4
	movl $user_a + 0x67, dir_a + 1 * 4	/* 0x400000: private in each */
	movl $user_b + 0x67, dir_b + 1 * 4
	movl $frames + 0x67, kernel_pt		/* 0xC0000000 -> frame 0 */
	movl $frames + 4096 + 0x67, user_a	/* 0x400000 in A -> frame 1 */
	movl $frames + 8192 + 0x67, user_b	/* 0x400000 in B -> frame 2 */
	movl $0xaaaa, frames + 4096
	movl $0xbbbb, frames + 8192
	movl $0xc0c0, frames
	ret
"""


def test_kernel_half_changes_reach_every_shadow(asm_guest) -> None:
    run_ok(asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	cmpl $0xc0c0, 0xc0000000
	jne fail
	cmpl $0xbbbb, 0x400000
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0xaaaa, 0x400000
	jne fail
	movl $frames + 12288 + 0x67, kernel_pt	/* the kernel page moves */
	movl $0xdddd, frames + 12288
	HCALL LHCALL_SET_PTE, $dir_a, $0xc0000000, $frames + 12288 + 0x67
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	cmpl $0xdddd, 0xc0000000		/* B's shadow saw it too */
	jne fail
	POWEROFF
""" + FAIL))


# Read 16 pages of the first 4 MiB, which every space in TWO_SPACES maps alike.
TOUCH_16_PAGES = """
touch_16_pages:
	movl $0x200000, %esi
1:	movl (%esi), %eax
	addl $4096, %esi
	cmpl $0x210000, %esi
	jne 1b
	ret
"""


def test_shared_kernel_table_changed_silently_seen_after_a_full_flush(asm_guest) -> None:
    """Two spaces share the kernel's page table (and the first 4 MiB's): what one space
    walked, the native path's C hook answers in the other from the same Guest entries
    (fills.c's adoption), never a private page, and never an entry changed silently
    (FLUSH_TLB(1) then shows the new one in both spaces).  Both paths see the same."""
    elf = asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	call touch_16_pages
	cmpl $0xc0c0, 0xc0000000
	jne fail
	cmpl $0xaaaa, 0x400000
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_b		/* a new shadow: nothing walked in it */
	call touch_16_pages
	cmpl $0xc0c0, 0xc0000000
	jne fail
	cmpl $0xbbbb, 0x400000			/* private: A's answer is not B's */
	jne fail
	movl $0xdddd, frames + 12288
	movl $frames + 12288 + 0x67, kernel_pt	/* silently */
	HCALL LHCALL_FLUSH_TLB, $1
	cmpl $0xdddd, 0xc0000000
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0xdddd, 0xc0000000
	jne fail
	cmpl $0xaaaa, 0x400000
	jne fail
	POWEROFF
""" + TOUCH_16_PAGES + FAIL)
    native = make_guest(elf, native=True)
    assert native.run().reason == POWER_OFF[1]
    assert native.switcher.fill_answers.adopted >= 16 + 1
    python = make_guest(elf, native=False)
    assert python.run().reason == POWER_OFF[1]
    assert python.switcher.python_fills > native.switcher.python_fills + 16


def test_adopted_entries_are_recorded_as_if_walked(asm_guest) -> None:
    """What the C hook adopted from another shadow's table, the page tables record in
    that shadow as the walk would have (which shadows hold entries decides whether a
    NEW_PGTABLE pins the stack): the same records both ways."""
    elf = asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	call touch_16_pages
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	call touch_16_pages
	cmpl $0xc0c0, 0xc0000000
	jne fail
	POWEROFF
""" + TOUCH_16_PAGES + FAIL)
    records = []
    for guest in run_both_ways(elf):
        guest.pages.catch_up()
        records.append([(s.pgdir, s.ptes) for s in guest.pages.shadows])
    assert records[0] == records[1]
    assert len(records[0][-1][1]) > 16


def test_more_address_spaces_than_shadow_slots(asm_guest) -> None:
    """Eight directories, one private page each, visited round and round: evictions are safe."""
    run_ok(asm_guest(EXTRA + """
	.bss
	.p2align 12
dirs:	.space 4096 * 8
pts:	.space 4096 * 8
	.text
test_main:
	INIT
	call setup_user_paging
	xorl %esi, %esi
1:	movl %esi, %eax
	shll $12, %eax
	leal dirs(%eax), %edi			/* directory esi */
	movl $page_table + 0x67, (%edi)
	leal pts(%eax), %ebx
	leal 0x67(%ebx), %edx
	movl %edx, 4(%edi)			/* 0x400000 -> its own table */
	leal frames(%eax), %edx
	movl %esi, (%edx)			/* the frame holds its number */
	orl $0x67, %edx
	movl %edx, (%ebx)
	incl %esi
	cmpl $8, %esi
	jne 1b
	movl $200, %ebp				/* rounds */
2:	xorl %edi, %edi				/* (HCALL clobbers ebx, ecx, edx, esi) */
3:	movl %edi, %eax
	shll $12, %eax
	leal dirs(%eax), %edx
	HCALL LHCALL_NEW_PGTABLE, %edx
	cmpl %edi, 0x400000
	jne fail
	incl %edi
	cmpl $8, %edi
	jne 3b
	decl %ebp
	jnz 2b
	POWEROFF
""" + FAIL))


# --- the kernel stack (§6.8) ------------------------------------------------------------------

def test_stack_must_be_mapped_in_every_new_space(asm_guest, pae: bool) -> None:
    """A blank shadow re-pins the SET_STACK pages: a space without them is fatal."""
    assert kill_reason(asm_guest(paging(pae) + """
test_main:
	INIT
	SETUP_PAGING				/* SET_STACK(kstack_top, 1 page) */
	HCALL LHCALL_NEW_PGTABLE, $dir_a	/* an empty directory (or PDPT) */
"""), pae).startswith("bad stack page 0x")


def test_set_stack_on_unmapped_pages(asm_guest, pae: bool) -> None:
    assert kill_reason(asm_guest(paging(pae) + """
test_main:
	INIT
	SETUP_PAGING
	HCALL LHCALL_SET_STACK, $0x69, $0x900000, $2
"""), pae) == "bad stack page 0x8fffff"


# --- isolation: what a hostile Guest kernel cannot make the Host do -----------------------------

def test_guest_cannot_map_the_switcher(asm_guest) -> None:
    """Directory entry 1023 pointing at a table: addresses there still fault (§6.3 step 1)."""
    run_ok(asm_guest(EXTRA + PF_CHECK + """
test_main:
	INIT
	call setup_user_paging
	GATE 14, pf_handler
	movl $pt2 + 0x67, page_dir + 1023 * 4
	movl $frames + 0x67, pt2 + 0x100 * 4	/* 0xFFD00000 -> a frame of ours */
	HCALL LHCALL_SET_PGD, $page_dir, $1023
	movl $0, expected
	movl $0xffd00008, expected_cr2
	movl 0xffd00008, %eax
	jmp fail
"""))


# --- segments (§5) ------------------------------------------------------------------------------

def test_gdt_entries_are_fixed_up(asm_guest) -> None:
    elf = asm_guest("""
test_main:
	INIT
	HCALL LHCALL_LOAD_GDT_ENTRY, $20, $0x0000ffff, $0x00cf9200	/* DPL 0, not accessed */
	HCALL LHCALL_LOAD_GDT_ENTRY, $21, $0x0000ffff, $0x00cff200	/* DPL 3 */
	HCALL LHCALL_LOAD_GDT_ENTRY, $10, $0x12345678, $0x9abcdef0	/* the Host's own */
	movl $0xa1, %eax
	movl %eax, %fs				/* usable at ring 1 now */
	movl %fs:lguest_data, %eax
	POWEROFF
""")
    guest = make_guest(elf)
    assert guest.run().reason == "CRASH: Power down"
    assert guest.segments.gdt[20] == (0x0000FFFF, 0x00CFB300)  # DPL 1, accessed
    assert guest.segments.gdt[21] == (0x0000FFFF, 0x00CFF300)  # DPL 3 kept, accessed
    assert guest.switcher.gdt[10] == (0x0000FFFF, 0x00CF9B00)  # the Switcher's, untouched


def test_load_tls(asm_guest) -> None:
    elf = asm_guest("""
test_main:
	INIT
	HCALL LHCALL_LOAD_TLS, $tls
	movl $0x33, %eax			/* entry 6, RPL 3: DPL 3 */
	movl %eax, %gs
	cmpl $0x5678, %gs:8			/* the word after the descriptor */
	jne fail
	POWEROFF
	.data
	.p2align 12
tls:	.long 0x0000ffff, 0x00cff200		/* base filled in below */
	.long 0x5678
	.long 0, 0, 0, 0
	.text
""" + FAIL)
    guest = make_guest(elf)
    # The descriptor's base is the address of `tls` itself: patch it in before running.
    from conftest import symbol
    tls = symbol(elf, "tls")
    lo, hi = 0x0000FFFF | (tls & 0xFFFF) << 16, 0x00CFF200 | (tls >> 16) & 0xFF | tls & 0xFF000000
    guest.memory.write(tls, lo.to_bytes(4, "little") + hi.to_bytes(4, "little"))
    assert guest.run().reason == "CRASH: Power down"
    assert guest.segments.gdt[6][1] & 0x100  # accessed


def test_call_gate_is_never_installed(asm_guest) -> None:
    """A call gate to the Switcher's ring-0 code would be a door out: it never reaches the GDT."""
    reason = kill_reason(asm_guest("""
test_main:
	INIT
	/* a 32-bit call gate, DPL 3, to 0x50:0x1000 */
	HCALL LHCALL_LOAD_GDT_ENTRY, $20, $0x00501000, $0x0000ec00
	lcall $0xa3, $0
"""))
    assert reason.startswith("unhandled trap 13 at 0x")


def test_device_window_is_real_mmio(asm_guest, pae: bool) -> None:
    """A PTE to a device's BAR0 page reaches its registers, with any instruction."""
    run_ok(asm_guest(paging(pae) + """
test_main:
	INIT
	SETUP_PAGING
	REMAP_300000 $0x2100063			/* the console's BAR0 window */
	movw 0x300000 + 18, %ax			/* num_queues */
	cmpw $2, %ax
	jne fail
	movl $0x300000 + 20, %esi
	cmpb $0, (%esi)				/* device_status, through another form */
	jne fail
	POWEROFF
""" + FAIL), pae)
