"""Interrupts from other threads delivered by the emulated CPU itself (irqs.c,
native_irqs.py), against the run loop's delivery (--no-native): the Guest must see the
same frames, the same irq_enabled and the same lguest_data, however its interrupts came."""

from __future__ import annotations

import struct
import threading
import time

from conftest import make_guest, symbol
from test_interrupts import FAIL

from lguest import abi
from lguest.host import native_irqs

RAISES = 400

# irq 1 through an interrupt gate, irq 2 through a trap gate, taken from ring 1 and ring 3.
# Each handler logs what the Guest can see: the pushed CS and EFLAGS' IF, irq_enabled
# inside the handler, and whether the Host refreshed lguest_data.time (it is zeroed first).
RAISED_GUEST = """
.macro HANDLER name, irq
\\name:
	pushl %eax
	pushl %ebx
	movl log_at, %ebx
	movl $\\irq, (%ebx)
	movl 12(%esp), %eax		/* the pushed CS */
	movl %eax, 4(%ebx)
	movl 16(%esp), %eax		/* the pushed EFLAGS */
	andl $0x200, %eax
	movl %eax, 8(%ebx)
	movl lguest_data + LD_IRQ_ENABLED, %eax
	andl $0x200, %eax
	movl %eax, 12(%ebx)
	movl lguest_data + 12, %eax
	movl %eax, 16(%ebx)
	movl $0, lguest_data + 12
	addl $20, log_at
	cmpl $log_end, log_at
	jb 1f
	movl $log, log_at
1:	incl irq_count
	popl %ebx
	popl %eax
	jmp lguest_iret
.endm
	HANDLER irq1, 1
	HANDLER irq2, 2
on_syscall:
	POWEROFF

/* Busy with what a kernel does between interrupts: hypercalls served in C, a loop. */
work:	movl $0x200, lguest_data + LD_IRQ_ENABLED
1:	movl $300, %ecx
2:	loop 2b
	cmpl $0, stop_flag
	je 1b
	ret

test_main:
	INIT
	call setup_user_paging
	GATE 0x21, irq1
	GATE 0x22, irq2, 0xF
	GATE 0x80, on_syscall, 0xF, 3
	movl $0, lguest_data + LD_BLOCKED
	movl $0, lguest_data + 12
	call work
	movl $0, stop_flag
	TO_USER user
user:	movl $300, %ecx
1:	loop 1b
	cmpl $0, stop_flag
	je user
	int $0x80

	.data
	.globl irq_count, stop_flag
irq_count: .long 0
stop_flag: .long 0
log_at:	.long log
	.bss
log:	.space 20 * {raises}
log_end:
"""


