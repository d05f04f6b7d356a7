/*
 * lguest_data (docs/abi.md §2) as an assembly Guest starts it: the timer blocked,
 * every async hypercall slot free, and the fields INIT reads.  The fuzz Guest and
 * the tests' prelude both include this; each defines its own `noirq_iret`.
 */
	.data
	.p2align 12
	.globl lguest_data, ld_kernel_address, ld_syscall_vec
lguest_data:
	.long 0				/* irq_enabled */
	.long 1				/* blocked_interrupts: timer blocked */
	.long 0				/* cr2 */
	.long 0, 0			/* time */
	.long 0				/* irq_pending */
	.fill 64, 1, 0xff		/* hcall_status: all free */
	.fill 64 * 20, 1, 0		/* hcalls */
	.long 0				/* reserve_mem */
	.long 0				/* tsc_khz */
	.long noirq_iret		/* noirq_iret */
ld_kernel_address:
	.long 0xc0000000		/* kernel_address */
ld_syscall_vec:
	.long 0x80			/* syscall_vec */
