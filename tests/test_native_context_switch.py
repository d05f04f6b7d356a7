"""A context switch served in C (hypercalls.c: NEW_PGTABLE to a shadow the Host holds,
SET_STACK to a stack it holds) against the pure-Python Host (--no-native).

The Guest switches between two address spaces and two kernel stacks, through the
async ring (Linux's order and the other) and synchronously, with SET_PTEs queued
on both sides of a switch, and checks through its own mappings which space it is
in; a system call from ring 3 after each switch records the stack the CPU put its
frame on (the TSS).  What the Guest saw, what the Host's page tables and its copy of
the stack say, and the TSS must agree on both paths; kills alike.
"""

from __future__ import annotations

import json
import struct

import pytest
from conftest import lguest, make_guest, run_both_ways, run_while_rung, symbol
from test_native_hypercalls import host_view
from test_paging import FAIL, TWO_SPACES

ROUNDS = 20
SWITCHES = TWO_SPACES + r"""
	.bss
	.p2align 12
	.space 8192
kstack2_top:
	.space 4
	.data
resume:	.long 0
round:	.long 0
esps:	.space 4 * 2 * {rounds}
tlss:	.space 4 * 2 * {rounds}
tls_a:	.space 24				/* LOAD_TLS's three descriptors for each space */
tls_b:	.space 24
mine_a:	.long 0xa1a1				/* what each one's entry 6 points at */
mine_b:	.long 0xb1b1
	.text
/* Queue a call in the ring's next slot: %ebp follows the Host's cursor. */
.macro QUEUE_NEXT nr, a1=$0, a2=$0, a3=$0
	imull $20, %ebp, %eax
	movl $\nr, lguest_data + LD_HCALLS(%eax)
	movl \a1, lguest_data + LD_HCALLS + 4(%eax)
	movl \a2, lguest_data + LD_HCALLS + 8(%eax)
	movl \a3, lguest_data + LD_HCALLS + 12(%eax)
	movb $0, lguest_data + LD_HCALL_STATUS(%ebp)
	incl %ebp
	andl $63, %ebp
.endm

on_syscall:					/* from ring 3: the frame is on SET_STACK's stack */
	movl round, %eax
	movl %esp, esps(,%eax,4)
	movl %edx, tlss(,%eax,4)
	incl round
	jmp *resume

/* To ring 3 and straight back by a system call, resuming at %ebx. */
user_and_back:
	popl %ecx
	movl %ebx, resume
	TO_USER user
user:	movl $0x33, %eax			/* entry 6, RPL 3 */
	movl %eax, %gs
	movl %gs:0, %edx
	int $0x80
	jmp .

/* A flat-limit data descriptor for ring 3 with base %eax, at (%ebx). */
make_tls:
	movl %eax, %edx
	shll $16, %edx
	orl $0xffff, %edx
	movl %edx, (%ebx)
	movl %eax, %edx
	shrl $16, %edx
	andl $0xff, %edx
	orl $0x00cff200, %edx
	movl %eax, %ecx
	andl $0xff000000, %ecx
	orl %ecx, %edx
	movl %edx, 4(%ebx)
	ret

test_main:
	INIT
	call setup_user_paging
	call make_spaces
	GATE 0x80, on_syscall, 0xF, 3
	movl $mine_a, %eax
	movl $tls_a, %ebx
	call make_tls
	movl $mine_b, %eax
	movl $tls_b, %ebx
	call make_tls
	movl $0x3333, frames + 3 * 4096
	movl $0, frames				/* 0xc0000000: one a round */
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	xorl %edi, %edi
	xorl %ebp, %ebp
1:	/* Linux's order, all queued: to A on the second stack */
	QUEUE_NEXT LHCALL_NEW_PGTABLE, $dir_a
	QUEUE_NEXT LHCALL_SET_STACK, $0x69, $kstack2_top, $2
	QUEUE_NEXT LHCALL_LOAD_TLS, $tls_a
	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0xaaaa, 0x400000
	jne fail
	movl $2f, %ebx
	call user_and_back
2:	/* the other order, and a SET_PTE of A queued before the switch to B, one of B
	after it: each space sees only its own */
	movl $frames + 3 * 4096 + 0x67, user_a
	QUEUE_NEXT LHCALL_SET_PTE, $dir_a, $0x400000, $frames+3*4096+0x67
	QUEUE_NEXT LHCALL_LOAD_TLS, $tls_b
	QUEUE_NEXT LHCALL_SET_STACK, $0x69, $kstack_top, $1
	QUEUE_NEXT LHCALL_NEW_PGTABLE, $dir_b
	movl $frames + 2 * 4096 + 0x27, user_b
	QUEUE_NEXT LHCALL_SET_PTE, $dir_b, $0x400000, $frames+2*4096+0x27
	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0xbbbb, 0x400000
	jne fail
	incl 0xc0000000				/* the kernel page, shared */
	movl $3f, %ebx
	call user_and_back
3:	/* synchronously, back to A (its page moved) and to B */
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	HCALL LHCALL_SET_STACK, $0x69, $kstack2_top, $2
	cmpl $0x3333, 0x400000
	jne fail
	movl $frames + 4096 + 0x67, user_a
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames+4096+0x67
	HCALL LHCALL_SET_STACK, $0x69, $kstack_top, $1
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	cmpl $0xbbbb, 0x400000
	jne fail
	HCALL LHCALL_SET_STACK, $0x69, $kstack_top, $1
	incl %edi
	cmpl ${rounds}, %edi
	jne 1b
	cmpl ${rounds}, 0xc0000000
	jne fail
	POWEROFF
""" + FAIL


