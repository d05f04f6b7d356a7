/* Benchmark guest: ROUNDS system calls from ring 3 through a GATE_TYPE gate (0xF trap
 * gate: direct; 0xE interrupt gate: reflected by the Host), then power off. */
syscall:
	decl %edi
	jz done
	jmp lguest_iret
done:	POWEROFF
test_main:
	INIT
	call setup_user_paging
	GATE 0x80, syscall, GATE_TYPE, 3
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $ROUNDS, %edi
	TO_USER user
user:	int $0x80
	jmp user
