/*
 * The fuzz Guest's assembly: its entry, lguest_data, one stub per IDT vector,
 * the handler that turns every trap back into "next operation", and the small
 * code fragments the operations jump to (at ring 1 or ring 3).
 *
 * Every trap or interrupt, whatever it interrupted, ends the same way: count
 * it, reload sane segments and the fuzz loop's own stack, and call fuzz_loop()
 * again.  All the loop's state lives in memory, so nothing is lost by
 * abandoning whatever stack frame the trap arrived on.
 */
	.code32

	.set KERNEL_DS, 0x69

	.text
	.globl start
start:
	movl $loop_stack_top, %esp
	call fuzz_boot			/* INIT, gates, page tables; never returns */

/* One stub per vector: push its number and join the common handler. */
	.globl trap_stubs
	.p2align 4
trap_stubs:
	.set vec, 0
	.rept 256
	.p2align 4
	pushl $vec
	jmp trap_common
	.set vec, vec + 1
	.endr

trap_common:
	popl %eax			/* the vector (%ss is valid: a frame was just pushed) */
	movl $KERNEL_DS, %ecx
	movw %cx, %ss			/* whatever stack we came in on is abandoned */
	movl $loop_stack_top, %esp
fuzz_resume:
	movl $KERNEL_DS, %ecx
	movw %cx, %ds
	movw %cx, %es
	xorl %ecx, %ecx
	movw %cx, %fs
	movw %cx, %gs
	pushl %eax
	call fuzz_trapped		/* never returns: back into the loop */

/*
 * lguest_iret as a 4.x Guest has it: irq_enabled from the frame's EFLAGS, then
 * the single iret the Host knows about (noirq_iret).
 */
	.globl lguest_iret, noirq_iret
lguest_iret:
	pushl 8(%esp)
	popl %ss:lguest_data
noirq_iret:
	iret

/* A plain iret, for frames that do not go through lguest_iret. */
	.globl plain_iret
plain_iret:
	iret

/* Push the iret frame at %eax, load %ds and %es from %esi, leave through %edx. */
	.globl iret_from_frame
iret_from_frame:
	pushl 16(%eax)
	pushl 12(%eax)
	pushl 8(%eax)
	pushl 4(%eax)
	pushl 0(%eax)
	movw %si, %ds
	movw %si, %es
	jmp *%edx

/* `int $n` for every n: two bytes each, so the target is int_table + 2n. */
	.globl int_table
	.p2align 4
int_table:
	.set vec, 0
	.rept 256
	.byte 0xcd, vec
	.set vec, vec + 1
	.endr
	int $0x80			/* if the int came back (it did not trap) */

/*
 * Ring-3 fragments.  Each either traps or ends with `int $0x80`, the
 * system-call gate, which brings us back to the handler like any trap.
 */
	.globl user_snippets, user_snippet_count
	.p2align 2
user_snippets:
	.long u_syscall, u_port_in, u_port_out, u_hlt, u_cli, u_ud2, u_hcall
	.long u_kernel_read, u_divide, u_int3, u_into, u_ds_load, u_nops, u_popf
	.long u_sacrificial_write, u_iret, u_mmio_read, u_fpu, u_ring1_jump
user_snippet_count:
	.long (user_snippet_count - user_snippets) / 4

u_syscall:
	int $0x80
u_port_in:
	movw $0xcf8, %dx
	inl %dx, %eax
	int $0x80
u_port_out:
	movw $0xcfc, %dx
	outl %eax, %dx
	int $0x80
u_hlt:
	hlt
	int $0x80
u_cli:
	cli
	sti
	int $0x80
u_ud2:
	ud2
u_hcall:
	movl $19, %eax			/* from ring 3: a #GP (at ring 1, if an iret lands here, harmless) */
	int $0x1f
	int $0x80
u_kernel_read:
	movl lguest_data, %eax		/* user-accessible (identity map): fine */
	movl 0x1100000, %eax		/* the first MMIO window: kernel-only */
	int $0x80
u_divide:
	xorl %ecx, %ecx
	divl %ecx
	int $0x80
u_int3:
	int3
	int $0x80
u_into:
	movl $0x7fffffff, %eax
	addl $1, %eax
	into
	int $0x80
u_ds_load:
	movw %bx, %ds			/* %ebx is random (the frame's op set it) */
	movw %bx, %es
	int $0x80
u_nops:
	nop
	nop
	nop
	nop
	int $0x80
u_popf:
	pushl %ebx
	popfl
	nop
	pushfl
	popl %eax
	int $0x80
u_sacrificial_write:
	andl $0x3ffffc, %ebx
	movl %eax, 0xa00000(%ebx)	/* buffers at 10 MiB and up are anyone's */
	int $0x80
u_iret:
	pushl %ebx			/* an iret at ring 3: any EFLAGS, any %cs */
	pushl %ecx
	pushl $u_syscall
	iret
u_mmio_read:
	movl 0x2000000(%ebx), %eax	/* the scratch window, whatever is mapped */
	int $0x80
u_fpu:
	fninit
	fld1
	fstp %st(0)
	int $0x80
u_ring1_jump:
	ljmp $0x61, $u_syscall		/* a far jump to the kernel's code segment */

/* A ring-1 fragment an iret may land on: come back like a trap would. */
	.globl ring1_landing
ring1_landing:
	nop
	nop
	movl $-1, %eax			/* "no trap" */
	movl $KERNEL_DS, %ecx
	movw %cx, %ss
	movl $loop_stack_top, %esp
	jmp fuzz_resume

#include "lguest_data.S"
	.p2align 12

	.bss
	.p2align 12
	.globl loop_stack_top, kstack_top, ustack_top
	.space 16384
loop_stack_top:
	.space 8192
kstack_top:

	/* The user stack is in the sacrificial region: ring 3 writes nothing of ours. */
	.set ustack_top, 0x810000

	.section .note.GNU-stack, "", @progbits