def switches(rounds: int = ROUNDS) -> str:
    return SWITCHES.replace("{rounds}", str(rounds))


def what_the_host_keeps(guest, elf) -> dict[str, object]:
    """The page tables' and the Guest's view (host_view), SET_STACK's stack as the
    Host keeps it and as the CPU reads it (the TSS), and the stacks the frames went to."""
    from lguest.host.switcher import TSS_ADDR, TSS_ESP1, TSS_SS1

    tss = guest.switcher.uc.mem_read(TSS_ADDR, 20)
    return {
        **host_view(guest, elf),
        "stack": (guest.ss1, guest.esp1, guest.pages.stack_top, guest.pages.stack_pages),
        "tss": (struct.unpack_from("<H", tss, TSS_SS1)[0], struct.unpack_from("<I", tss, TSS_ESP1)[0]),
        "esps": guest.memory.read(symbol(elf, "esps"), 4 * 2 * ROUNDS),
        "tlss": guest.memory.read(symbol(elf, "tlss"), 4 * 2 * ROUNDS),
        "gdt": guest.segments.gdt,
    }



def test_a_context_switch_gives_the_same_machine_both_ways(asm_guest) -> None:
    elf = asm_guest(switches())
    native, python = run_both_ways(elf)
    assert what_the_host_keeps(native, elf) == what_the_host_keeps(python, elf)
    esps = struct.unpack(f"<{2 * ROUNDS}I", native.memory.read(symbol(elf, "esps"), 8 * ROUNDS))
    frame = 5 * 4  # eip, cs, eflags, esp, ss from ring 3
    assert esps == (symbol(elf, "kstack2_top") - frame, symbol(elf, "kstack_top") - frame) * ROUNDS
    tlss = struct.unpack(f"<{2 * ROUNDS}I", native.memory.read(symbol(elf, "tlss"), 8 * ROUNDS))
    assert tlss == (0xA1A1, 0xB1B1) * ROUNDS


