"""Page faults the Guest handles itself, raised by the emulated CPU from the C fill hook
and delivered through gate 14 without an exit (fills.c, interrupts.c), against the
pure-Python Host's reflection (--no-native): the Guest must see the same cr2, error
codes, frames and irq_enabled, and the same kills, whichever delivered them."""

from __future__ import annotations

import pytest
from conftest import lguest, make_guest, run_while_rung, symbol

from lguest.host.state import GENERAL_REGS

ROUNDS = 30
KERNEL_FAULTS = 3  # not present, read-only, fetch (a supervisor page is the kernel's own)
USER_FAULTS = 4  # and a supervisor page from ring 3
RECORD_WORDS = 10
KICKED_ROUNDS = 12000

# Four pages the rounds break (arm) and the handler mends: one not present, one
# read-only, one supervisor-only, and one not present holding a `ret` to call.  The
# handler logs cr2, the error code, the five words from the frame up (eip, cs, eflags,
# then the old esp and ss from ring 3, or what the interrupted stack held above the
# frame from ring 1), irq_enabled, %eax and its own %esp; then it maps the page the
# way the identity map had it (SET_PTE) and returns to run the instruction again.
FAULT_GUEST = """
	.set ROUNDS, {rounds}
	.set PAGES, 0x380000
	.set NOT_PRESENT, PAGES
	.set READ_ONLY, PAGES + 0x1000
	.set SUPERVISOR, PAGES + 0x2000
	.set FETCH, PAGES + 0x3000

on_pf:
	pushl %esi
	pushl %edi
	pushl %ecx
	pushl %ebx
	pushl %edx
	LOG_TRAP lguest_data + LD_CR2, 20(%esp), 24	/* cr2, the error code, the frame */
	pushl %eax
	movl lguest_data + LD_CR2, %ecx
	andl $0xfffff000, %ecx
	movl %ecx, %edx
	orl $0x67, %edx
	movl %ecx, %ebx
	shrl $12, %ebx
	andl $0x3ff, %ebx
	movl %edx, page_table(,%ebx,4)
	HCALL LHCALL_SET_PTE, $page_dir, %ecx, %edx
	popl %eax
	popl %edx
	popl %ebx
	popl %ecx
	popl %edi
	popl %esi
	addl $4, %esp			/* the error code */
	jmp lguest_iret

/* Break the four pages again: SET_PTE of each, as the Guest's own tables say. */
.macro BREAK page, pte
	movl $\\pte, page_table + (\\page >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $\\page, $\\pte
.endm
arm:	pushl %eax
	pushl %ebx
	pushl %ecx
	pushl %edx
	pushl %esi
	BREAK NOT_PRESENT, 0
	BREAK READ_ONLY, NOT_PRESENT + 0x1065
	BREAK SUPERVISOR, NOT_PRESENT + 0x2063
	BREAK FETCH, 0
	popl %esi
	popl %edx
	popl %ecx
	popl %ebx
	popl %eax
	ret
on_syscall:
	cmpl $0xdead, %eax
	je finish
	call arm
	jmp lguest_iret
finish:	POWEROFF

faults:	movl $0x11111111, %eax
	movl NOT_PRESENT + 0x124, %eax
	movl $0x22222222, %eax
	movl %eax, READ_ONLY + 0xffe		/* straddles into SUPERVISOR */
	movl $0x33333333, %eax
	movl SUPERVISOR + 0x10, %eax
	movl $0x44444444, %eax
	call FETCH + 0x20
	incl rounds_run
	ret

test_main:
	INIT
	call setup_user_paging
	movb $0xc3, FETCH + 0x20		/* ret */
	GATE 14, on_pf, {gate}
	GATE 0x80, on_syscall, 0xF, 3
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $ROUNDS, %ebp
1:	call arm
	call faults
	decl %ebp
	jnz 1b
	movl $ROUNDS, %ebp
	TO_USER user
user:	int $0x80
	call faults
	decl %ebp
	jnz user
	movl $0xdead, %eax
	int $0x80
	jmp .

	.data
log_at:	.long log
records: .long 0
rounds_run: .long 0
	.bss
log:	.space 4 * {words} * {records}
log_end:
"""


def fault_guest(asm_guest, gate: str, rounds: int = ROUNDS):
    return asm_guest(FAULT_GUEST.format(rounds=rounds, gate=gate, words=RECORD_WORDS,
                                        records=(KERNEL_FAULTS + USER_FAULTS) * ROUNDS))


def what_the_guest_saw(elf, guest) -> tuple[str, int, int, bytes, list[int]]:
    """The kill reason, how many faults the handler logged and rounds ran, the log (the
    last ones) and the registers at the end."""
    log, size = symbol(elf, "log"), 4 * RECORD_WORDS * (KERNEL_FAULTS + USER_FAULTS) * ROUNDS
    read = guest.memory.read_u32
    return (guest.dead or "", read(symbol(elf, "records")), read(symbol(elf, "rounds_run")),
            guest.memory.read(log, size), guest.switcher.get_many(GENERAL_REGS))


