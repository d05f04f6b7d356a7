"""TLB misses already answered, served in C (fills.c, fills.py): the same Guest
outcomes on both paths, a count of the misses C served, and every way an answer
must be forgotten (SET_PTE in and out of the current space, a read-only page made
writable, a user access to a page the kernel used)."""

from __future__ import annotations

import pytest
from conftest import make_guest, symbol
from test_paging import FAIL, PF_CHECK, TWO_SPACES

# Leave address space A for B and come back: the emulator's TLB is flushed each
# time, and A's shadow (with the answers kept for it) is still there.
AWAY_AND_BACK = """
.macro AWAY_AND_BACK
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	HCALL LHCALL_NEW_PGTABLE, $dir_a
.endm
"""

ROUNDS = 50
ROUND_TRIPS = TWO_SPACES + AWAY_AND_BACK + f"""
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	movl ${ROUNDS}, %edi
1:	cmpl $0xaaaa, 0x400000
	jne fail
	cmpl $0xc0c0, 0xc0000000
	jne fail
	AWAY_AND_BACK
	decl %edi
	jnz 1b
	POWEROFF
""" + FAIL

# Every answer kept for A's shadow must go when its entry changes: a SET_PTE while
# A is current; a page made read-only, then writable; a kernel-only page touched by
# the kernel, then by ring 3 (and a first write to a clean page still reaching the
# page tables, which set DIRTY); and a SET_PTE of A's page while B is current (the
# emulator's TLB cannot hold it then, so only the kept answers know).
CHANGES = TWO_SPACES + AWAY_AND_BACK + PF_CHECK.replace("POWEROFF", "jmp *resume") + """
	.data
resume:	.long 0
	.text
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	GATE 14, pf_handler
	cmpl $0xaaaa, 0x400000
	jne fail
	AWAY_AND_BACK
	cmpl $0xaaaa, 0x400000
	jne fail
	/* Remapped, read-only and kernel-only (present, accessed), while A is current. */
	movl $0x1234, frames + 12288
	movl $frames + 12288 + 0x21, user_a
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames + 12288 + 0x21
	cmpl $0x1234, 0x400000
	jne fail
	AWAY_AND_BACK
	cmpl $0x1234, 0x400000
	jne fail
	movl $3, expected			/* a write: present, write, from ring 1 */
	movl $0x400000, expected_cr2
	movl $writable, resume
	movl $1, 0x400000
	jmp fail
writable:
	movl $frames + 12288 + 0x23, user_a
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames + 12288 + 0x23
	cmpl $0x1234, 0x400000			/* a read of a clean page: write-protected */
	jne fail
	AWAY_AND_BACK
	cmpl $0x1234, 0x400000
	jne fail
	movl $0x5678, 0x400000			/* the first write still sets DIRTY */
	testl $0x40, user_a
	jz fail
	AWAY_AND_BACK
	cmpl $0x5678, 0x400000
	jne fail
	cmpl $0x5678, frames + 12288
	jne fail
	/* Changed while B is current: back in A, the new page. */
	movl $0x9abc, frames + 16384
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	movl $frames + 16384 + 0x01, user_a	/* present only: not kept at once */
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames + 16384 + 0x01
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0x9abc, 0x400000
	jne fail
	AWAY_AND_BACK
	cmpl $0x9abc, 0x400000			/* the kernel's answer, kept */
	jne fail
	movl $5, expected			/* a read from ring 3: present, user */
	movl $0x400000, expected_cr2
	movl $done, resume
	TO_USER user
user:	movl 0x400000, %eax
	jmp fail
done:	POWEROFF
"""


@pytest.fixture(params=[True, False], ids=["native", "python"])
def native(request) -> bool:
    return request.param


def test_round_trips_are_served_in_c(asm_guest, native) -> None:
    """Coming back to an address space, its pages are answered in C, and only there."""
    guest = make_guest(asm_guest(ROUND_TRIPS), native=native)
    assert guest.run().reason == "CRASH: Power down"
    # Each round reads two data pages again after the switch back (and fetches code).
    assert (guest.switcher.native_fills >= 2 * ROUNDS) if native else guest.switcher.native_fills == 0
    assert guest.switcher.fills == guest.switcher.python_fills + guest.switcher.native_fills


def test_changed_entries_are_forgotten(asm_guest, native) -> None:
    elf = asm_guest(CHANGES)
    guest = make_guest(elf, native=native)
    assert guest.run().reason == "CRASH: Power down"
    assert guest.memory.read_u32(symbol(elf, "resume")) == symbol(elf, "done")
    assert (guest.switcher.native_fills > 0) == native


def test_a_table_for_every_shadow() -> None:
    """fills.c has one table per shadow slot and one for linear mode (its size is
    checked against fills.py's copy when the hook is installed)."""
    from lguest.host import fills, page_tables

    assert fills.TABLES == page_tables.SHADOW_SLOTS + 1
