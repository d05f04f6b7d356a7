/*
 * head.S - how an lguest Guest boots.
 *
 * The Launcher copies us to physical 0x100000 and the Host starts us at
 * ring 1 with flat segments and no stack, in "linear mode": until we hand
 * the Host a page table, virtual addresses are simply guest-physical ones.
 * We are linked at PAGE_OFFSET (3 GiB) though, so until then every symbol
 * must be turned into its physical address with pa().
 *
 * The three steps of every lguest Guest's life are here: LGUEST_INIT (tell
 * the Host where lguest_data lives), build a page table, NEW_PGTABLE (leave
 * linear mode); then we jump up to our real, virtual, addresses.
 */
#include "lguest.h"

#define pa(sym)		((sym) - PAGE_OFFSET)

/* How much low memory the boot page table covers, at most (like Linux). */
#define MAX_LOWMEM	0x4000000	/* 64 MiB */
#define BOOT_PTS	(MAX_LOWMEM / (1024 * PAGE_SIZE))	/* 16 */
#define PDE_KERNEL	0x063	/* Present, RW, Accessed, Dirty: no USER */
#define PTE_KERNEL	0x063	/* same; never PSE, never GLOBAL */
#define PGD_KERNEL_IDX	(PAGE_OFFSET >> 22)			/* 768 */

	.section .text.head, "ax"
	.globl	startup_32
startup_32:
	cld
	/* A physical stack, in case anything below ever needs one. */
	movl	$pa(boot_stack_top), %esp

	/*
	 * Is this really lguest?  %esi holds the (physical) address of
	 * boot_params.  There is no console yet, so if not, just spin.
	 */
	cmpl	$X86_SUBARCH_LGUEST, BP_HARDWARE_SUBARCH(%esi)
	jne	not_lguest

	/* The first hypercall must be LGUEST_INIT, with lguest_data's gpa. */
	movl	$LHCALL_LGUEST_INIT, %eax
	movl	$pa(lguest_data), %ebx
	int	$LGUEST_TRAP_ENTRY

	/*
	 * Map low memory twice: at 0 (so this code keeps running after the
	 * switch) and at PAGE_OFFSET (where the rest of the kernel expects
	 * to be).  Only pages that exist: the Host kills a Guest whose page
	 * tables point past the end of RAM.  RAM size comes from e820_map[0].
	 */
	movl	BP_E820_MAP+8(%esi), %eax	/* size, low 32 bits */
	cmpl	$0, BP_E820_MAP+12(%esi)	/* >= 4 GiB? (can't happen) */
	jne	1f
	cmpl	$MAX_LOWMEM, %eax
	jbe	2f
1:	movl	$MAX_LOWMEM, %eax
2:	shrl	$12, %eax			/* %eax = pages to map */

	/* One PTE per page: page n maps physical n * 4096. */
	movl	$pa(boot_page_tables), %edi
	xorl	%ecx, %ecx
	movl	$PTE_KERNEL, %edx
3:	cmpl	%eax, %ecx
	jae	4f
	movl	%edx, (%edi,%ecx,4)
	addl	$PAGE_SIZE, %edx
	incl	%ecx
	jmp	3b

	/* One PDE per page table used, in both halves of the directory. */
4:	addl	$1023, %eax
	shrl	$10, %eax			/* %eax = page tables used */
	movl	$pa(boot_pgdir), %edi
	xorl	%ecx, %ecx
	movl	$pa(boot_page_tables) + PDE_KERNEL, %edx
5:	cmpl	%eax, %ecx
	jae	6f
	movl	%edx, (%edi,%ecx,4)
	movl	%edx, PGD_KERNEL_IDX*4(%edi,%ecx,4)
	addl	$PAGE_SIZE, %edx
	incl	%ecx
	jmp	5b

	/* Switch to it: linear mode ends here. */
6:	movl	$LHCALL_NEW_PGTABLE, %eax
	movl	$pa(boot_pgdir), %ebx
	int	$LGUEST_TRAP_ENTRY

	/*
	 * Now the virtual stack, and an absolute jump up into the kernel's
	 * real addresses.  puppy_main(boot_params_pa) never returns.
	 */
	movl	$boot_stack_top, %esp
	subl	$12, %esp			/* keep the C stack 16-aligned */
	pushl	%esi
	movl	$puppy_main, %eax
	call	*%eax
not_lguest:
	jmp	not_lguest

/*
 * lguest_iret - return from an interrupt or trap.
 *
 * The real EFLAGS.IF never changes (the Host owns it); ours is the
 * irq_enabled word in lguest_data.  So restore it from the frame first,
 * then iret.  Between those two instructions an interrupt could arrive
 * that we have just enabled; the Host knows this one iret address
 * (lguest_data.noirq_iret) and, if it catches us there, reuses our frame
 * instead of pushing a new one.  %ss: because %ds may be a user segment.
 */
	.text
	.globl	lguest_iret
	.globl	lguest_noirq_iret
lguest_iret:
	pushl	8(%esp)				/* the EFLAGS in the iret frame */
	popl	%ss:lguest_data+LGUEST_DATA_irq_enabled
lguest_noirq_iret:
	iret

/* Boot page tables and stack: zero RAM, no space in the file. */
	.section .bss, "aw", @nobits
	.balign	PAGE_SIZE
	.globl	boot_pgdir
boot_pgdir:
	.skip	PAGE_SIZE
boot_page_tables:
	.skip	BOOT_PTS * PAGE_SIZE
	/* The boot stack becomes the idle task's kernel stack. */
	.balign	16
boot_stack:
	.skip	16384
	.globl	boot_stack_top
boot_stack_top:

/* We never need an executable stack; say so, or ld complains. */
	.section .note.GNU-stack, "", @progbits