def test_the_switches_are_served_without_exits(asm_guest) -> None:
    """Every call of every round is served in C (four NEW_PGTABLEs, five SET_STACKs,
    three SET_PTEs, two LOAD_TLSs, two FLUSH_ASYNCs), except the first SET_STACK to the
    second stack, which no space holds yet (Python pins it), and with it the rest of
    its batch (a LOAD_TLS) and the FLUSH_ASYNC that brought it; and --stats counts
    every call alike on both paths."""
    elf = asm_guest(switches())
    native, _ = run_both_ways(elf)
    assert native.native_hcalls.served == 16 * ROUNDS - 3
    counts = []
    for path in ((), ("--no-native",)):
        run = lguest(*path, "--stats=json", "32", str(elf))
        assert run.status == 0, run.stderr
        counts.append(json.loads(run.stderr.splitlines()[-1])["hypercalls_by_name"])
    assert counts[0] == counts[1]
    assert (counts[0]["NEW_PGTABLE"], counts[0]["SET_STACK"], counts[0]["LOAD_TLS"]) == (
        4 * ROUNDS + 3, 5 * ROUNDS + 1, 2 * ROUNDS)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_kicks_during_switches_run_nothing_twice(asm_guest, native: bool) -> None:
    """Another thread rings the doorbell all along: the kernel page's count (one a round)
    and the stacks each frame went to come out exactly as without kicks."""
    rounds = 2000
    elf = asm_guest(switches(rounds))
    guest = make_guest(elf, native=native)
    result, kicks = run_while_rung(guest)
    assert result.reason == "CRASH: Power down"
    assert kicks > 100
    assert guest.memory.read_u32(symbol(elf, "frames")) == rounds
    frame = 5 * 4
    esps = struct.unpack(f"<{2 * rounds}I", guest.memory.read(symbol(elf, "esps"), 8 * rounds))
    assert esps == (symbol(elf, "kstack2_top") - frame, symbol(elf, "kstack_top") - frame) * rounds


def test_a_stack_segment_beyond_16_bits_is_its_selector_both_ways(asm_guest) -> None:
    """SET_STACK's segment is a selector: the upper half of the register goes, as the TSS's
    16-bit field has it (it once ended the pure-Python Host with an internal error)."""
    source = SAVED_STACK.replace("$0x69, $kstack2_top, $2\n\tHCALL LHCALL_LOAD_TLS",
                                 "$0x50069, $kstack2_top, $2\n\tHCALL LHCALL_LOAD_TLS")
    assert "$0x50069" in source
    elf = asm_guest(source.replace("SHUTDOWN $saved", "nop"))
    seen = [(guest.ss1, guest.esp1, guest.memory.read_u32(symbol(elf, "seen")))
            for guest in run_both_ways(elf)]
    assert seen[0] == seen[1] == (0x69, symbol(elf, "kstack2_top"), symbol(elf, "kstack2_top") - 5 * 4)


KILLS = {
    "queued SET_STACK of a ring-0 segment, after a switch C serves": ("""
	QUEUE 0, LHCALL_NEW_PGTABLE, $dir_a
	QUEUE 1, LHCALL_SET_STACK, $0x68, $kstack_top, $1
	HCALL LHCALL_FLUSH_ASYNC""", "bad stack segment 104"),
    "sync SET_STACK of three pages": ("""
	HCALL LHCALL_SET_STACK, $0x69, $kstack_top, $3""", "bad stack pages 3"),
    "queued SET_STACK to a stack no space maps": ("""
	QUEUE 0, LHCALL_SET_STACK, $0x69, $0x7ffff000, $1
	HCALL LHCALL_FLUSH_ASYNC""", "bad stack page 0x7fffefff"),
    "SET_STACK to a page mapped read-only": ("""
	movl $frames + 4 * 4096 + 0x65, user_a
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames+4*4096+0x65
	HCALL LHCALL_SET_STACK, $0x69, $0x401000, $1""", "bad stack page 0x400fff"),
    "SET_PGD beyond the top level, of a shadowed directory": ("""
	HCALL LHCALL_SET_PGD, $dir_a, $1024""", "Attempt to set pgd 1024/1024"),
    "queued LOAD_TLS running past the end of RAM, after one C serves": ("""
	QUEUE 0, LHCALL_LOAD_TLS, $dir_b
	QUEUE 1, LHCALL_LOAD_TLS, $0x1ffffec
	HCALL LHCALL_FLUSH_ASYNC""", "bad read address 0x1ffffec len 24"),
    "NEW_PGTABLE back to a shadow emptied, where the stack is not mapped": ("""
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	movl $0, user_a					/* unmapped in A, unannounced */
	HCALL LHCALL_SET_STACK, $0x69, $0x401000, $1	/* mapped in B only */
	HCALL LHCALL_FLUSH_TLB, $1			/* every shadow empty: B pins it again */
	HCALL LHCALL_NEW_PGTABLE, $dir_a""", "bad stack page 0x400fff"),
    "FLUSH_TLB of everything, the stack unmapped unannounced": ("""
	HCALL LHCALL_SET_STACK, $0x69, $0x401000, $1
	movl $0, user_a
	HCALL LHCALL_FLUSH_TLB, $1""", "bad stack page 0x400fff"),
    "NEW_PGTABLE of a misaligned directory after a switch C serves": ("""
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	HCALL LHCALL_NEW_PGTABLE, $dir_a + 4""", "NEW_PGTABLE {dir_a4:#x} is not 4096-byte aligned"),
}


