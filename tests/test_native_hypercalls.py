"""Hypercalls served in C (hypercalls.c) against the pure-Python Host (--no-native).

The same Guests run both ways: what the Guest reads through its mappings, what
its page tables say afterwards, what the Host's shadows hold, the ring's cursor,
the hypercall counts and every kill message must agree; and on the native path
the calls must really have been served without an exit.
"""

from __future__ import annotations

import json

import pytest
from conftest import lguest, make_guest, run_both_ways, run_while_rung, symbol
from test_paging import EXTRA, FAIL, TWO_SPACES, paging

# Every variant of SET_PTE: prefill or drop, kernel or user address, the current
# directory or another one, sync and through the async ring (C's calls around one
# only Python serves, then C's alone from where the shared cursor stopped), and a
# directory no shadow holds.  The Guest checks each through its own mappings.
EVERY_SET_PTE = TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	movl $0x3333, frames + 3 * 4096
	movl $0x4444, frames + 4 * 4096
	movl $0x5555, frames + 5 * 4096
	movl $0x6666, frames + 6 * 4096
	movl $0x7777, frames + 7 * 4096
	HCALL LHCALL_NEW_PGTABLE, $dir_b		/* both spaces shadowed, A current */
	cmpl $0xbbbb, 0x400000
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0xaaaa, 0x400000
	jne fail
	cmpl $0xc0c0, 0xc0000000
	jne fail
	/* sync, prefilled, user address, the current directory */
	movl $frames + 3 * 4096 + 0x67, user_a
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames+3*4096+0x67
	cmpl $0x3333, 0x400000
	jne fail
	/* sync, dropped (neither accessed nor dirty) */
	movl $frames + 4 * 4096 + 0x07, user_a
	HCALL LHCALL_SET_PTE, $dir_a, $0x400000, $frames+4*4096+0x07
	cmpl $0x4444, 0x400000
	jne fail
	/* sync, a kernel address named through the other directory: every shadow */
	movl $frames + 5 * 4096 + 0x67, kernel_pt
	HCALL LHCALL_SET_PTE, $dir_b, $0xc0000000, $frames+5*4096+0x67
	cmpl $0x5555, 0xc0000000
	jne fail
	/* sync, a user address of the other directory: this space keeps its page */
	movl $frames + 6 * 4096 + 0x67, user_b
	HCALL LHCALL_SET_PTE, $dir_b, $0x400000, $frames+6*4096+0x67
	cmpl $0x4444, 0x400000
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_b
	cmpl $0x6666, 0x400000
	jne fail
	cmpl $0x5555, 0xc0000000
	jne fail
	/* the ring: SET_PTEs around a SET_CLOCKEVENT, which only Python serves */
	movl $frames + 7 * 4096 + 0x67, user_b
	QUEUE 0, LHCALL_SET_PTE, $dir_b, $0x400000, $frames+7*4096+0x67
	QUEUE 1, LHCALL_SET_CLOCKEVENT, $0
	movl $frames + 3 * 4096 + 0x27, kernel_pt
	QUEUE 2, LHCALL_SET_PTE, $dir_a, $0xc0000000, $frames+3*4096+0x27
	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0x7777, 0x400000
	jne fail
	cmpl $0x3333, 0xc0000000
	jne fail
	/* the ring from where the cursor stopped, C's calls only, then a sync one */
	movl $frames + 4096 + 0x07, user_b
	QUEUE 3, LHCALL_SET_PTE, $dir_b, $0x400000, $frames+4096+0x07
	QUEUE 4, LHCALL_SET_PTE, $pt2, $0x400000, $0	/* no shadow holds pt2 */
	QUEUE 5, LHCALL_FLUSH_ASYNC
	HCALL LHCALL_SET_PTE, $dir_b, $0x401000, $0
	cmpl $0xaaaa, 0x400000
	jne fail
	cmpl $0xffffffff, lguest_data + LD_HCALL_STATUS
	jne fail
	cmpw $0xffff, lguest_data + LD_HCALL_STATUS + 4
	jne fail
	HCALL LHCALL_NEW_PGTABLE, $dir_a		/* A's shadow saw the kernel page too */
	cmpl $0x3333, 0xc0000000
	jne fail
	cmpl $0x4444, 0x400000
	jne fail
	POWEROFF
