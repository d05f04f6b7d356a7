/*
 * head.S - how an lguest Guest boots (INIT, the first page table,
 * NEW_PGTABLE), and lguest_iret, the way back from every trap.
 */
#include "lguest.h"

#define pa(sym)		((sym) - PAGE_OFFSET)

/* How much low memory the boot page table covers, at most (like Linux). */
#define MAX_LOWMEM	0x4000000	/* 64 MiB */
#define PDE_KERNEL	0x063	/* Present, RW, Accessed, Dirty: no USER */
#define PTE_KERNEL	0x063	/* same; never PSE, never GLOBAL */
#ifdef CONFIG_PAE
/* 64-bit entries, 512 to a table; the PDPT's entries may carry only P. */
#define PTE_BYTES	8
#define TABLE_SHIFT	9
#define PDPT_ENTRY	0x001
#else
#define PTE_BYTES	4
#define TABLE_SHIFT	10
#define PGD_KERNEL_IDX	(PAGE_OFFSET >> 22)			/* 768 */
#endif
#define BOOT_PTS	(MAX_LOWMEM / (PAGE_SIZE << TABLE_SHIFT))	/* 16, PAE: 32 */

/* tour:G.10 Booting: a kernel that knows it is a Guest
 * The Launcher loads puppy the way a bootloader loads Linux: the ELF's two
 * segments are copied to guest-physical 1 MiB and up, a boot_params page
 * (the x86 boot protocol's "zero page") is filled in, and the Host starts
 * the vCPU at the entry point with %esi pointing at that page.  What is
 * unusual is the CPU we wake up on: ring 1, not ring 0 (ring 0 is the
 * Host's), flat segments, no stack, and no paging of our own.  Until we
 * give the Host a page table it runs us in "linear mode", where virtual
 * addresses are guest-physical ones.  We are linked at 0xC0000000
 * (PAGE_OFFSET, as an i386 Linux is), so until then every symbol has to be
 * turned into its physical address by hand: pa() below.
 *
 * boot_params.hdr.hardware_subarch says what kind of machine this is, and
 * 1 means lguest (§3.3).  A Guest kernel checks it because the same image
 * could be booted on bare metal, where the hypercalls below mean nothing.
 * Linux 4.9 does it in arch/x86/kernel/head_32.S: startup_32 clears the
 * BSS, copies boot_params, builds its first page tables and then jumps
 * through a table indexed by hardware_subarch to lguest_entry (§3.5).
 * puppy has no console yet at this point, so if the answer is no it spins.
 */
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

	/* tour:G.30 INIT: the Host learns where lguest_data is
	 * The first hypercall must be LGUEST_INIT, with the guest-physical
	 * address of lguest_data: any other call before it kills the Guest
	 * (§1.3).  The Host checks that the whole structure is in our RAM,
	 * reads the fields we filled in before we ever ran (hypercalls.c:
	 * the address of our noirq_iret instruction, where the kernel's
	 * shared mappings start, which vector is the system call) and writes
	 * its own: the clock, tsc_khz (0: do not trust a TSC) and reserve_mem,
	 * the top of the address space that belongs to the Switcher and that
	 * we must never map (§3.6).  Linux's lguest_entry makes this very
	 * call, in the same registers, as its first instruction.
	 */
	movl	$LHCALL_LGUEST_INIT, %eax
	movl	$pa(lguest_data), %ebx
	int	$LGUEST_TRAP_ENTRY

	/* tour:G.40 The first page tables, and NEW_PGTABLE
	 * In linear mode the Host pretends our page tables map everything
	 * one to one (§6.2).  To run at 0xC0000000 we need a real directory,
	 * so low memory (all of RAM, at most 64 MiB; the size is e820_map[0])
	 * is mapped twice: at 0, so that this code, still running at
	 * physical addresses, survives the switch, and at PAGE_OFFSET, where
	 * the C code lives.  (PAE: the PDPT's first and kernel entries both
	 * name one PMD, as Linux's initial_page_table does.)  4 KiB pages only, and only pages that exist: the
	 * Host takes no large pages and kills a Guest whose tables point
	 * past the end of its RAM (§6.3).
	 *
	 * NEW_PGTABLE gives the Host the directory's physical address and
	 * ends linear mode.  The CPU never walks our tables itself: the Host
	 * runs it on shadow page tables that it fills from ours, a page at a
	 * time, as we touch them (chapter H).  Linux 4.9's head_32.S builds
	 * the same double mapping (initial_page_table) and its lguest_entry's
	 * second hypercall is this one.  Then a virtual stack, and an
	 * absolute jump up into puppy_main.
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
	movl	%edx, (%edi,%ecx,PTE_BYTES)	/* (PAE: the high half stays 0) */
	addl	$PAGE_SIZE, %edx
	incl	%ecx
	jmp	3b

	/* One PDE per page table used, in both halves of the directory. */
4:	addl	$(1 << TABLE_SHIFT) - 1, %eax
	shrl	$TABLE_SHIFT, %eax		/* %eax = page tables used */
#ifdef CONFIG_PAE
	movl	$pa(boot_pmd), %edi
#else
	movl	$pa(boot_pgdir), %edi
#endif
	xorl	%ecx, %ecx
	movl	$pa(boot_page_tables) + PDE_KERNEL, %edx
5:	cmpl	%eax, %ecx
	jae	6f
	movl	%edx, (%edi,%ecx,PTE_BYTES)
#ifndef CONFIG_PAE
	movl	%edx, PGD_KERNEL_IDX*4(%edi,%ecx,4)
#endif
	addl	$PAGE_SIZE, %edx
	incl	%ecx
	jmp	5b
6:
#ifdef CONFIG_PAE
	movl	$pa(boot_pmd) + PDPT_ENTRY, pa(boot_pgdir)
	movl	$pa(boot_pmd) + PDPT_ENTRY, pa(boot_pgdir) + 3 * 8
#endif

	/* Switch to it: linear mode ends here. */
	movl	$LHCALL_NEW_PGTABLE, %eax
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

/* tour:G.110 Back from a trap: lguest_iret
 * "iret" pops eip, cs and eflags, but the interrupt flag it would restore
 * is not ours: the real EFLAGS.IF belongs to the Host, and the Guest's
 * flag is lguest_data.irq_enabled.  So we copy the frame's IF bit into
 * irq_enabled first, then iret.  Between those two instructions
 * interrupts are on again while we still stand on the old frame, and an
 * interrupt delivered there would pile a second frame on top.  The Host
 * knows the one address of that final iret (lguest_data.noirq_iret, read
 * at INIT); if it finds us stopped exactly there, it reuses our frame
 * instead of pushing a new one (§4.7).  The %ss: prefix is there because
 * %ds may already hold a user segment.  Linux 4.9's lguest_iret is the
 * same two instructions.
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
#ifdef CONFIG_PAE
	.globl	boot_pmd
boot_pmd:
	.skip	PAGE_SIZE
#endif
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
