"""Traps the emulated CPU delivers itself through the real IDT (interrupts.c), against
the pure-Python Host's delivery (--no-native): the Guest must see the same frames,
registers and irq_enabled, and the same kills, whichever delivered them."""

from __future__ import annotations

import pytest
from conftest import lguest, make_guest, run_both_ways, run_while_rung, symbol

from lguest.host.state import GENERAL_REGS

ROUNDS = 40
KINDS = 5  # int $0x80, int3, into, #DE, #UD: each once a round, from ring 1 and from ring 3
RECORD_WORDS = 10
KICKED_ROUNDS = 40000  # long enough for thousands of kicks

# Each handler logs what it found (the prelude's LOG_TRAP): which trap and its own %ss,
# the five words from the frame up, irq_enabled, %eax and its own %esp; then it steps
# over a faulting instruction and returns through lguest_iret.
TRAP_GUEST = """
	.set ROUNDS, {rounds}
on_syscall:
	cmpl $0xdead, %eax
	je finish
	pushl $0
	pushl $0x80
	jmp record
on_bp:	pushl $0
	pushl $3
	jmp record
on_of:	pushl $0
	pushl $4
	jmp record
on_de:	pushl $2		/* divl %ecx */
	pushl $0
	jmp record
on_ud:	pushl $2		/* ud2 */
	pushl $6
	jmp record
record:
	pushl %esi
	pushl %edi
	pushl %ecx
	movl %ss, %esi
	LOG_TRAP 12(%esp), %esi, 20
	movl 16(%esp), %ecx
	addl %ecx, 20(%esp)
	popl %ecx
	popl %edi
	popl %esi
	addl $8, %esp
	jmp lguest_iret
finish:	POWEROFF

traps:	movl $0x11111111, %eax
	int $0x80
	movl $0x33333333, %eax
	int3
	movl $0x7fffffff, %eax
	addl $1, %eax
	into
	xorl %edx, %edx
	movl $5, %eax
	xorl %ecx, %ecx
	divl %ecx
	ud2
	ret

test_main:
	INIT
	call setup_user_paging
	GATE 0x80, on_syscall, {gate}, 3
	GATE 3, on_bp, 0xF, 3
	GATE 4, on_of, 0xF, 3
	GATE 0, on_de, 0xF
	GATE 6, on_ud, 0xF
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $ROUNDS, %ebp
1:	call traps
	decl %ebp
	jnz 1b
	movl $ROUNDS, %ebp
	TO_USER user
user:	call traps
	decl %ebp
	jnz user
	movl $0xdead, %eax
	int $0x80
	jmp .

	.data
log_at:	.long log
records: .long 0
	.bss
log:	.space 4 * {words} * {records}
log_end:
"""


def trap_guest(asm_guest, gate: str, rounds: int = ROUNDS):
    return asm_guest(TRAP_GUEST.format(rounds=rounds, gate=gate, words=RECORD_WORDS,
                                       records=2 * KINDS * ROUNDS))


def what_the_guest_saw(elf, guest) -> tuple[str, int, bytes, list[int]]:
    """The kill reason, how many traps the handlers logged, the log (the last ones)
    and the registers at the end."""
    log, size = symbol(elf, "log"), 4 * RECORD_WORDS * 2 * KINDS * ROUNDS
    return (guest.dead or "", guest.memory.read_u32(symbol(elf, "records")), guest.memory.read(log, size),
            guest.switcher.get_many(GENERAL_REGS))


@pytest.mark.parametrize("gate", ["0xF", "0xE"], ids=["trap-gate", "interrupt-gate"])
def test_the_cpu_delivers_what_the_host_would(asm_guest, gate) -> None:
    """int $0x80 (direct through a trap gate, or reflected through an interrupt gate as
    Linux 4.9's), int3, into, #DE and #UD from ring 1 and ring 3: the same log, the same
    registers, whichever path; and on the native path the CPU really delivered them."""
    elf = trap_guest(asm_guest, gate)
    native, python = make_guest(elf, native=True), make_guest(elf, native=False)
    for guest in (native, python):
        assert guest.run().reason == "CRASH: Power down"
    assert what_the_guest_saw(elf, native) == what_the_guest_saw(elf, python)
    assert what_the_guest_saw(elf, native)[1] == 2 * KINDS * ROUNDS
    assert python.native_gates is None
    assert native.native_gates is not None
    assert (native.switcher.direct_traps, native.traps_reflected) == (
        python.switcher.direct_traps, python.traps_reflected)
    # Only the first trap onto a stack the fill hook has not seen yet stays in Python.
    delivered_by_cpu = native.native_gates.direct + native.native_gates.reflected
    assert delivered_by_cpu >= 2 * KINDS * (ROUNDS - 1)
    if gate == "0xE":
        assert native.native_gates.reflected >= 2 * (ROUNDS - 1)
    else:
        assert native.native_gates.reflected == 0