""" + FAIL
SERVED_IN_C = 11  # five sync SET_PTEs, two NEW_PGTABLEs back to a shadow; slot 0, then 3, 4, 5
SYNC_SERVED_IN_C = 7
TABLES = ("page_table", "kernel_pt", "user_a", "user_b")



def host_view(guest, elf) -> dict[str, object]:
    """What the Host's page tables say, and the Guest's own, after the run."""
    guest.pages.catch_up()
    return {
        "shadows": [(s.pgdir, dict(s.ptes)) for s in guest.pages.shadows],
        "current": guest.pages.pgdir,
        "guest tables": {name: guest.memory.read(symbol(elf, name), 4096) for name in TABLES},
        "cursor": guest.next_hcall,
        "hypercalls": guest.stats["hypercalls"],
    }


def test_every_set_pte_gives_the_same_machine_both_ways(asm_guest) -> None:
    elf = asm_guest(EVERY_SET_PTE)
    native, python = run_both_ways(elf)
    assert host_view(native, elf) == host_view(python, elf)
    assert native.next_hcall == 6


def test_the_native_path_served_them_without_exits(asm_guest) -> None:
    """A count: the calls C served, and the exits the sync ones did not make."""
    elf = asm_guest(EVERY_SET_PTE)
    native, python = run_both_ways(elf)
    assert native.native_hcalls is not None and python.native_hcalls is None
    assert native.native_hcalls.served == SERVED_IN_C
    assert native.switcher.trap_hook.hypercalls_served == SYNC_SERVED_IN_C
    assert native.stats["hypercalls"] == python.stats["hypercalls"]


def test_stats_count_every_hypercall_by_name_both_ways(asm_guest) -> None:
    elf = asm_guest(EVERY_SET_PTE)
    counts = []
    for path in ((), ("--no-native",)):
        run = lguest(*path, "--stats=json", "32", str(elf))
        assert run.status == 0, run.stderr
        figures = json.loads(run.stderr.splitlines()[-1])
        counts.append((figures["hypercalls"], figures["hypercalls_by_name"]))
    assert counts[0] == counts[1]
    assert counts[0][1]["SET_PTE"] == 9


def test_a_tracer_still_sees_every_hypercall(asm_guest) -> None:
    """--trace wants each call: none is served unseen."""
    elf = asm_guest(EVERY_SET_PTE)
    run = lguest("--trace=hcalls", "32", str(elf))
    assert run.status == 0
    calls = [line for line in run.stderr.splitlines() if "trace: hcall SET_PTE" in line]
    assert len(calls) == 9
    assert sum(" async" in line for line in calls) == 4


def test_set_pgd_and_send_interrupts(asm_guest) -> None:
    """SET_PGD of a directory no shadow holds (nothing to do) and of the current one (its
    0x400000 goes), and SEND_INTERRUPTS with no irq waiting, are served in C."""
    elf = asm_guest(TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	cmpl $0xaaaa, 0x400000
	jne fail
	HCALL LHCALL_SET_PGD, $dir_b, $1		/* no shadow holds B: nothing to do */
	HCALL LHCALL_SEND_INTERRUPTS
	movl $0, dir_a + 4
	HCALL LHCALL_SET_PGD, $dir_a, $1		/* A's: its 0x400000 goes */
	GATE 14, gone
	movl 0x400000, %eax
	jmp fail
gone:	POWEROFF
""" + FAIL)
    native, python = run_both_ways(elf)
    assert host_view(native, elf) == host_view(python, elf)
    assert native.native_hcalls.take_counts() == []  # all added in already
    assert native.switcher.trap_hook.hypercalls_served == 3


KILLS = {
    "sync SET_PTE into the Switcher": ("""
	HCALL LHCALL_SET_PTE, $page_dir, $0xffc00000, $0""", "attempt to set pte into Switcher pages"),
    "queued SET_PTE into the Switcher, after one C serves": ("""
	QUEUE 0, LHCALL_SET_PTE, $page_dir, $0x300000, $0
	QUEUE 1, LHCALL_SET_PTE, $page_dir, $0xfffff000, $0
	HCALL LHCALL_FLUSH_ASYNC""", "attempt to set pte into Switcher pages"),
    "sync prefill of a page beyond RAM": ("""
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $0x8000067""", "bad page table entry"),
    "queued prefill of a 4 MiB page": ("""
	QUEUE 0, LHCALL_SET_PTE, $page_dir, $0x300000, $0x3000e7
	HCALL LHCALL_FLUSH_ASYNC""", "bad page table entry"),
    "SET_PGD beyond the top level, of an unshadowed directory": ("""
	HCALL LHCALL_SET_PGD, $0x123000, $1024""", "Attempt to set pgd 1024/1024"),
    "a bad call in a ring slot, after C's": ("""
	QUEUE 0, LHCALL_SET_PTE, $page_dir, $0x300000, $0
	QUEUE 1, 99
	HCALL LHCALL_SET_PTE, $page_dir, $0x301000, $0""", "Bad hypercall 99"),
}


