"""The Guest as the attacker of its Host (issue 9): every hole, from real guest code.

Each test is the attack itself, in assembly, and the outcome a real lguest
Guest would see: the exact kill message and exit status, or the trap its own
kernel is handed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, RUN_TIMEOUT, lguest, make_guest

from lguest import abi

POWER_OFF = (0, "CRASH: Power down")

# A virtual-8086 entry: the iret frame a vm86 monitor would build, with VM (and
# IOPL 3) in EFLAGS and the real-mode segment 0x0701 (linear base 0x7010) for code
# and stack.  The attack's 16-bit code (vm86_code..vm86_end) is copied to 0x8000
# first: IP 0xff0.
VM86 = """
	.set VM86_CS, 0x0701
	.set VM86_IP, 0x8000 - 0x7010
copy_vm86_code:
	movl $vm86_code, %esi
	movl $0x8000, %edi
	movl $(vm86_end - vm86_code), %ecx
	rep movsb
	ret
enter_vm86:
	pushl $0			/* gs */
	pushl $0			/* fs */
	pushl $0			/* ds */
	pushl $0			/* es */
	pushl $VM86_CS			/* ss */
	pushl $0x0f00			/* sp */
	pushl $(0x20000 | 0x3202)	/* VM, IOPL 3, IF */
	pushl $VM86_CS
	pushl $VM86_IP
vm86_iret:
	iret
"""

# The attack of the issue: print "V" through the console's emerg_wr (spec §7.3).
VM86_EMERG_WR = """
	.code16
vm86_code:
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x88), %eax
vm86_out:
	outl %eax, %dx
	movw $0xcfc, %dx
	movb $0, %al
	outb %al, %dx
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x90), %eax
	outl %eax, %dx
	movw $0xcfc, %dx
	movl $4, %eax
	outl %eax, %dx
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x8c), %eax
	outl %eax, %dx
	movw $0xcfc, %dx
	movl $(60 + 8), %eax
	outl %eax, %dx
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x94), %eax
	outl %eax, %dx
	movw $0xcfc, %dx
	movl $'V', %eax
	outl %eax, %dx
1:	jmp 1b
vm86_end:
	.code32
"""

# The same kind of attack on the hypercall gate: cs 0x0701 has RPL 1.
VM86_HYPERCALL = """
	.code16
vm86_code:
	movl $2, %eax			/* SHUTDOWN "pwned", as the Guest kernel's hypercall */
	movl $pwned, %ebx
	movl $1, %ecx
	int $0x1f
1:	jmp 1b
vm86_end:
	.code32
pwned:	.asciz "pwned"
"""

# The Guest kernel's #GP handler for the attacks from ring 3: it checks the
# frame is a ring-3 one on the SET_STACK stack with the error code a real CPU
# gives for the iret (0x0701 is beyond the GDT: #GP(0x700)), then powers off.
GP_FROM_USER = """
gp_handler:
	cmpl $0x700, %ss:(%esp)		/* error code */
	jne fail
	testl $3, %ss:8(%esp)		/* cs: from ring 3 */
	jz fail
	testl $0x23000, %ss:12(%esp)	/* eflags: neither VM nor the frame's IOPL 3 */
	jnz fail
	cmpl $(kstack_top - 24), %esp	/* a ring-3 frame: errcode eip cs eflags esp ss */
	jne fail
	movl $0x69, %eax
	movl %eax, %ds
	POWEROFF
fail:	movl $0x69, %eax
	movl %eax, %ds
	SHUTDOWN $failed
