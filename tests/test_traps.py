"""Traps the Host sees and reflects (spec §4.3, §4.6, §7.1), from real guests."""

from __future__ import annotations

from conftest import lguest, symbol

POWER_OFF = (0, "CRASH: Power down")

# A #GP handler that skips a 2-byte faulting instruction and counts.
GP_SKIPPER = """
gp_handler:
	incl gp_count
	movl (%esp), %eax
	movl %eax, gp_errcode
	addl $2, 4(%esp)
	addl $4, %esp
	iret
	.data
gp_count: .long 0
gp_errcode: .long 0
	.text
"""


def test_three_consecutive_gp_faults_are_each_gp(asm_guest) -> None:
    """Unicorn's #DF bug (docs/design.md): without the in-flight reset the 2nd #GP would be a #DF."""
    run = lguest("32", str(asm_guest(GP_SKIPPER + """
test_main:
	INIT
	GATE 13, gp_handler
	movl $0x13, %eax
	movl %eax, %ds
	cmpl $0x10, gp_errcode
	jne fail
	movl $0x1b, %eax
	movl %eax, %ds
	cmpl $0x18, gp_errcode
	jne fail
	movl $0x23, %eax
	movl %eax, %ds
	cmpl $0x20, gp_errcode
	jne fail
	cmpl $3, gp_count
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong #GP count or error code"
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_unhandled_trap_names_vector_eip_and_error(asm_guest) -> None:
    elf = asm_guest("test_main: INIT\nbad: ud2")
    run = lguest("32", str(elf))
    assert run.reason == f"unhandled trap 6 at {symbol(elf, 'bad'):#x} (0x0)"
    assert run.status == 1


def test_unhandled_gp_carries_error_code(asm_guest) -> None:
    elf = asm_guest("test_main: INIT\n movl $0x2b, %eax\nbad: movl %eax, %ds")
    assert lguest("32", str(elf)).reason == f"unhandled trap 13 at {symbol(elf, 'bad'):#x} (0x28)"


def test_privileged_instruction_is_gp_not_emulated(asm_guest) -> None:
    elf = asm_guest("test_main: INIT\nbad: hlt")
    assert lguest("32", str(elf)).reason == f"unhandled trap 13 at {symbol(elf, 'bad'):#x} (0x0)"


def test_cli_is_skipped(asm_guest) -> None:
    run = lguest("32", str(asm_guest("test_main: INIT\n cli\n cli\n POWEROFF")))
    assert (run.status, run.reason) == POWER_OFF


def test_page_fault_in_device_gap_is_reflected_with_cr2(asm_guest) -> None:
    """Linear mode: RAM maps 1:1; the 1 MiB above RAM is not RAM, so it faults (§6.2-6.3)."""
    elf = asm_guest("test_main: INIT\nbad: movl 0x2000010, %eax")
    assert lguest("32", str(elf)).reason == f"unhandled trap 14 at {symbol(elf, 'bad'):#x} (0x2000010)"


def test_page_fault_handler_sees_cr2_and_error_code(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
pf_handler:
	cmpl $0x2000010, lguest_data + LD_CR2
	jne fail
	cmpl $2, (%esp)			/* a write, not present, kernel */
	jne fail
	POWEROFF
test_main:
	INIT
	GATE 14, pf_handler
	movl $1, 0x2000010
fail:	SHUTDOWN $failed
failed:	.asciz "wrong cr2 or error code"
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_page_fault_before_init_is_unhandled(asm_guest) -> None:
    """No lguest_data to write cr2 in and no IDT yet: lguest's plain unhandled trap."""
    elf = asm_guest("test_main:\nbad: movl 0x2000010, %eax")
    run = lguest("32", str(elf))
    assert (run.status, run.reason) == (1, f"unhandled trap 14 at {symbol(elf, 'bad'):#x} (0x2000010)")


def test_access_beyond_ram_and_devices_is_a_bad_pte(asm_guest) -> None:
    """Linear mode pretends a PTE for every address; one past all memory is malformed."""
    assert lguest("32", str(asm_guest("test_main: INIT\n movl 0x8000000, %eax"))).reason == \
        "bad page table entry"


def test_trap_frame_that_cannot_be_written_kills(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	GATE 6, test_main
	movl $0x1ffff00, %esp		/* fine: inside 32 MiB */
	movl $0x2000008, %esp		/* the frame would land above RAM */
	ud2
""")))
    assert run.reason == "bad write address 0x1fffffc len 12"


def test_port_reads(asm_guest) -> None:
    """Unknown ports read all ones (at the access width); the PS/2 status port reads 1."""
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	movl $0x12345678, %eax
	inb $0x40, %al
	cmpl $0x123456ff, %eax
	jne fail
	movw $0x61, %dx
	inw %dx, %ax
	cmpl $0x1234ffff, %eax
	jne fail
	inl %dx, %eax
	cmpl $0xffffffff, %eax
	jne fail
	inb $0x64, %al
	cmpb $1, %al
	jne fail
	outb %al, $0x80			/* ignored */
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong port value"
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_rejected_pci_write_warns_and_injects_gp(asm_guest) -> None:
    """Writing the read-only vendor ID: the Launcher warns, the Guest gets #GP(0)."""
    elf = asm_guest("""
test_main:
	INIT
	movw $0xcf8, %dx
	movl $0x80000800, %eax		/* slot 1, register 0 */
	outl %eax, %dx
	movw $0xcfc, %dx
bad:	outl %eax, %dx
""")
    run = lguest("32", str(elf))
    assert "lguest: Attempt to write to port 3324 (0xffffffff mask)" in run.stderr
    assert run.reason == f"unhandled trap 13 at {symbol(elf, 'bad'):#x} (0x0)"


USER_GP = """
gp_handler:
	movl (%esp), %eax
	cmpl expected_err, %eax
	jne fail
	cmpl $0x73, 8(%esp)		/* saved cs: ring 3 */
	jne fail
	movl expected_eip, %eax
	cmpl %eax, 4(%esp)
	jne fail
	cmpl $0x7b, 20(%esp)		/* saved ss */
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong #GP frame"
	.data
expected_err: .long 0
expected_eip: .long 0
	.text
"""


def user_test(asm_guest, user_code: str, err: int) -> tuple[int, str]:
    elf = asm_guest(USER_GP + f"""
test_main:
	INIT
	call setup_user_paging
	GATE 13, gp_handler
	movl ${err}, expected_err
	movl $user_fault, expected_eip
	TO_USER user
user:
	nop
user_fault:
	{user_code}
	jmp .
""")
    run = lguest("32", str(elf))
    return run.status, run.reason


def test_user_port_access_is_gp(asm_guest) -> None:
    assert user_test(asm_guest, "inb $0x40, %al", 0) == POWER_OFF
    assert user_test(asm_guest, "outb %al, $0x80", 0) == POWER_OFF


def test_user_hypercall_is_gp_fa(asm_guest) -> None:
    """The hypercall gate is DPL 1: `int $0x1f` from ring 3 is #GP(0x1f*8+2)."""
    assert user_test(asm_guest, "int $0x1f", 0xFA) == POWER_OFF


def test_user_int_through_kernel_only_gate_is_gp(asm_guest) -> None:
    assert user_test(asm_guest, "int $0x40", 0x40 * 8 + 2) == POWER_OFF
    assert user_test(asm_guest, "int $0x80", 0x80 * 8 + 2) == POWER_OFF  # no DPL-3 gate for it


def test_user_privileged_instruction_is_gp(asm_guest) -> None:
    assert user_test(asm_guest, "cli", 0) == POWER_OFF


def test_user_syscall_through_dpl3_gate(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
syscall:
	cmpl $0x73, 4(%esp)
	jne fail
	cmpl $after, (%esp)
	jne fail
	cmpl $0x7b, 16(%esp)
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong syscall frame"
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, syscall, 0xF, 3
	TO_USER user
user:
	int $0x80
after:
	jmp .
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_user_cannot_touch_the_switcher(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
pf_handler:
	cmpl $0xffc00000, lguest_data + LD_CR2
	jne fail
	cmpl $4, (%esp)			/* user read, not present */
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong fault"
test_main:
	INIT
	call setup_user_paging
	GATE 14, pf_handler
	TO_USER user
user:
	movl 0xffc00000, %eax
	jmp .
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_user_port_fault_is_precise(asm_guest) -> None:
    """Nothing after the faulting `in` runs: no register or memory change survives."""
    run = lguest("32", str(asm_guest("""
gp_handler:
	cmpl $1, %ebx
	jne fail
	cmpl $0, marker
	jne fail
	cmpl $0x11223344, %eax
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "instructions after the fault ran"
test_main:
	INIT
	call setup_user_paging
	GATE 13, gp_handler
	TO_USER user
user:
	movl $1, %ebx
	movl $0x11223344, %eax
	inb $0x40, %al
	movl $2, %ebx
	movl $7, marker
	jmp .
	.data
marker: .long 0
	.text
""")))
    assert (run.status, run.reason) == POWER_OFF
