"""The Switcher on Unicorn: calibration, rings, and the Host API (spec §3.4, §8.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_guest, run_while_rung, symbol

from lguest import abi
from lguest.host import calibration
from lguest.host.switcher import ExitKind


def test_calibration_finds_each_field_once() -> None:
    layout = calibration.calibrate()
    offsets = {layout.hflags, layout.old_exception, layout.error_code, layout.exception_is_int}
    assert len(offsets) == 4
    assert layout == calibration.context_layout()  # measured once per process, stable


def test_initial_vcpu_state(asm_guest) -> None:
    guest = make_guest(asm_guest("test_main: ud2"))
    regs = {name: guest.get_reg(off) for off, name in
            ((abi.PtRegs.CS, "cs"), (abi.PtRegs.SS, "ss"), (abi.PtRegs.DS, "ds"), (abi.PtRegs.ES, "es"),
             (abi.PtRegs.FS, "fs"), (abi.PtRegs.GS, "gs"), (abi.PtRegs.SI, "esi"), (abi.PtRegs.AX, "eax"))}
    assert regs == {"cs": 0x61, "ss": 0x69, "ds": 0x69, "es": 0x69, "fs": 0, "gs": 0, "esi": 0, "eax": 0}
    result = guest.run()
    assert result.reason.startswith("unhandled trap 6 at 0x10")


def test_set_reg_only_the_settable_ones(asm_guest) -> None:
    guest = make_guest(asm_guest("test_main: ud2"))
    assert guest.set_reg(abi.PtRegs.AX, 0x1234)
    assert guest.get_reg(abi.PtRegs.AX) == 0x1234
    assert not guest.set_reg(abi.PtRegs.CS, 0x73)
    assert not guest.set_reg(abi.PtRegs.FLAGS, 0)


def test_set_reg_redirects_the_guest(asm_guest) -> None:
    """The Launcher may move eip and set registers before the Guest runs (LHREQ_SETREG)."""
    elf = asm_guest("test_main: ud2\nalt: INIT\n SHUTDOWN %ebp\nmsg: .asciz \"moved\"")
    guest = make_guest(elf)
    guest.set_reg(abi.PtRegs.IP, symbol(elf, "alt"))
    guest.set_reg(abi.PtRegs.BP, symbol(elf, "msg"))
    assert guest.run().reason == "CRASH: moved"


def test_inject_trap_needs_a_handler(asm_guest) -> None:
    guest = make_guest(asm_guest("test_main: ud2"))
    assert not guest.inject_trap(13)


def test_interrupt_rejects_irq_32(asm_guest) -> None:
    guest = make_guest(asm_guest("test_main: ud2"))
    assert not guest.interrupt(32)
    assert guest.interrupt(31)


def test_kill_keeps_the_first_reason(asm_guest) -> None:
    guest = make_guest(asm_guest("test_main: ud2"))
    guest.kill("first")
    guest.kill("second")
    assert guest.run().reason == "first"


def test_bad_segment_in_the_switcher_is_trap_256(asm_guest) -> None:
    """The trampoline loading a descriptor the Guest broke: `unhandled trap 256` (§4.1)."""
    from conftest import lguest

    run = lguest("32", str(asm_guest("""
gp_handler:
	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, gp_handler, 0xF, 3
	/* make the kernel data segment (SET_STACK's ss) not present */
	HCALL LHCALL_LOAD_GDT_ENTRY, $13, $0x0000ffff, $0x00cf3300
	TO_USER user
user:
	int $0x80
