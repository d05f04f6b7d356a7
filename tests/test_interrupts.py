"""Interrupts and traps as lguest 4.x delivers them (spec §4), from real guests."""

from __future__ import annotations

import struct
import threading
import time

from conftest import lguest, make_guest, symbol

from lguest import abi

POWER_OFF = (0, "CRASH: Power down")
FAIL = """
fail:	SHUTDOWN $failed
failed:	.asciz "check failed"
"""


def boots_ok(*args: str) -> None:
    run = lguest(*args)
    assert (run.status, run.reason) == POWER_OFF, run.stderr


# --- the IDT (§4.5) ------------------------------------------------------------------------

def test_load_idt_entry_rules(asm_guest) -> None:
    elf = asm_guest("""
handler: nop
test_main:
	INIT
	GATE 3, handler, 0xF, 3
	GATE 2, handler			/* NMI: ignored */
	GATE 8, handler			/* double fault: ignored */
	GATE 15, handler		/* reserved: ignored */
	GATE 0x1f, handler		/* the hypercall vector: ignored */
	HCALL LHCALL_LOAD_IDT_ENTRY, $0x20, $0x12345678, $0x12348eff	/* selector and low bits */
	GATE 0x21, handler
	HCALL LHCALL_LOAD_IDT_ENTRY, $0x21, $0, $0	/* not present: cleared */
	POWEROFF
""")
    guest = make_guest(elf)
    assert guest.run().reason == "CRASH: Power down"
    handler = symbol(elf, "handler")
    assert guest.idt.entries[3] == ((0x61 << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | 0xEF00)
    for ignored in (2, 8, 15, 0x1F):
        assert guest.idt.entries[ignored] == (0, 0)
    assert guest.idt.entries[0x20] == (0x00615678, 0x12348E00)  # bit 12 and the low byte dropped
    assert guest.idt.entries[0x21] == (0, 0)


# --- frames (§4.6) ---------------------------------------------------------------------------

RING1_UD = """
ud_handler:
	cmpl $fault, (%esp)
	jne fail
	cmpl $0x61, 4(%esp)
	jne fail
	testl $0x200, 8(%esp)
	{if_check} fail
	leal 12(%esp), %eax
	cmpl saved_esp, %eax
	jne fail
	cmpl ${irq_enabled_after}, lguest_data + LD_IRQ_ENABLED
	jne fail
	POWEROFF
test_main:
	INIT
	GATE 6, ud_handler, {gate}
	movl $0x1004, lguest_data + LD_IRQ_ENABLED	/* nonzero, but no IF bit */
	movl %esp, saved_esp
fault:	ud2
""" + FAIL + "\n.data\nsaved_esp: .long 0\n.text\n"


def test_ring1_frame_through_an_interrupt_gate(asm_guest) -> None:
    """Host-built frame: same stack, eip/cs/eflags with IF from irq_enabled; then irq_enabled 0."""
    boots_ok("32", str(asm_guest(RING1_UD.format(gate="0xE", if_check="jnz", irq_enabled_after="0"))))


def test_ring1_frame_of_a_direct_trap(asm_guest) -> None:
    """A trap gate goes direct, as through lguest's real IDT: the CPU's IF (always 1) is
    pushed and irq_enabled is left alone (spec §4.4: "accepted as harmless")."""
    boots_ok("32", str(asm_guest(RING1_UD.format(gate="0xF", if_check="jz", irq_enabled_after="0x1004"))))


def test_ring1_error_code_frame_and_interrupt_gate(asm_guest) -> None:
    """#GP pushes an error code; an interrupt gate clears irq_enabled; IF=1 came from it."""
    boots_ok("32", str(asm_guest("""
gp_handler:
	cmpl $0x28, (%esp)		/* error code */
	jne fail
	cmpl $fault, 4(%esp)
	jne fail
	cmpl $0x61, 8(%esp)
	jne fail
	testl $0x200, 12(%esp)		/* IF set: irq_enabled was 0x200 */
	jz fail
	cmpl $0, lguest_data + LD_IRQ_ENABLED
	jne fail
	POWEROFF
test_main:
	INIT
	GATE 13, gp_handler, 0xE
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $0x2b, %eax
fault:	movl %eax, %ds
""" + FAIL)))


def test_ring3_frame_uses_the_set_stack_stack(asm_guest) -> None:
    boots_ok("32", str(asm_guest("""
ud_handler:
	cmpl $kstack_top - 20, %esp	/* SET_STACK's esp, five words down */
	jne fail
	cmpl $fault, (%esp)
	jne fail
	cmpl $0x73, 4(%esp)
	jne fail
	testl $0x200, 8(%esp)
	jz fail
	cmpl $ustack_top - 4, 12(%esp)	/* the user's esp after its push */
	jne fail
	cmpl $0x7b, 16(%esp)
	jne fail
	movl %ss, %eax
	cmpl $0x69, %eax
	jne fail
	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 6, ud_handler, 0xF
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	TO_USER user
user:	pushl $1
fault:	ud2
""" + FAIL)))


def test_trap_frame_on_unmapped_stack_kills(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	call setup_user_paging
	GATE 6, test_main
	movl $0x900000, %esp		/* beyond the 4 MiB the page table maps */
	ud2
""")))
    assert run.reason == "Bad address 0x900000"


# --- int n and its gate's DPL (§4.4) ---------------------------------------------------------

def test_int3_from_user_mode_through_a_dpl3_gate(asm_guest) -> None:
    boots_ok("32", str(asm_guest("""
bp_handler:
	cmpl $after, (%esp)
	jne fail
	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 3, bp_handler, 0xF, 3
	TO_USER user
user:	int3
after:	jmp .
""" + FAIL)))


def test_int3_through_a_dpl0_gate_is_gp_1a(asm_guest) -> None:
    boots_ok("32", str(asm_guest("""
gp_handler:
	cmpl $0x1a, (%esp)		/* vector 3 * 8 + 2 */
	jne fail
	cmpl $bp, 4(%esp)		/* at the int3, not after it */
	jne fail
	POWEROFF
bp_handler: jmp fail
test_main:
	INIT
	GATE 13, gp_handler
	GATE 3, bp_handler, 0xF, 0
bp:	int3
""" + FAIL)))


SYSCALL_GUEST = """
syscall:
	cmpl $0x73, 4(%esp)
	jne fail
	cmpl $0x{irq_enabled}, lguest_data + LD_IRQ_ENABLED
	jne fail
	POWEROFF
test_main:
	INIT
	call setup_user_paging
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	GATE {vector}, syscall, {gate}, 3
	TO_USER user
user:	int ${vector}
	jmp .
""" + FAIL


def test_syscall_through_trap_gate_goes_direct(asm_guest) -> None:
    """A trap gate for 0x80 is delivered inside the emulator hook: irq_enabled untouched."""
    guest = make_guest(asm_guest(SYSCALL_GUEST.format(vector="0x80", gate="0xF", irq_enabled="200")))
    assert guest.run().reason == "CRASH: Power down"
    assert guest.switcher.direct_traps == 1


def test_syscall_through_interrupt_gate_is_reflected(asm_guest) -> None:
    """Linux >= 4.6 uses an interrupt gate for 0x80: the Host delivers it, clearing irq_enabled."""
    guest = make_guest(asm_guest(SYSCALL_GUEST.format(vector="0x80", gate="0xE", irq_enabled="0")))
    assert guest.run().reason == "CRASH: Power down"
    assert guest.switcher.direct_traps == 0


def test_alternative_syscall_vector(asm_guest) -> None:
    """--syscall-vector=64 makes int $0x40 a system call (direct through a trap gate)..."""
    elf = asm_guest(SYSCALL_GUEST.format(vector="0x40", gate="0xF", irq_enabled="200"))
    guest = make_guest(elf, syscall_vector=0x40)
    assert guest.run().reason == "CRASH: Power down"
    assert guest.switcher.direct_traps == 1
    boots_ok("--syscall-vector=64", "32", str(elf))
    # ...and without the option, 0x40 is an ordinary vector with a DPL-0 stub: #GP(0x202).
    assert lguest("32", str(elf)).reason.startswith("unhandled trap 13 at ")


def test_reflected_alternative_vector(asm_guest) -> None:
    elf = asm_guest(SYSCALL_GUEST.format(vector="0x40", gate="0xE", irq_enabled="0"))
    guest = make_guest(elf, syscall_vector=0x40)
    assert guest.run().reason == "CRASH: Power down"
    assert guest.switcher.direct_traps == 0


# --- virtual interrupts (§4.7) ---------------------------------------------------------------

IRQ_GUEST = """
irq1:
	incl irq_count
	jmp lguest_iret
test_main:
	INIT
	GATE 0x21, irq1
	{setup}
1:	cmpl $0, irq_count
	je 1b
	{after}
	POWEROFF
	.data
irq_count: .long 0
	.text
""" + FAIL


def run_with_irq(elf, irq: int = 1, delay: float = 0.05, **kwargs):
    guest = make_guest(elf, **kwargs)
    timer = threading.Timer(delay, guest.interrupt, (irq,))
    timer.start()
    result = guest.run()
    timer.cancel()
    return guest, result


def test_interrupt_is_delivered_when_enabled_and_unblocked(asm_guest) -> None:
    elf = asm_guest(IRQ_GUEST.format(setup="""
	movl $0, lguest_data + LD_BLOCKED
	movl $0x200, lguest_data + LD_IRQ_ENABLED""", after=""))
    guest, result = run_with_irq(elf)
    assert result.reason == "CRASH: Power down"
    assert guest.memory.read_u32(guest.lguest_data + abi.LguestData.IRQ_PENDING) == 0


def test_blocked_interrupt_waits_for_unmask(asm_guest) -> None:
    """Masked (bit 1 of blocked_interrupts): stays pending; delivered once unmasked."""
    elf = asm_guest("""
irq1:
	incl irq_count
	jmp lguest_iret
test_main:
	INIT
	GATE 0x21, irq1
	movl $2, lguest_data + LD_BLOCKED
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $3000000, %ecx
1:	HCALL LHCALL_FLUSH_ASYNC	/* the Host looks at pending irqs after each */
	cmpl $0, irq_count
	jne fail
	movl $5000, %ecx
2:	loop 2b
	cmpl $1, polls_left
	je unmask
	decl polls_left
	jmp 1b
unmask:
	movl $0, lguest_data + LD_BLOCKED
	HCALL LHCALL_SEND_INTERRUPTS
	cmpl $1, irq_count
	jne fail
	POWEROFF
	.data
irq_count: .long 0
polls_left: .long 2000
	.text
""" + FAIL)
    guest, result = run_with_irq(elf, delay=0.0)
    assert result.reason == "CRASH: Power down"


def test_interrupt_unmasked_without_a_hypercall_is_delivered(asm_guest) -> None:
    """Linux unmasks an irq by clearing its bit, and may then spin without trapping: the
    Host must look again by itself.  The irq is pending before the Guest even starts."""
    elf = asm_guest("""
irq1:
	incl irq_count
	jmp lguest_iret
test_main:
	movl $2, lguest_data + LD_BLOCKED	/* masked before the Host can ever look */
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	INIT
	GATE 0x21, irq1			/* a hypercall: the Host sees irq 1 pending, and blocked */
	movl $0, lguest_data + LD_BLOCKED	/* unmasked behind the Host's back */
1:	cmpl $0, irq_count
	je 1b
	POWEROFF
	.data
irq_count: .long 0
	.text
""")
    guest = make_guest(elf)
    guest.interrupt(1)
    watchdog = threading.Timer(20, guest.kill, ("hang guard: the unmasked irq never came",))
    watchdog.start()
    try:
        assert guest.run().reason == "CRASH: Power down"
    finally:
        watchdog.cancel()


def test_interrupt_while_disabled_is_delivered_at_next_enable(asm_guest) -> None:
    """irq_enabled 0: the Host sets irq_pending; the Guest's enable sends SEND_INTERRUPTS."""
    elf = asm_guest("""
irq1:
	incl irq_count
	jmp lguest_iret
test_main:
	INIT
	GATE 0x21, irq1
	movl $0, lguest_data + LD_BLOCKED
1:	cmpl $0, lguest_data + LD_IRQ_PENDING
	je 1b
	cmpl $0, irq_count
	jne fail
	movl $0x200, lguest_data + LD_IRQ_ENABLED	/* lg_irq_enable: store, then test pending */
	cmpl $0, lguest_data + LD_IRQ_PENDING
	je fail
	HCALL LHCALL_SEND_INTERRUPTS
	cmpl $1, irq_count
	jne fail
	cmpl $0, lguest_data + LD_IRQ_PENDING	/* nothing more to deliver: cleared */
	jne fail
	POWEROFF
	.data
irq_count: .long 0
	.text
""" + FAIL)
    guest, result = run_with_irq(elf)
    assert result.reason == "CRASH: Power down"


def test_interrupt_writes_the_time(asm_guest) -> None:
    elf = asm_guest(IRQ_GUEST.format(setup="""
	movl $0, lguest_data + LD_BLOCKED
	movl $0, lguest_data + 12
	movl $0x200, lguest_data + LD_IRQ_ENABLED""", after="""
	cmpl $1700000000, lguest_data + 12
	jb fail"""))
    _, result = run_with_irq(elf)
    assert result.reason == "CRASH: Power down"


def test_noirq_iret_reuses_the_frame(asm_guest) -> None:
    """An interrupt found with eip at noirq_iret is taken on the iret's own frame."""
    elf = asm_guest("""
irq1:
	cmpl $target, (%esp)		/* the iret's frame, not a new one */
	jne fail
	cmpl $frame_top - 12, %esp
	jne fail
	incl irq_count
	jmp lguest_iret
test_main:
	movl $my_iret, lguest_data + LD_NOIRQ_IRET
	INIT
	GATE 0x21, irq1
	movl $0, lguest_data + LD_BLOCKED
	movl $frame_top, %esp
	pushl $0x202
	pushl $0x61
	pushl $target
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $LHCALL_FLUSH_ASYNC, %eax
	int $0x1f			/* the irq is pending: the Host delivers it right here */
my_iret:
	iret
target:
	cmpl $1, irq_count
	jne fail
	POWEROFF
	.data
irq_count: .long 0
	.bss
	.space 256
frame_top:
	.text
""" + FAIL)
    guest = make_guest(elf)
    guest.interrupt(1)
    assert guest.run().reason == "CRASH: Power down"


# --- HALT and the clock (§4.7, §4.8) ----------------------------------------------------------

HALT_GUEST = """
timer:
	testl $0x200, 8(%esp)		/* woken with interrupts enabled */
	jz fail
	incl ticks
	jmp lguest_iret
test_main:
	INIT
	movl lguest_data + 12, %eax	/* the time INIT wrote */
	movl %eax, init_time
	movl lguest_data + 16, %eax
	movl %eax, init_time + 4
	GATE 0x20, timer
	movl $0, lguest_data + LD_BLOCKED
	movl $0, lguest_data + LD_IRQ_ENABLED
	HCALL LHCALL_SET_CLOCKEVENT, $DELAY_NS
	HCALL LHCALL_HALT
	cmpl $1, ticks
	jne fail
	POWEROFF
	.data
	.globl init_time
ticks: .long 0
init_time: .long 0, 0
	.text
""" + FAIL


def test_halt_is_woken_by_the_timer_without_spinning(asm_guest) -> None:
    """The halted vCPU waits on an event: it sleeps once per wake-up, never polls."""
    elf = asm_guest("\t.set DELAY_NS, 300000000\n" + HALT_GUEST)
    guest = make_guest(elf)
    assert guest.run().reason == "CRASH: Power down"
    assert guest.stats["interrupts"] == 1
    # One sleep for the tick (a wake-up already signalled may add one); a poll would count hundreds.
    assert 1 <= guest.stats["halted sleeps"] <= 2, guest.stats
    # The tick came no earlier than asked: compare the time INIT wrote with the delivery's.
    data = symbol(elf, "lguest_data")
    init_time = symbol(elf, "init_time")
    at_init = struct.unpack("<ii", guest.memory.ram[init_time:init_time + 8])
    at_tick = struct.unpack("<ii", guest.memory.ram[data + 12:data + 20])
    slept_ns = (at_tick[0] - at_init[0]) * 10**9 + at_tick[1] - at_init[1]
    assert slept_ns >= 290_000_000, slept_ns  # 300 ms, less what an NTP slew could take


def test_set_clockevent_zero_cancels(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
timer:	jmp fail
test_main:
	INIT
	GATE 0x20, timer
	movl $0, lguest_data + LD_BLOCKED
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	HCALL LHCALL_SET_CLOCKEVENT, $20000000
	HCALL LHCALL_SET_CLOCKEVENT, $0
	movl $20000000, %ecx
1:	loop 1b				/* long enough for 20 ms to pass */
	POWEROFF
""" + FAIL)))
    assert (run.status, run.reason) == POWER_OFF


# --- FPU and TS (§7.5) ------------------------------------------------------------------------

def test_ts_makes_fpu_use_trap_and_clts_clears_it(asm_guest) -> None:
    boots_ok("32", str(asm_guest("""
nm_handler:
	incl nm_count
	HCALL LHCALL_TS, $0
	jmp lguest_iret
test_main:
	INIT
	GATE 7, nm_handler
	fninit				/* TS clear: no trap */
	cmpl $0, nm_count
	jne fail
	HCALL LHCALL_TS, $1
	fninit				/* traps once, then runs */
	fninit
	cmpl $1, nm_count
	jne fail
	POWEROFF
	.data
nm_count: .long 0
	.text
""" + FAIL)))


# --- the kick: interrupts from other threads reach a busy vCPU --------------------------------

def test_thousands_of_kicks_while_the_guest_runs_and_traps(asm_guest) -> None:
    """docs/design.md: prove the kick mechanism before relying on it."""
    elf = asm_guest("""
irq1:
	incl irq_count
	jmp lguest_iret
ud_handler:
	addl $2, (%esp)			/* skip the ud2 */
	jmp lguest_iret
test_main:
	INIT
	GATE 0x21, irq1
	GATE 6, ud_handler, 0xF
	movl $0, lguest_data + LD_BLOCKED
	movl $0x200, lguest_data + LD_IRQ_ENABLED
1:	HCALL LHCALL_FLUSH_ASYNC
	ud2
	movl $2000, %ecx
2:	loop 2b
	cmpl $0, stop_flag
	je 1b
	POWEROFF
	.data
	.globl irq_count, stop_flag
irq_count: .long 0
stop_flag: .long 0
	.text
""")
    guest = make_guest(elf)
    count_at, stop_at = symbol(elf, "irq_count"), symbol(elf, "stop_flag")
    kicks = 3000
    delivered = []

    def raise_irqs() -> None:
        deadline = time.monotonic() + 60
        for n in range(1, kicks + 1):
            guest.interrupt(1)
            while guest.memory.read_u32(count_at) < n and time.monotonic() < deadline:
                time.sleep(0)
        delivered.append(guest.memory.read_u32(count_at))
        guest.memory.ram[stop_at:stop_at + 4] = struct.pack("<I", 1)

    thread = threading.Thread(target=raise_irqs)
    thread.start()
    result = guest.run()
    thread.join()
    assert result.reason == "CRASH: Power down"
    assert delivered == [kicks]


def test_kicks_never_split_the_world_switch(asm_guest) -> None:
    """Direct traps from ring 3 enter through the trampoline inside the emulator; a timer
    kick landing there must not let the Switcher's own state pass for the Guest's."""
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, sys_handler, 0xF, 3
	GATE 0x20, timer_handler, 0xE, 0
	movl $0, lguest_data + LD_BLOCKED
	HCALL LHCALL_SET_CLOCKEVENT, $200000
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	TO_USER user_loop
user_loop:
	int $0x80
	jmp user_loop
sys_handler:
	movl %esp, %edi
	movl $0x12345678, %ebp
	call portloop
	cmpl %esp, %edi
	jne fail
	cmpl $0x12345678, %ebp
	jne fail
	incl calls
	cmpl $3000, calls
	jae done
	jmp lguest_iret
portloop:
	subl $64, %esp
	movl $0xdeadbeef, (%esp)
	movl $20, %ecx
1:	movw $0x80, %dx
	outb %al, %dx
	decl %ecx
	jnz 1b
	cmpl $0xdeadbeef, (%esp)
	jne fail
	addl $64, %esp
	ret
timer_handler:
	pushal
	incl ticks
	HCALL LHCALL_SET_CLOCKEVENT, $200000
	popal
	jmp lguest_iret
done:	cmpl $0, ticks
	je fail
	POWEROFF
	.data
calls: .long 0
ticks: .long 0
	.text
""" + FAIL)))
    assert (run.status, run.reason) == POWER_OFF, run.stderr


def test_deferred_interrupt_reaches_a_busy_user_program(asm_guest) -> None:
    """The tick arrives while interrupts are disabled; the Guest then irets to a user loop
    that never traps.  The Host must come back and deliver it anyway."""
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	call setup_user_paging
	GATE 0x20, timer_handler, 0xE, 0
	movl $0, lguest_data + LD_BLOCKED
	movl $0, lguest_data + LD_IRQ_ENABLED
	HCALL LHCALL_SET_CLOCKEVENT, $1000000
1:	cmpl $0, lguest_data + LD_IRQ_PENDING	/* wait until the Host has deferred the tick */
	je 1b
	pushl $0x7b
	pushl $ustack_top
	pushl $0x202
	pushl $0x73
	pushl $user
	jmp lguest_iret				/* enables interrupts without a hypercall */
user:	jmp user
timer_handler:
	POWEROFF
""")))
    assert (run.status, run.reason) == POWER_OFF, run.stderr