def raise_and_wait(guest, elf, raises: int) -> list[int]:
    """Raise irq 1 and 2 in turn from another thread, each awaited (so none is merged
    with the next), in two halves: the Guest at ring 1, then at ring 3.  What the
    handler counted after each half."""
    count_at, stop_at = symbol(elf, "irq_count"), symbol(elf, "stop_flag")
    counted = []

    def raise_irqs() -> None:
        deadline = time.monotonic() + 60
        for n in range(1, raises + 1):
            guest.interrupt(1 + n % 2)
            while guest.memory.read_u32(count_at) < n and time.monotonic() < deadline:
                time.sleep(0)
            if n in (raises // 2, raises):
                counted.append(guest.memory.read_u32(count_at))
                guest.memory.ram[stop_at:stop_at + 4] = struct.pack("<I", 1)
                while n == raises // 2 and guest.memory.read_u32(stop_at) and time.monotonic() < deadline:
                    time.sleep(0)  # the Guest goes to ring 3 and clears the flag

    thread = threading.Thread(target=raise_irqs)
    thread.start()
    try:
        assert guest.run().reason == "CRASH: Power down"
    finally:
        thread.join()
    return counted


def what_the_handlers_saw(elf, guest) -> set[tuple[int, ...]]:
    data = guest.memory.read(symbol(elf, "log"), 20 * RAISES)
    return {struct.unpack_from("<5I", data, at)[:4] + (bool(struct.unpack_from("<I", data, at + 16)[0]),)
            for at in range(0, len(data), 20) if data[at]}


def test_the_cpu_delivers_raised_irqs_as_the_run_loop_does(asm_guest) -> None:
    elf = asm_guest(RAISED_GUEST.format(raises=RAISES))
    seen = []
    for native in (True, False):
        guest = make_guest(elf, native=native)
        assert raise_and_wait(guest, elf, RAISES) == [RAISES // 2, RAISES]
        seen.append(what_the_handlers_saw(elf, guest))
        pending = guest.memory.read_u32(guest.lguest_data + abi.LguestData.IRQ_PENDING)
        assert (guest.irqs_pending, pending) == (0, 0)
        assert guest.stats["interrupts"] == RAISES
        if native:
            assert guest.native_irqs is not None and guest.native_irqs.installed
            assert guest.native_irqs.take_counts() == []  # all counted at the exits
            delivered_by_cpu = guest.native_irqs._table.total
        else:
            assert guest.native_irqs is None
    # Interrupt gate: the Guest's interrupts go off; trap gate: they stay on.  IF was set
    # in every pushed EFLAGS, the time was written every time, at ring 1 and ring 3.
    expected = {(1, 0x61, 0x200, 0, True), (2, 0x61, 0x200, 0x200, True),
                (1, 0x73, 0x200, 0, True), (2, 0x73, 0x200, 0x200, True)}
    assert seen[0] == seen[1] == expected
    assert delivered_by_cpu > 0


def test_an_irq_whose_request_the_cpu_missed_is_delivered_late(asm_guest, monkeypatch) -> None:
    """QEMU can clear the CPU's request mark just as a raise sets it: the raise is then
    seen by nobody, and the late check must ring the doorbell (here every raise is lost
    that way; without the check the Guest would wait for ever)."""
    elf = asm_guest(RAISED_GUEST.format(raises=RAISES))
    guest = make_guest(elf, native=True)
    irqs = guest.native_irqs
    assert irqs is not None

    def lost(_table, irq: int) -> bool:
        irqs.clear(0)  # the pending bit is set; the CPU is never asked
        irqs._table.pending |= 1 << irq
        return True

    monkeypatch.setattr(irqs, "_raise", lost)
    watchdog = threading.Timer(30, guest.kill, ("hang guard: a lost raise was never delivered",))
    watchdog.start()
    try:
        assert raise_and_wait(guest, elf, 20) == [10, 20]
    finally:
        watchdog.cancel()
    assert irqs._table.total == 0  # every one went through the doorbell and the run loop
    assert guest.stats["interrupts"] == 20


def test_without_the_proven_fields_raises_ring_the_doorbell(asm_guest, monkeypatch) -> None:
    monkeypatch.setattr(native_irqs, "cpu_interrupts", lambda cpu: None)
    elf = asm_guest(RAISED_GUEST.format(raises=RAISES))
    guest = make_guest(elf, native=True)
    assert guest.native_irqs is None and guest.native_gates is not None
    assert raise_and_wait(guest, elf, 40) == [20, 40]
    assert guest.stats["interrupts"] == 40


UNMASK_GUEST = """
irq1:
	incl irq_count
	jmp lguest_iret
test_main:
	INIT
	GATE 0x21, irq1
	movl $2, lguest_data + LD_BLOCKED
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $1, blocked_flag		/* the test raises irq 1 now, while it is masked */
1:	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0, irq_count
	jne fail
	cmpl $0, unmask_flag
	je 1b
	movl $0, lguest_data + LD_BLOCKED	/* unmasked behind the Host's back */
	HCALL LHCALL_SEND_INTERRUPTS		/* and the Host told: delivered right here */
	cmpl $1, irq_count
	jne fail
	POWEROFF
	.data
	.globl blocked_flag, unmask_flag
blocked_flag: .long 0
unmask_flag: .long 0
irq_count: .long 0
	.text
""" + FAIL


def raise_while_masked(guest, elf) -> None:
    """Raise irq 1 once the Guest masked it, and let it unmask once the run loop has
    looked at it (C found it masked and stopped the CPU, or the doorbell rang)."""
    blocked_at, unmask_at = symbol(elf, "blocked_flag"), symbol(elf, "unmask_flag")
    deadline = time.monotonic() + 60
    while not guest.memory.read_u32(blocked_at) and time.monotonic() < deadline:
        time.sleep(0)
    runs = guest.switcher.runs
    guest.interrupt(1)
    while guest.switcher.runs < runs + 2 and time.monotonic() < deadline:
        time.sleep(0)
    guest.memory.ram[unmask_at:unmask_at + 4] = struct.pack("<I", 1)


def test_send_interrupts_after_an_unmask_delivers_what_was_raised_while_masked(asm_guest) -> None:
    """An irq raised while masked waits, with no hint in lguest_data (interrupts were
    on); the Guest unmasks it and makes SEND_INTERRUPTS, which must deliver it then,
    on both paths (C must not serve that hypercall while such an irq waits)."""
    elf = asm_guest(UNMASK_GUEST)
    for native in (True, False):
        guest = make_guest(elf, native=native)
        thread = threading.Thread(target=raise_while_masked, args=(guest, elf))
        thread.start()
        try:
            assert guest.run().reason == "CRASH: Power down"
        finally:
            thread.join()
