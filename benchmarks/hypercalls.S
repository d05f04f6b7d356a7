/* Benchmark guest: N hypercall round trips of HCALL with ARG1 in %ebx; by default
 * SEND_INTERRUPTS, which does no work (and which the native path serves in C). */
	.ifndef HCALL
	.set HCALL, LHCALL_SEND_INTERRUPTS
	.set ARG1, 0
	.endif
test_main:
	INIT
	movl $ROUNDS, %edi
1:	movl $HCALL, %eax
	movl $ARG1, %ebx
	int $0x1f
	decl %edi
	jnz 1b
	POWEROFF