@pytest.mark.parametrize("gate", ["0xF", "0xE"], ids=["trap-gate", "interrupt-gate"])
def test_the_cpu_reflects_page_faults_as_the_host_would(asm_guest, gate) -> None:
    """Not present, read-only (a write straddling into the next page), supervisor-only
    from ring 3, and an instruction fetch, from ring 1 and ring 3: the same cr2, error
    codes, frames, irq_enabled and registers whichever path; the native path's CPU
    really delivered them, without an exit each."""
    elf = fault_guest(asm_guest, gate)
    native, python = make_guest(elf, native=True), make_guest(elf, native=False)
    for guest in (native, python):
        assert guest.run().reason == "CRASH: Power down"
    seen = what_the_guest_saw(elf, native)
    assert seen == what_the_guest_saw(elf, python)
    assert seen[1:3] == ((KERNEL_FAULTS + USER_FAULTS) * ROUNDS, 2 * ROUNDS)
    assert python.native_gates is None
    assert native.traps_reflected == python.traps_reflected
    # Only a fault whose frame lands on a stack page the fill hook has not answered yet
    # leaves the emulator.
    assert native.native_gates.reflected >= (KERNEL_FAULTS + USER_FAULTS) * (ROUNDS - 1)
    # ... and the refusals behind them were C's own (fills.c's `refuse`), no Python at all.
    assert native.switcher.fill_answers.refused >= (KERNEL_FAULTS + USER_FAULTS) * (ROUNDS - 1)


@pytest.mark.parametrize("gate", ["0xF", "0xE"], ids=["trap-gate", "interrupt-gate"])
def test_kicks_during_raised_page_faults_run_nothing_twice(asm_guest, gate) -> None:
    """Thousands of kicks from another thread while the CPU raises and delivers page
    faults: every fault is logged once and every round runs once (the same as without
    kicks)."""
    elf = fault_guest(asm_guest, gate, KICKED_ROUNDS)
    quiet, kicked = make_guest(elf, native=True), make_guest(elf, native=True)
    assert quiet.run().reason == "CRASH: Power down"
    result, kicks = run_while_rung(kicked)
    assert result.reason == "CRASH: Power down"
    assert kicks > 1000
    seen = what_the_guest_saw(elf, kicked)
    assert seen == what_the_guest_saw(elf, quiet)
    assert seen[1:3] == ((KERNEL_FAULTS + USER_FAULTS) * KICKED_ROUNDS, 2 * KICKED_ROUNDS)
    assert kicked.native_gates.reflected > 0


NO_HANDLER_GUEST = """
on_pf:	movl $0x380067, page_table + (0x380000 >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $0x380000, $0x380067
	addl $4, %esp
	iret
test_main:
	INIT
	call setup_user_paging
	{gate_line}
	movl $0, page_table + (0x380000 >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $0x380000, $0
	movl $0, page_table + (0x381000 >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $0x381000, $0
	HCALL LHCALL_SET_STACK, $0x69, $0x383000, $1
	{kernel_fault}
	{unmap_stack}
	TO_USER user
user:	movl 0x381008, %eax
	jmp .
"""


UNMAP_STACK = ("movl $0, page_table + (0x382000 >> 12) * 4\n"
               "\tHCALL LHCALL_SET_PTE, $page_dir, $0x382000, $0")


@pytest.mark.parametrize("gate_line, kernel_fault, unmap_stack, reason", [
    ("", "", "", "unhandled trap 14 at "),
    ("GATE 14, on_pf, 0xF", "movl 0x380004, %eax", UNMAP_STACK, "Bad address"),
], ids=["no-gate-14", "unmapped-stack"])
def test_a_fault_the_cpu_cannot_deliver_gets_the_python_paths_kill(asm_guest, gate_line, kernel_fault,
                                                                   unmap_stack, reason) -> None:
    """No gate 14, or a gate 14 whose kernel stack (SET_STACK's, from ring 3) is not
    mapped, after the CPU delivered a fault from ring 1: the same kill and status both
    ways."""
    elf = asm_guest(NO_HANDLER_GUEST.format(gate_line=gate_line, kernel_fault=kernel_fault,
                                            unmap_stack=unmap_stack))
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert native.status == 1
    assert native.reason.startswith(reason)
    assert (native.status, native.reason) == (python.status, python.reason)
    if not gate_line:
        assert native.reason.endswith("(0x381008)")


BEFORE_INIT_GUEST = """
test_main:
	movl 0xf0000010, %eax
	jmp .
"""


def test_a_fault_before_init_is_unhandled_both_ways(asm_guest) -> None:
    """Before INIT there is no gate and no lguest_data: the same kill both ways."""
    elf = asm_guest(BEFORE_INIT_GUEST)
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert native.status == 1
    assert (native.status, native.reason) == (python.status, python.reason)


RUNAWAY_GUEST = """
test_main:
	INIT
	call setup_user_paging
	GATE 14, 0x384000, 0xE
	.irp page, 0x380000, 0x381000, 0x384000
	movl $0, page_table + (\\page >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $\\page, $0
	.endr
	HCALL LHCALL_SET_STACK, $0x69, $0x383000, $1
	TO_USER user
user:	movl 0x380000, %eax
	jmp .
"""


def test_a_handler_that_faults_itself_runs_the_stack_out_the_same_way(asm_guest) -> None:
    """A hostile gate 14 whose handler is on a page the Guest left unmapped: each fault's
    delivery faults again at the handler, frames pile up down the one mapped kernel
    stack page until the next cannot be pushed; the same kill both ways."""
    elf = asm_guest(RUNAWAY_GUEST)
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert native.status == 1
    assert (native.status, native.reason) == (python.status, python.reason)
    assert native.reason.startswith("Bad address")
    guest = make_guest(elf, native=True)
    assert guest.run().reason == native.reason
    assert guest.native_gates.reflected > 200  # the CPU delivered the pile, not the Host
