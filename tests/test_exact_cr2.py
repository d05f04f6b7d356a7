"""The exact faulting address (cr2) of page faults, from ring 1 and ring 3, for the kinds
of access whose address is not simply an instruction's explicit operand: string
instructions with and without `rep`, pushes and pops to memory, an indirect call, a
read-modify-write, accesses that straddle a page boundary either way.  The native path
takes the address from the emulator itself (exact_fill.c, calibration.py); the pure-Python
Host decodes the faulting instruction (faultaddr.py).  Both must give the Guest the
address a real CPU would."""

from __future__ import annotations

from conftest import make_guest, run_both_ways, symbol

NP = 0x380000  # the page each probe faults on (unmapped before it, mapped by the handler)

# (instructions, the cr2 a real CPU reports); the page before NP and after it stay mapped.
PROBES = [
    ("movl NP + 0x124, %eax", NP + 0x124),
    ("movl $NP, %ebx; movl $0x10, %ecx; movl %eax, 8(%ebx,%ecx,4)", NP + 0x48),
    ("movl $NP - 2, %ebx; movl (%ebx), %eax", NP),  # straddles in: the page's first byte
    ("movl %eax, NP + 0xffe", NP + 0xffe),  # straddles out: the access itself
    ("cld; movl $NP - 0x10, %edi; movl $src, %esi; movl $0x20, %ecx; rep movsb", NP),
    ("cld; movl $NP + 0x300, %edi; movl $4, %ecx; rep stosl", NP + 0x300),
    ("cld; movl $NP + 0x404, %esi; lodsl", NP + 0x404),
    ("cld; movl $NP + 0x700, %esi; movl $dst, %edi; movsl", NP + 0x700),
    ("cld; movl $NP + 0xd00, %edi; movb $0x41, %al; scasb", NP + 0xd00),
    ("xchgl %eax, NP + 0x508", NP + 0x508),
    ("addl $1, NP + 0x60c", NP + 0x60c),
    ("movzwl NP + 0xa02, %eax", NP + 0xa02),
    ("pushl NP + 0xb04; popl %eax", NP + 0xb04),
    ("pushl $5; popl NP + 0xc08", NP + 0xc08),
    ("call *NP + 0x800", NP + 0x800),
]

GUEST = """
	.set NP, {np}
/* Log cr2 and the error code, map NP as the identity map has it, run the access again. */
on_pf:	pushl %ecx
	pushl %ebx
	movl log_at, %ebx
	movl lguest_data + LD_CR2, %ecx
	movl %ecx, (%ebx)
	movl 8(%esp), %ecx
	movl %ecx, 4(%ebx)
	addl $8, log_at
	pushal
	movl $NP + 0x67, page_table + (NP >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $NP, $NP + 0x67
	popal
	popl %ebx
	popl %ecx
	addl $4, %esp
	jmp lguest_iret

/* Unmap NP (the Guest's table and SET_PTE), every register kept. */
unmap:	pushal
	movl $0, page_table + (NP >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $NP, $0
	popal
	ret
/* From ring 3: int $0x80 with %eax 1 unmaps NP, 0xdead powers off. */
on_syscall:
	cmpl $0xdead, %eax
	je 1f
	call unmap
	jmp lguest_iret
1:	POWEROFF

ret_here:
	ret
probes:
{probes}
	ret

test_main:
	INIT
	call setup_user_paging
	movl $ret_here, NP + 0x800		/* what the indirect call finds, once mapped */
	GATE 14, on_pf, 0xF
	GATE 0x80, on_syscall, 0xF, 3
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $0, %ebp
	call probes
	movl $1, %ebp
	TO_USER user
user:	call probes
	movl $0xdead, %eax
	int $0x80
	jmp .

	.data
log_at:	.long log
src:	.space 0x40
dst:	.space 0x40
	.bss
log:	.space 8 * 2 * {count}
"""

# %ebp says the ring: 0 calls `unmap`, 1 asks for it with int $0x80.
UNMAP = """	testl %ebp, %ebp
	jnz 1f
	call unmap
	jmp 2f
1:	movl $1, %eax
	int $0x80
2:"""


def exact_cr2_guest(asm_guest):
    probes = "\n".join(f"{UNMAP}\n\t{insns}" for insns, _ in PROBES)
    return asm_guest(GUEST.format(np=hex(NP), probes=probes, count=len(PROBES)))


def logged(elf, guest) -> list[tuple[int, int]]:
    data = guest.memory.read(symbol(elf, "log"), 8 * 2 * len(PROBES))
    words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
    return list(zip(words[::2], words[1::2], strict=True))


def test_both_paths_give_the_guest_the_address_a_cpu_would(asm_guest) -> None:
    elf = exact_cr2_guest(asm_guest)
    native, python = run_both_ways(elf)
    expected = [cr2 for _, cr2 in PROBES] * 2
    assert [cr2 for cr2, _ in logged(elf, native)] == expected
    assert logged(elf, native) == logged(elf, python)
    assert native.switcher.exact_fills is not None and native.switcher.exact_fills.installed
    assert python.switcher.exact_fills is None


def test_without_the_emulators_address_the_host_works_it_out(asm_guest, monkeypatch) -> None:
    """Where calibration cannot prove where the CPU class keeps its fill function, the
    native path decodes the instruction as the pure-Python Host does: the same cr2."""
    monkeypatch.setattr("lguest.host.exact_fill.fill_function_slot", lambda cpu: None)
    elf = exact_cr2_guest(asm_guest)
    guest = make_guest(elf, native=True)
    assert guest.run().reason == "CRASH: Power down"
    assert not guest.switcher.exact_fills.installed
    assert [cr2 for cr2, _ in logged(elf, guest)] == [cr2 for _, cr2 in PROBES] * 2