@pytest.mark.parametrize("name", KILLS)
def test_hostile_switches_kill_alike_both_ways(asm_guest, name: str) -> None:
    code, reason = KILLS[name]
    elf = asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	HCALL LHCALL_NEW_PGTABLE, $dir_a""" + code + "\n\tPOWEROFF\n")
    reason = reason.format(dir_a4=symbol(elf, "dir_a") + 4)
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert (native.status, native.reason) == (1, reason)
    assert (python.status, python.reason) == (1, reason)


SAVED_STACK = TWO_SPACES + r"""
	.bss
	.p2align 12
	.space 8192
kstack2_top:
	.space 4
	.data
seen:	.long 0
	.text
on_syscall:
	movl %esp, seen
	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, on_syscall, 0xF, 3
	HCALL LHCALL_SET_STACK, $0x69, $kstack2_top, $2	/* Python pins it */
	HCALL LHCALL_SET_STACK, $0x69, $kstack_top, $1	/* C, from here on */
	HCALL LHCALL_SET_STACK, $0x69, $kstack2_top, $2
	HCALL LHCALL_LOAD_TLS, $tls
	SHUTDOWN $saved					/* the test saves the state here */
	TO_USER user
user:	movl $0x33, %eax				/* the TLS entry, from the snapshot */
	movl %eax, %gs
	movl %gs:seen, %eax
	int $0x80
	jmp .
saved:	.asciz "saved"
	.data
tls:	.long 0x0000ffff, 0x00cff200, 0, 0, 0, 0
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_stack_set_in_c_is_saved_and_restored(asm_guest, native: bool) -> None:
    """The stack a SET_STACK served in C set is the one a snapshot holds, and a restored
    Guest's CPU puts the next frame from ring 3 there (its TSS); so are the descriptors
    of a LOAD_TLS served in C, which the restored Guest's ring 3 loads."""
    from lguest.host.core import Guest
    from lguest.launcher.boot import allocate_guest_ram, load_kernel, write_boot_params
    from lguest.launcher.pci import PciBus
    from lguest.launcher.ports import Ports

    mem = 32 << 20
    ram = allocate_guest_ram(mem)
    elf = asm_guest(SAVED_STACK)
    kernel = load_kernel(ram, mem, str(elf))
    write_boot_params(ram, mem, "", None)
    first = Guest(ram, mem, kernel.entry, Ports(PciBus(), print), native=native)
    assert first.run().reason == "CRASH: saved"
    if native:
        assert first.native_hcalls.served == 3
    state = first.save_state()
    first.close()
    top = symbol(elf, "kstack2_top")
    assert (state.ss1, state.esp1, state.stack_pages) == (0x69, top, 2)
    assert state.gdt[6] == [0x0000FFFF, 0x00CFF300]  # accessed
    second = Guest(ram, mem, 0, Ports(PciBus(), print), native=native)
    second.restore_state(state)
    assert second.run().reason == "CRASH: Power down"
    assert second.memory.read_u32(symbol(elf, "seen")) == top - 5 * 4
    second.close()


# LOAD_TLS triples, hostile ones among them: privilege 0 (becomes 1), a base in every
# byte, not present, a TSS and a call gate (never installed), empty, a flat code
# segment; and code segments the Switcher's entry gate cannot run in (all ones, a
# small base and limit), which C leaves to Python.
TLS_TRIPLES = {
    "data, privilege 0 and 3, not present": ((0x0000FFFF, 0x00CF9200), (0x1234FFFF, 0x56CFF278),
                                             (0x0000FFFF, 0x00CF7200)),
    "a TSS, a call gate, empty": ((0x00000068, 0x00008900), (0x00100000, 0x0000EC00), (0, 0)),
    "flat code, privilege 0": ((0x0000FFFF, 0x00CF9A00), (0, 0), (0x0000FFFF, 0x00CFFA00)),
    "odd code: all ones": ((0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0, 0)),
    "odd code: small": ((0x00001000, 0x0040DA00), (0, 0), (0, 0)),
}
ODD = ("odd code: all ones", "odd code: small")


