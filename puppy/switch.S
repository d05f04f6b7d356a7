/*
 * switch.S - the context switch itself: trading one kernel stack for another.
 *
 * Everything a sleeping task needs to run again is on its own kernel stack:
 * how it got into the kernel (a pt_regs at the top) and where in the kernel
 * it stopped (the C call chain down to schedule()).  So switching tasks is
 * saving the registers C expects a call to keep (ebp, ebx, esi, edi), storing
 * %esp in the old task and loading the new task's.  The lguest part -- the
 * new address space (NEW_PGTABLE) and the new trap stack (SET_STACK) -- was
 * queued by the C code around this (sched.c: context_switch).
 *
 * struct task *switch_stacks(struct task *prev, struct task *next);
 *
 * Returns, on next's stack, the task that was running before it: %eax is
 * not saved, so it still holds prev when next's `ret` runs.
 */
#define TASK_KSP	0	/* struct task starts with the saved esp */

	.text
	.globl	switch_stacks
switch_stacks:
	movl	4(%esp), %eax		/* prev */
	movl	8(%esp), %edx		/* next */
	pushl	%ebp
	pushl	%ebx
	pushl	%esi
	pushl	%edi
	movl	%esp, TASK_KSP(%eax)
	movl	TASK_KSP(%edx), %esp
	popl	%edi
	popl	%esi
	popl	%ebx
	popl	%ebp
	ret

	.section .note.GNU-stack, "", @progbits