failed:	.asciz "wrong #GP frame"
"""


@pytest.mark.parametrize(("attack", "entry"), [(VM86_EMERG_WR, "TO_USER enter_vm86"),
                                               (VM86_HYPERCALL, "TO_USER enter_vm86"),
                                               (VM86_EMERG_WR, "jmp enter_vm86")],
                         ids=["ring3-emerg_wr", "ring3-hypercall", "ring1-emerg_wr"])
def test_iret_into_vm86_is_gp(asm_guest, attack: str, entry: str) -> None:
    """Item 1: VM in an iret frame is refused, from ring 3 (#GP(0x700) from ring 3, so the
    vm86 code's port I/O and hypercall, cs 0x0701 looking like ring 1, never happen) and
    from ring 1 (the same #GP, not a death in the Switcher)."""
    run = lguest("32", str(asm_guest(VM86 + attack + GP_FROM_USER + f"""
test_main:
	INIT
	call copy_vm86_code
	call setup_user_paging
	GATE 13, gp_handler
	{entry}
""")))
    assert (run.status, run.reason) == POWER_OFF
    assert "V" not in run.stdout


def test_kernel_iret_into_vm86_without_handler_kills_with_gp(asm_guest) -> None:
    """In linear mode nothing is a user page: the Host sees the CPU at the first
    vm86 fetch, so the #GP names the IP the iret loaded, not the iret (switcher.py says why)."""
    run = lguest("32", str(asm_guest(VM86 + VM86_EMERG_WR + """
test_main:
	INIT
	call copy_vm86_code
	jmp enter_vm86
""")))
    assert (run.status, run.reason) == (1, "unhandled trap 13 at 0xff0 (0x700)")
    assert "V" not in run.stdout


# Item 2: a user process's own EFLAGS.NT and EFLAGS.TF.  The handlers touch memory
# only through %ss: a trap from ring 3 arrives with the user's data segments.
NT_GUEST = """
handler:
	pushfl
	testl $0x4000, %ss:(%esp)	/* the handler runs without NT */
	jnz fail
	addl $4, %esp
	testl $0x4000, %ss:8(%esp)	/* the frame (eip cs eflags esp ss) keeps the user's NT */
	jz fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "NT leaked into the handler or out of the frame"
test_main:
	INIT
	call setup_user_paging
	GATE {vector}, handler, {gate}, 3
	TO_USER user
user:
	pushfl
	orl $0x4000, (%esp)
	popfl
	{insn}
"""


@pytest.mark.parametrize("gate", ["0xE", "0xF"])
@pytest.mark.parametrize(("vector", "insn"), [("0x80", "int $0x80"), ("6", "ud2")])
def test_user_nt_reaches_the_guest_kernel(asm_guest, gate: str, vector: str, insn: str) -> None:
    """NT set at ring 3, then a system call or a trap (through the Host or direct)."""
    run = lguest("32", str(asm_guest(NT_GUEST.format(gate=gate, vector=vector, insn=insn))))
    assert (run.status, run.reason) == POWER_OFF


SINGLE_STEP_GUEST = """
db_handler:
	movl %ss:steps, %eax
	movl %ss:(%esp), %ecx		/* where the step stopped */
	movl %ecx, %ss:stops(,%eax,4)
	incl %ss:steps
	iret				/* TF stays set in the frame: keep stepping */
syscall_handler:
	pushfl
	testl $0x100, %ss:(%esp)	/* the handler runs without TF */
	jnz fail
	cmpl $2, %ss:steps
	jne fail
	cmpl $s2, %ss:stops
	jne fail
	cmpl $s3, %ss:stops + 4
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong single steps"
test_main:
	INIT
	call setup_user_paging
	GATE 1, db_handler, {gate}
	GATE 0x80, syscall_handler, {gate}, 3
	TO_USER user
user:
	pushfl
	orl $0x100, (%esp)
	popfl				/* the trap comes after the next instruction */
s1:	nop
s2:	nop
s3:	int $0x80
	.data
steps:	.long 0
stops:	.long 0, 0, 0, 0
	.text
"""


@pytest.mark.parametrize("gate", ["0xE", "0xF"])
def test_user_single_step_gives_the_guest_debug_traps(asm_guest, gate: str) -> None:
    """TF at ring 3 (ptrace's single-step): a #DB after each instruction, to the Guest."""
    run = lguest("32", str(asm_guest(SINGLE_STEP_GUEST.format(gate=gate))))
    assert (run.status, run.reason) == POWER_OFF


# Item 5: a Host bug inside an emulator callback is the Host's, never the Guest's.
class HostBug(Exception):
    pass


def _raise(failure: BaseException):
    def hook(*_: object) -> object:
        raise failure
    return hook


PORT_GUEST = "test_main: INIT\n movw $0xcf8, %dx\n inl %dx, %eax\n POWEROFF"
TRAP_GUEST = "test_main: INIT\n GATE 6, test_main, 0xF\n ud2"
MMIO_GUEST = "test_main: INIT\n movl (%ebp), %eax\n POWEROFF"


# The in hook calls the Launcher's bus; the interrupt hook the Host's direct-trap
# path; the TLB-fill hook the shadow page tables; an MMIO access a device's window.
@pytest.mark.parametrize("where", ["port", "trap", "fill", "mmio"])
@pytest.mark.parametrize("failure", [HostBug("bug"), KeyboardInterrupt(), SystemExit(3)],
                         ids=["bug", "interrupt", "exit"])
def test_exception_in_a_hook_is_raised_by_run(asm_guest, where: str, failure: BaseException) -> None:
    """An exception inside a hook stops the vCPU and leaves Guest.run() as itself."""
    guest = make_guest(asm_guest({"trap": TRAP_GUEST, "mmio": MMIO_GUEST}.get(where, PORT_GUEST)))
    if where == "mmio":
        window = guest.pages.device_limit << abi.PAGE_SHIFT
        guest.map_mmio(window, abi.PAGE_SIZE, _raise(failure), _raise(failure))
        guest.set_reg(abi.PtRegs.BP, window)
    elif where == "port":
        guest.switcher.bus.port_in = _raise(failure)
    elif where == "trap":
        guest.switcher.direct_trap = _raise(failure)
    else:
        guest.switcher.mmu = type("BrokenMmu", (), {"translate": _raise(failure), "peek": _raise(failure)})()
    with pytest.raises(type(failure)) as raised:
        guest.run()
    assert raised.value is failure
    assert guest.dead is None  # never blamed on the Guest


# Item 11: kill messages and SET_PTE as lguest had them.
def test_trap_frame_below_address_zero_is_an_unsigned_address(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	GATE 6, test_main
	movl $8, %esp			/* the 12-byte frame would start 4 bytes below 0 */
	ud2
""")))
    assert (run.status, run.reason) == (1, "bad write address 0xfffffffc len 12")


@pytest.mark.parametrize("gate", ["0xE", "0xF"])
def test_set_stack_keeps_sixteen_bits_of_the_segment(asm_guest, gate: str) -> None:
    """SET_STACK's segment is a selector: 0x10069 has RPL 1 and lands traps from ring 3 on
    0x69, through the Host or the CPU itself (found by the fuzzer: it was exit 3)."""
    run = lguest("32", str(asm_guest(f"""
syscall_handler:
	movl %ss, %eax
	cmpl $0x69, %eax
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "wrong stack segment"
test_main:
	INIT
	call setup_user_paging
	HCALL LHCALL_SET_STACK, $0x10069, $kstack_top, $1
	GATE 0x80, syscall_handler, {gate}, 3
	TO_USER user
user:
	int $0x80
""")))
    assert (run.status, run.reason) == POWER_OFF


# A malformed PTE (a 4 MiB page, accessed) for the Guest's own SET_PTE.
BAD_PTE = "$0xa7"


def test_set_pte_in_linear_mode_is_ignored(asm_guest) -> None:
    """Before the first NEW_PGTABLE there is no shadow for a PTE to change."""
    run = lguest("32", str(asm_guest(f"""
test_main:
	INIT
	HCALL LHCALL_SET_PTE, $page_dir, $0xc0000000, {BAD_PTE}
	HCALL LHCALL_SET_PTE, $page_dir, $0x1000, {BAD_PTE}
	POWEROFF
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_set_pte_for_an_untracked_page_directory_is_ignored(asm_guest) -> None:
    run = lguest("32", str(asm_guest(f"""
test_main:
	INIT
	call setup_user_paging
	HCALL LHCALL_SET_PTE, $page_table, $0x1000, {BAD_PTE}	/* not a directory we shadow */
	POWEROFF
""")))
    assert (run.status, run.reason) == POWER_OFF


def test_set_pte_for_the_current_directory_is_still_checked(asm_guest) -> None:
    run = lguest("32", str(asm_guest(f"""
test_main:
	INIT
	call setup_user_paging
	HCALL LHCALL_SET_PTE, $page_dir, $0x1000, {BAD_PTE}
	POWEROFF
""")))
    assert (run.status, run.reason) == (1, "bad page table entry")


# Item 12: the prelude's own console output, through emerg_wr (spec §7.2-7.3).
def test_prelude_prints_through_emerg_wr(asm_guest) -> None:
    run = lguest("32", str(asm_guest("""
test_main:
	INIT
	movl $hello, %esi
	call print
	POWEROFF
hello:	.asciz "hello from the prelude\\n"
""")))
    assert (run.status, run.reason) == POWER_OFF
    assert run.stdout == "hello from the prelude\n"


def test_host_bug_in_a_hook_is_an_internal_error(asm_guest) -> None:
    """End to end: the Launcher says "internal error" and exits 3, never blames the Guest."""
    elf = asm_guest(PORT_GUEST)
    program = (
        "import sys\n"
        "from lguest.host.page_tables import PageTables\n"
        "def translate(*_):\n"
        "    raise RuntimeError('host bug')\n"
        "PageTables.translate = translate\n"
        "from lguest.launcher.main import main\n"
        f"sys.exit(main(['32', {str(elf)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[-1] == \
        "lguest: internal error (a bug in lguest: please report): RuntimeError: host bug" \
        " (--verbose shows the traceback)"
    assert "Traceback" not in proc.stderr and "unhandled trap" not in proc.stderr
