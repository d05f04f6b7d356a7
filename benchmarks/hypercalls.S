/* Benchmark guest: N hypercall round trips (SEND_INTERRUPTS does no work). */
test_main:
	INIT
	movl $ROUNDS, %edi
1:	movl $LHCALL_SEND_INTERRUPTS, %eax
	int $0x1f
	decl %edi
	jnz 1b
	POWEROFF