@pytest.mark.parametrize("name", KILLS)
def test_set_pte_kills_alike_both_ways(asm_guest, name: str) -> None:
    code, reason = KILLS[name]
    elf = asm_guest("test_main:\n\tINIT\n\tcall setup_user_paging" + code + "\n\tPOWEROFF\n")
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert (native.status, native.reason) == (1, reason)
    assert (python.status, python.reason) == (1, reason)


RING_THEN_SAVE = TWO_SPACES + """
test_main:
	INIT
	call setup_user_paging
	call make_spaces
	HCALL LHCALL_NEW_PGTABLE, $dir_a
	QUEUE 0, LHCALL_SET_PTE, $dir_a, $0x400000, $frames+8192+0x67
	QUEUE 1, LHCALL_FLUSH_ASYNC
	QUEUE 2, LHCALL_SET_PTE, $dir_b, $0x400000, $0
	HCALL LHCALL_FLUSH_ASYNC			/* C: the cursor moves to 3 */
	SHUTDOWN $saved					/* the test saves the state here */
	QUEUE 3, LHCALL_SET_PTE, $dir_a, $0x400000, $frames+4096+0x67
	HCALL LHCALL_FLUSH_ASYNC			/* from the restored cursor */
	cmpb $0xff, lguest_data + LD_HCALL_STATUS + 3
	jne fail
	cmpl $0xaaaa, 0x400000
	jne fail
	POWEROFF
saved:	.asciz "saved"
""" + FAIL


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_the_ring_cursor_is_saved_and_restored(asm_guest, native: bool) -> None:
    """The cursor C moved is the one a snapshot holds, and a restored Guest's C goes on
    from it."""
    from lguest.host.core import Guest
    from lguest.launcher.boot import allocate_guest_ram, load_kernel, write_boot_params
    from lguest.launcher.pci import PciBus
    from lguest.launcher.ports import Ports

    mem = 32 << 20
    ram = allocate_guest_ram(mem)
    kernel = load_kernel(ram, mem, str(asm_guest(RING_THEN_SAVE)))
    write_boot_params(ram, mem, "", None)
    first = Guest(ram, mem, kernel.entry, Ports(PciBus(), print), native=native)
    assert first.run().reason == "CRASH: saved"
    state = first.save_state()
    first.close()
    assert state.next_hcall == 3
    second = Guest(ram, mem, 0, Ports(PciBus(), print), native=native)
    second.restore_state(state)
    assert second.next_hcall == 3
    assert second.run().reason == "CRASH: Power down"
    assert second.next_hcall == 4
    if native:
        assert second.native_hcalls.served == 2  # slot 3 and the FLUSH_ASYNC
    second.close()


PAE_SET_PTE = paging(True) + """
test_main:
	INIT
	SETUP_PAGING
	movl $0x5a5a, frames
	movl $frames+0x67, pae_pt + 0x300 * 8
	movl $0x80000000, pae_pt + 0x300 * 8 + 4		/* NX: the high half */
	HCALL LHCALL_SET_PTE, $pdpt, $0x300000, $frames+0x67, $0x80000000
	cmpl $0x5a5a, 0x300000
	jne fail
	movl $0xc3, frames				/* ret */
	GATE 14, no_fetch
	call 0x300000
	jmp fail
no_fetch:
	POWEROFF
""" + FAIL


def test_a_pae_pte_with_its_high_half_is_the_same_both_ways(asm_guest) -> None:
    """PAE: the high half (NX here) reaches the shadow through C as through Python."""
    elf = asm_guest(PAE_SET_PTE)
    shadows = []
    for native, guest in zip((True, False), run_both_ways(elf, pae=True), strict=True):
        guest.pages.catch_up()
        shadows.append([(s.pgdir, dict(s.ptes)) for s in guest.pages.shadows])
        if native:
            assert guest.native_hcalls.served == 1
    assert shadows[0] == shadows[1]
    assert shadows[0][0][1][0x300000] >> 63 == 1


def test_a_pae_prefill_beyond_ram_by_its_high_half_kills_alike(asm_guest) -> None:
    elf = asm_guest(paging(True) + """
test_main:
	INIT
	SETUP_PAGING
	HCALL LHCALL_SET_PTE, $pdpt, $0x300000, $0x300067, $1
	POWEROFF
""")
    native, python = lguest("--pae", "32", str(elf)), lguest("--no-native", "--pae", "32", str(elf))
    assert (native.status, native.reason) == (1, "bad page table entry")
    assert (python.status, python.reason) == (1, "bad page table entry")