@pytest.mark.parametrize("name", TLS_TRIPLES)
def test_load_tls_fixes_descriptors_as_the_python_host_does(asm_guest, name: str) -> None:
    """The three descriptors, loaded sync and then queued around a LOAD_GDT_ENTRY (which
    Python serves, rewriting the whole GDT): the GDT the CPU reads, and the Host's copy,
    are the same both ways; C served the LOAD_TLSs unless a descriptor is odd code."""
    from lguest.host.switcher import GDT_ADDR

    words = ", ".join(f"{word:#x}" for pair in TLS_TRIPLES[name] for word in pair)
    elf = asm_guest(f"""
test_main:
	INIT
	HCALL LHCALL_LOAD_TLS, $tls
	HCALL LHCALL_LOAD_GDT_ENTRY, $12, $0x0000ffff, $0x00cff200
	QUEUE 0, LHCALL_LOAD_TLS, $flat
	QUEUE 1, LHCALL_LOAD_TLS, $tls
	HCALL LHCALL_FLUSH_ASYNC
	POWEROFF
	.data
tls:	.long {words}
flat:	.long 0x0000ffff, 0x00cff200, 0, 0, 0x0000ffff, 0x00cf9200
	.text
""")
    seen = []
    for native, guest in zip((True, False), run_both_ways(elf), strict=True):
        real = bytes(guest.switcher.uc.mem_read(GDT_ADDR, 8 * 32))  # before the Host's copy looks
        seen.append((real, list(guest.segments.gdt), bytes(guest.switcher.uc.mem_read(GDT_ADDR, 8 * 32))))
        if native:
            assert guest.native_hcalls.served == (1 if name in ODD else 4)
    assert seen[0] == seen[1]


# SET_PGD of a shadowed directory (another space's and the current one's) and FLUSH_TLB
# of the user part, queued and sync, each after a change the Guest did not announce
# otherwise: only the call makes the Host see it.
DROPS = TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	movl $0x3333, frames + 3 * 4096
	movl $0x4444, frames + 4 * 4096
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	cmpl $0xbbbb, 0x400000
	jne fail
	movl $frames + 3 * 4096 + 0x67, user_b
	QUEUE 0, LHCALL_FLUSH_TLB, $0
	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0x3333, 0x400000
	jne fail
	movl $user_b + 0x67, dir_a + 4		/* A's 0x400000 through B's table */
	HCALL LHCALL_SET_PGD, $dir_a, $1
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0x3333, 0x400000
	jne fail
	movl $user_a + 0x67, dir_a + 4		/* and back, while A is current */
	QUEUE 1, LHCALL_SET_PGD, $dir_a, $1
	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0xaaaa, 0x400000
	jne fail
	movl $frames + 4 * 4096 + 0x67, user_a
	HCALL LHCALL_FLUSH_TLB, $0
	cmpl $0x4444, 0x400000
	jne fail
	cmpl $0xc0c0, 0xc0000000		/* the kernel part stays */
	jne fail
	POWEROFF
""" + FAIL


def test_set_pgd_and_flush_tlb_give_the_same_machine_both_ways(asm_guest) -> None:
    """The same Guest tables, cursor and counts; each shadow entry the native path's Host
    holds is the pure-Python one's (it may hold fewer: after a table forgot everything, the
    C fill hook answers pages whose Guest entries it re-reads unchanged, unseen)."""
    elf = asm_guest(DROPS)
    native, python = run_both_ways(elf)
    ours, theirs = host_view(native, elf), host_view(python, elf)
    shadows, their_shadows = ours.pop("shadows"), dict(theirs.pop("shadows"))
    assert ours == theirs
    assert [pgdir for pgdir, _ in shadows] == list(their_shadows)
    for pgdir, ptes in shadows:
        assert ptes.items() <= their_shadows[pgdir].items()
    # Both FLUSH_TLBs, both SET_PGDs and both FLUSH_ASYNCs in C.  The NEW_PGTABLEs are
    # Python's: two new shadows, and one A's SET_PGD left not known to hold entries.
    assert native.native_hcalls.served == 6