""")))
    assert run.reason.startswith("unhandled trap 256 at 0x")
    assert run.status == 1


def test_kicks_never_make_an_instruction_run_twice(asm_guest) -> None:
    """Read-modify-write instructions on pages that keep missing in the TLB, while
    another thread kicks the vCPU thousands of times: every add happens exactly once.
    (Unicorn's own emu_stop from another thread fails this: upstream issue #1355.)"""

    elf = asm_guest("""
test_main:
	INIT
	call setup_user_paging
	xorl %edi, %edi				/* round */
1:	movl $512, %ecx				/* clear ACCESSED: each miss walks again, in Python */
3:	andl $~0x20, page_table + 2044(,%ecx,4)	/* entries 512..1023 */
	decl %ecx
	jnz 3b
	HCALL LHCALL_FLUSH_TLB, $1		/* every page misses again */
	xorl %ecx, %ecx
2:	movl %ecx, %eax
	shll $12, %eax
	addl %edi, 0x200000(%eax)		/* 512 pages from 2 MiB */
	incl %ecx
	cmpl $512, %ecx
	jne 2b
	incl %edi
	cmpl $200, %edi
	jne 1b
	POWEROFF
""")
    guest = make_guest(elf)
    result, kicks = run_while_rung(guest)
    assert result.reason == "CRASH: Power down"
    assert kicks > 1000
    expected = sum(range(200)) & 0xFFFFFFFF
    values = {guest.memory.read_u32(0x200000 + 4096 * i) for i in range(512)}
    assert values == {expected}


def test_trap_flag_in_the_entry_frame_steps_the_first_guest_instruction(asm_guest) -> None:
    """The trampoline runs with the Switcher's own EFLAGS and its `iret` loads the
    Guest's: TF there is a #DB after the Guest's first instruction, not in the Switcher."""
    elf = asm_guest("test_main: nop\nsecond: ud2")
    guest = make_guest(elf)
    guest.switcher.load_frame(symbol(elf, "test_main"), abi.KERNEL_CS, abi.INITIAL_EFLAGS | abi.X86_EFLAGS_TF,
                         0x1000, abi.KERNEL_DS, abi.KERNEL_DS, abi.KERNEL_DS, 0, 0)
    exit_ = guest.switcher.run()
    assert (exit_.kind, exit_.trapnum) == (ExitKind.TRAP, abi.Trap.DB)
    assert guest.switcher.get("eip") == symbol(elf, "second")
    assert guest.switcher.get("eflags") & abi.X86_EFLAGS_TF


def test_nested_task_in_the_entry_frame_is_the_guests_not_the_switchers(asm_guest) -> None:
    """NT in the frame reaches the Guest (its own next `iret` would be a task return);
    the trampoline's `iret` is an ordinary one."""
    elf = asm_guest("test_main: ud2")
    guest = make_guest(elf)
    guest.switcher.load_frame(symbol(elf, "test_main"), abi.KERNEL_CS, abi.INITIAL_EFLAGS | abi.X86_EFLAGS_NT,
                         0x1000, abi.KERNEL_DS, abi.KERNEL_DS, abi.KERNEL_DS, 0, 0)
    exit_ = guest.switcher.run()
    assert (exit_.kind, exit_.trapnum) == (ExitKind.TRAP, abi.Trap.UD)
    assert guest.switcher.get("eflags") & abi.X86_EFLAGS_NT


def test_only_calibration_touches_the_emulators_private_state() -> None:
    """The saved-context blob, the binding's private finalizer and the engine's
    `no_exit_request` switch are reached from one module (calibration.py); each C
    hook from one module (doorbell.py, ports.py)."""
    package = Path(calibration.__file__).resolve().parent.parent
    private = ("uc_context", "_Uc__", "context_save", "context_restore", "no_exit_request")
    hooks = {"lguest_doorbell_hook": "host/doorbell.py", "lguest_port_in_hook": "host/ports.py"}
    owners = {word: sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                           if word in path.read_text())
              for word in (*private, *hooks)}
    assert owners == {**{word: ["host/calibration.py"] for word in private},
                      **{hook: [owner] for hook, owner in hooks.items()}}


@pytest.mark.parametrize("native", [True, False])
def test_registers_are_never_answered_from_an_old_stop(asm_guest, native: bool) -> None:
    """The Switcher's copy of the registers lasts one stop: a debugging hook reading them
    mid-block sees them as they are there, and does not make the Host's next read (the
    hypercall's arguments at the `int`) answer from that moment."""
    elf = asm_guest("""
test_main:
	INIT
	xorl %esi, %esi
1:	incl %esi
watched:
	movl $LHCALL_LOAD_IDT_ENTRY, %eax
	leal 0xF0(%esi), %ebx   /* vectors 0xF1.. clear gates; 0x100 is out of range */
	xorl %ecx, %ecx
	xorl %edx, %edx
	int $0x1f
	jmp 1b
""")
    guest = make_guest(elf, native=native)
    seen: list[int] = []
    guest.switcher.watch_code(symbol(elf, "watched"), symbol(elf, "watched"),
                              lambda eip: seen.append(guest.switcher.get("esi")))
    # A read left over from the previous exit would see %esi one lower in the hook; the
    # hook's own read kept for the Host would give it the previous %ebx (one call late).
    assert guest.run().reason == "Setting idt entry 256"
    assert seen == list(range(1, 17))
