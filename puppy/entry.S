/*
 * entry.S - how a trap or virtual interrupt gets into an lguest Guest, and
 * the Guest's paravirtualized "sti/popf".
 */
#include "lguest.h"
#include "irq.h"

/* tour:G.100 A trap arrives: the frame the Host pushed, and the stubs
 * When the Host delivers a trap or a virtual interrupt it does what the
 * CPU would have done through the gate: it pushes an ordinary i386 frame
 * (eip, cs, eflags, and an error code for the exceptions that have one) on
 * our stack, clears irq_enabled if the gate is an interrupt gate, and
 * resumes us at the handler we gave with LOAD_IDT_ENTRY (§4.6).  Those
 * handlers are the stubs below; they all leave through lguest_iret
 * (head.S).  If the trap came from ring 3, the Host (or, for a direct
 * trap, the CPU) first switches to the kernel stack the Guest named with
 * SET_STACK and pushes the user's ss and esp too, exactly like a hardware
 * privilege change through the TSS.  Going back, the same iret returns to
 * ring 3: an ordinary instruction, no hypercall, because the CPU itself
 * checks that it only ever lowers privilege.
 */

/*
 * One stub per vector 0..0x2F, each exactly TRAP_STUB_SIZE bytes apart so
 * that C can find stub n at trap_stubs + n * TRAP_STUB_SIZE.  Exceptions
 * that come without an error code get a dummy 0, so that common_trap
 * always sees the same layout: vector, error code, then the Host's frame.
 */
#define TRAP_STUB_SIZE	16

	.text
	.balign	TRAP_STUB_SIZE
	.globl	trap_stubs
trap_stubs:
vec = 0
	.rept	FIRST_EXTERNAL_VECTOR + PUPPY_NR_IRQS
	/* The vectors for which the Host (or CPU) pushes an error code. */
	.if !((vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17))
	pushl	$0
	.endif
	pushl	$vec
	jmp	common_trap
	/* Pad to the next stub; the assembler complains if we overran. */
	.org	trap_stubs + (vec + 1) * TRAP_STUB_SIZE, 0xcc
vec = vec + 1
	.endr

/* tour:G.170 System calls: int $0x80, through the Host or straight in
 * A process asks the kernel for something with "int $0x80": number in
 * %eax, arguments in %ebx, %ecx, %edx (puppy's own numbers, in
 * user/syscalls.h).  The gate is DPL 3, so ring 3 may use it (every other gate
 * is DPL 0, and a user's "int $0x20" is a #GP instead).  By default it is
 * an interrupt gate, as in Linux since 4.6: the CPU leaves the Guest, the
 * Host sees trap 0x80 from ring 3 and reflects it onto the SET_STACK stack
 * with interrupts off: one round trip through the Host per system call
 * (the way back, an iret to ring 3, needs no Host).  do_syscall
 * (syscall.c) turns interrupts back on.  With `trapgate` on the
 * command line it is a trap gate, which lguest was designed to be fast
 * with: the Host copies such a gate into the real IDT and the CPU
 * delivers the call without leaving the Guest (a direct trap, §4.4).  On
 * the emulated CPU the Host delivers it from inside the emulator's
 * interrupt hook instead: still no return to the run loop.  Either way we
 * land here, on the process's kernel stack, with its user esp and ss on
 * the frame; the result goes back in the frame's eax and leaves through
 * ret_from_trap and lguest_iret.
 */
	.globl	syscall_entry
syscall_entry:
	pushl	$0
	pushl	$SYSCALL_VECTOR
	jmp	common_trap

/*
 * Save every register as a struct pt_regs (irq.h), call do_trap(regs) in C,
 * and leave through ret_from_trap.  Stack at entry:
 *	0(%esp) vector, 4(%esp) error code, 8(%esp) eip, cs, eflags
 *	(and, from ring 3, the user's esp and ss).
 * A trap from ring 3 arrives with the user's data segments still loaded,
 * so we keep them in the frame and switch to the kernel's.
 */
common_trap:
	pushal				/* 32 bytes: edi esi ebp esp ebx edx ecx eax */
	pushl	%ds
	pushl	%es
	pushl	%fs
	pushl	%gs
	cld				/* C expects the direction flag clear */
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%esp, %ebx		/* callee-saved: the pt_regs, our way back */
	andl	$-16, %esp		/* give C the 16-byte alignment it likes */
	subl	$12, %esp
	pushl	%ebx
	call	do_trap
	movl	%ebx, %esp

/*
 * The way out, with %esp at a struct pt_regs.  Going back to ring 3 is the
 * moment to switch tasks if the timer said so (exit_to_user); then put the
 * registers back and iret through lguest_iret.
 */
	.globl	ret_from_trap
ret_from_trap:
	testl	$3, PT_REGS_CS(%esp)
	jz	1f
	call	exit_to_user
1:	popl	%gs
	popl	%fs
	popl	%es
	popl	%ds
	popal
	addl	$8, %esp		/* drop vector and error code */
	jmp	lguest_iret

/*
 * A new task's first instructions.  Its kernel stack was built (sched.c)
 * to look as if it had been switched out right here, with a pt_regs
 * holding its user entry state on top; switch_stacks "returns" into us with
 * %eax = the task we switched away from.
 */
	.globl	ret_from_fork
ret_from_fork:
	pushl	%eax
	call	schedule_tail
	addl	$4, %esp
	jmp	ret_from_trap

/*
 * The paravirt irq ops that are too long to inline.  Like Linux's they
 * preserve every register (only the flags change), so C can call them from
 * an asm statement that clobbers nothing but memory.
 *
 * lg_irq_enable: "sti".  Storing 0x200 lets the Host deliver from now on;
 * but anything that arrived while we were disabled was only noted in
 * irq_pending, so if it is set ask the Host to deliver it right now.
 */
	.globl	lg_irq_enable
lg_irq_enable:
	movl	$X86_EFLAGS_IF, lguest_data+LGUEST_DATA_irq_enabled
	cmpl	$0, lguest_data+LGUEST_DATA_irq_pending
	jnz	send_interrupts
	ret

/*
 * lg_restore_fl(%eax): "popf".  Same as above, but it only needs the Host
 * if the flags we restore actually enable interrupts.
 */
	.globl	lg_restore_fl
lg_restore_fl:
	movl	%eax, lguest_data+LGUEST_DATA_irq_enabled
	testl	lguest_data+LGUEST_DATA_irq_pending, %eax
	jnz	send_interrupts
	ret

/* The Host hands %eax back unchanged, but our callers were promised that
 * no register changes, so we do not lean on that. */
send_interrupts:
	pushl	%eax
	movl	$LHCALL_SEND_INTERRUPTS, %eax
	int	$LGUEST_TRAP_ENTRY
	popl	%eax
	ret

	.section .note.GNU-stack, "", @progbits
