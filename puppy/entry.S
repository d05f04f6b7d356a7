/*
 * entry.S - how a trap or virtual interrupt gets into an lguest Guest, and
 * the Guest's paravirtualized "cli/sti/popf".
 *
 * The Guest never runs with the real interrupt flag under its control: the
 * Host owns EFLAGS.IF.  Our interrupt flag is the irq_enabled word in
 * lguest_data, and the Host reads it before delivering a virtual interrupt.
 * When the Host does deliver a trap or interrupt it pushes an ordinary i386
 * frame (eip, cs, eflags, and an error code for some exceptions) on our
 * stack and jumps to the handler we gave it with LOAD_IDT_ENTRY.  Those
 * handlers are the stubs below; they all leave through lguest_iret (head.S),
 * which restores irq_enabled from the frame before the real iret.
 */
#include "lguest.h"

/*
 * One stub per vector 0..0x2F, each exactly TRAP_STUB_SIZE bytes apart so
 * that C can find stub n at trap_stubs + n * TRAP_STUB_SIZE.  Exceptions
 * that come without an error code get a dummy 0, so that the common code
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

/*
 * Save every general register, call do_trap(vector, error, frame) in C,
 * put them all back and return through lguest_iret.  Stack at entry:
 *	0(%esp) vector, 4(%esp) error code, 8(%esp) eip, cs, eflags.
 * We only ever run at ring 1 with the kernel's flat segments (puppy has no
 * user mode), so the segment registers need no saving or reloading.
 */
common_trap:
	pushal				/* 32 bytes: edi esi ebp esp ebx edx ecx eax */
	cld				/* C expects the direction flag clear */
	movl	%esp, %ebx		/* callee-saved: our way back */
	leal	40(%esp), %eax		/* the Host's frame: eip, cs, eflags */
	andl	$-16, %esp		/* give C the 16-byte alignment it likes */
	subl	$4, %esp
	pushl	%eax
	pushl	36(%ebx)		/* error code */
	pushl	32(%ebx)		/* vector */
	call	do_trap
	movl	%ebx, %esp
	popal
	addl	$8, %esp		/* drop vector and error code */
	jmp	lguest_iret

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