@pytest.mark.parametrize("gate", ["0xF", "0xE"], ids=["trap-gate", "interrupt-gate"])
def test_kicks_during_the_cpus_delivery_run_nothing_twice(asm_guest, gate) -> None:
    """Thousands of kicks from another thread while the CPU delivers: every trap is
    logged exactly once (the log is the same as without kicks)."""
    elf = trap_guest(asm_guest, gate, KICKED_ROUNDS)
    quiet, kicked = make_guest(elf, native=True), make_guest(elf, native=True)
    assert quiet.run().reason == "CRASH: Power down"
    result, kicks = run_while_rung(kicked)
    assert result.reason == "CRASH: Power down"
    assert kicks > 1000
    assert what_the_guest_saw(elf, kicked) == what_the_guest_saw(elf, quiet)
    assert what_the_guest_saw(elf, kicked)[1] == 2 * KINDS * KICKED_ROUNDS
    assert kicked.native_gates.direct + kicked.native_gates.reflected > 0


FORBIDDEN_GATE_GUEST = """
on_syscall:
	iret
on_gp:	movl (%esp), %edi		/* the error code */
	movl 4(%esp), %ebp		/* the eip it blames */
	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, on_syscall, 0xF, 3
	GATE 5, on_syscall, 0xF, 1
	GATE 13, on_gp, 0xF
	TO_USER user
user:	int $0x80			/* delivered: the kernel stack is known now */
	int $0x80
here:	int $5
	jmp .
"""


def test_a_gate_the_caller_may_not_use_is_gp_at_the_int(asm_guest) -> None:
    """Once the CPU could deliver from ring 3, a DPL-1 gate still gives #GP(vector*8+2)
    with EIP at the `int`, as the Host's Python raises it."""
    elf = asm_guest(FORBIDDEN_GATE_GUEST)
    seen = [guest.switcher.get_many(("edi", "ebp")) for guest in run_both_ways(elf)]
    assert seen[0] == seen[1] == [5 * 8 + 2, symbol(elf, "here")]


LOST_STACK_GUEST = """
on_syscall:
	iret
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, on_syscall, {gate}, 3
	TO_USER user
user:	int $0x80			/* the CPU knows this stack from now on */
	int $0x80
	int $0x80
	movl $0xdead, %eax
	int $0x80
"""


@pytest.mark.parametrize("gate", ["0xF", "0xE"], ids=["trap-gate", "interrupt-gate"])
@pytest.mark.parametrize("stack", ["$0x69, $0x7ffff000", "$0x61, $kstack_top"],
                         ids=["unmapped", "code-segment"])
def test_a_bad_kernel_stack_behaves_as_on_the_python_path(asm_guest, gate, stack) -> None:
    """After the CPU delivered a few system calls, the kernel moves SET_STACK's stack
    to an address its tables do not map, or names its code segment as the stack's: the
    TSS changes with it, and the next system call gets what the Host's Python gives it
    (here: a kill), on both paths."""
    source = LOST_STACK_GUEST.format(gate=gate).replace(
        "on_syscall:\n\tiret",
        "on_syscall:\n\tcmpl $0xdead, %eax\n\tjne 1f\n"
        f"\tHCALL LHCALL_SET_STACK, {stack}, $0\n\tmovl $0, %eax\n1:\tiret")
    elf = asm_guest(source + "\tint $0x80\n\tjmp .\n")
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert native.status == 1
    assert native.reason.startswith(("Bad address", "unhandled trap 256"))
    assert (native.status, native.reason) == (python.status, python.reason)


@pytest.mark.parametrize("gate", ["0xF", "0xE"], ids=["trap-gate", "interrupt-gate"])
def test_a_restored_guest_gets_the_real_idt_and_tss_back(asm_guest, gate) -> None:
    """A snapshot taken once the gates and SET_STACK are in, restored into a new Guest:
    the real IDT and the TSS are rebuilt, so the CPU delivers from ring 1 and ring 3
    again, and the Guest sees what it would have seen without the snapshot."""
    elf = trap_guest(asm_guest, gate)
    saved, whole = make_guest(elf, native=True), make_guest(elf, native=True)
    states = []
    changed = saved.idt.changed

    def snapshot(guest) -> None:
        states.append(guest.save_state())
        guest.stop_run()

    def gate_changed(vector: int) -> None:
        changed(vector)
        if vector == 6:  # the last gate test_main loads
            saved.call_at_safe_point(snapshot)

    saved.idt.changed = gate_changed
    assert saved.run().reason == ""
    restored = make_guest(elf, native=True)
    restored.memory.ram[:saved.memory.size] = saved.memory.ram[:saved.memory.size]
    restored.restore_state(states[0])
    assert restored.run().reason == whole.run().reason == "CRASH: Power down"
    assert what_the_guest_saw(elf, restored) == what_the_guest_saw(elf, whole)
    assert restored.native_gates.direct + restored.native_gates.reflected >= 2 * KINDS * (ROUNDS - 1)


def test_a_debugger_sends_every_trap_back_to_python(asm_guest) -> None:
    """Once a debugger watches code, the CPU delivers nothing itself (its frames would
    land under watchpoints, unseen); the Guest sees the same, and the counts stay."""
    elf = trap_guest(asm_guest, "0xE")
    watched, python = make_guest(elf, native=True), make_guest(elf, native=False)
    watched.switcher.watch_code(0x3FF000, 0x3FF000, lambda eip: None)  # code never run
    for guest in (watched, python):
        assert guest.run().reason == "CRASH: Power down"
    assert what_the_guest_saw(elf, watched) == what_the_guest_saw(elf, python)
    assert watched.native_gates.direct + watched.native_gates.reflected == 0
    assert watched.traps_reflected == python.traps_reflected