STRESS_ROUNDS = 20000
REMAP_UNDER_KICKS = EXTRA + """
test_main:
	INIT
	call setup_user_paging
	xorl %edi, %edi
1:	movl $PT, %ebx
	movl $0x300000, %ecx
	movl $frames+0x67, %edx
	call set_pte_in
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $frames+0x67
	addl $1, 0x300000
	movl $PT, %ebx
	movl $0x300000, %ecx
	movl $frames+4096+0x67, %edx
	call set_pte_in
	HCALL LHCALL_SET_PTE, $page_dir, $0x300000, $frames+4096+0x67
	addl $1, 0x300000
	HCALL LHCALL_FLUSH_ASYNC
	incl %edi
	cmpl $ROUNDS, %edi
	jne 1b
	POWEROFF
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_kicks_during_served_hypercalls_never_run_an_instruction_twice(asm_guest, native: bool) -> None:
    """Another thread rings the doorbell while C serves SET_PTEs that remap the page the
    Guest then increments: each frame's count comes out exactly once per round."""
    elf = asm_guest(f"\t.set ROUNDS, {STRESS_ROUNDS}\n" + REMAP_UNDER_KICKS)
    guest = make_guest(elf, native=native)
    result, kicks = run_while_rung(guest)
    assert result.reason == "CRASH: Power down"
    assert kicks > 1000
    frames = symbol(elf, "frames")
    assert [guest.memory.read_u32(frames + 4096 * i) for i in range(2)] == [STRESS_ROUNDS] * 2
    if native:
        assert guest.native_hcalls.served == 3 * STRESS_ROUNDS


def test_without_the_engine_cpu_every_hypercall_goes_to_python(asm_guest, monkeypatch) -> None:
    """No proven CPU pointer (another Unicorn build): no TLB drop is possible, so C
    serves nothing, and the Guest runs as on the pure-Python path."""
    from lguest.host import calibration

    monkeypatch.setattr(calibration, "engine_cpu", lambda uc: None)
    guest = make_guest(asm_guest(EVERY_SET_PTE), native=True)
    assert guest.native_hcalls is None
    assert guest.run().reason == "CRASH: Power down"
    assert guest.switcher.trap_hook.hypercalls_served == 0


# Lazy FPU switching, as Linux does it: TS 1, the first FPU instruction raises #NM, which
# the Host reflects (trap 7 is never delivered by the CPU itself), the handler clears TS
# and returns to run the instruction again; once sync, once from the ring.  The Guest
# keeps the faulting EIPs and the FPU's results.
LAZY_FPU = """
nm_handler:
	movl nm_count, %eax
	movl (%esp), %ebx
	movl %ebx, nm_eips(,%eax,4)
	incl nm_count
	HCALL LHCALL_TS, $0
	jmp lguest_iret
test_main:
	INIT
	GATE 7, nm_handler
	fninit				/* TS clear: no #NM */
	HCALL LHCALL_TS, $1
first:	fld1
	fstpl results
	QUEUE 0, LHCALL_TS, $1
	HCALL LHCALL_FLUSH_ASYNC
second:	fldpi
	fstpl results + 8
	fldl2t				/* TS clear again: no #NM */
	fstpl results + 16
	cmpl $2, nm_count
	jne fail
	HCALL LHCALL_TS, $1		/* left set: the Host's view at the end */
	POWEROFF
	.data
	.globl nm_count, nm_eips, results
nm_count: .long 0
nm_eips: .long 0, 0, 0
results: .quad 0, 0, 0
	.text
""" + FAIL


def fpu_view(guest, elf) -> dict[str, object]:
    """What the Guest saw of TS, and the Host's TS flag and CR0.TS at the end."""
    from unicorn.x86_const import UC_X86_REG_CR0

    return {
        "seen": guest.memory.read(symbol(elf, "nm_count"), 4 + 12 + 24),
        "ts": guest.ts,
        "cr0.ts": guest.switcher.uc.reg_read(UC_X86_REG_CR0) & 8,
        "reflected": guest.stats["reflected traps"],
        "hypercalls": guest.stats["hypercalls"],
    }


def test_ts_and_the_nm_it_causes_alike_both_ways(asm_guest) -> None:
    elf = asm_guest(LAZY_FPU)
    native, python = run_both_ways(elf)
    seen = fpu_view(native, elf)
    assert seen == fpu_view(python, elf)
    assert seen["ts"] == 1 and seen["cr0.ts"] == 8 and seen["reflected"] == 2
    eips = native.memory.read(symbol(elf, "nm_eips"), 8)
    assert eips == symbol(elf, "first").to_bytes(4, "little") + symbol(elf, "second").to_bytes(4, "little")
    # Served in C without an exit: TS 1, the handler's TS 0 twice, the FLUSH_ASYNC (with
    # its queued TS 1) and the last TS 1.
    assert native.switcher.trap_hook.hypercalls_served == 5
    assert native.native_hcalls.served == 6
