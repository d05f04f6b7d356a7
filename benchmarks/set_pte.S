/* Benchmark guest: N SET_PTE hypercalls of one page (prefilled) in directory PGDIR. */
test_main:
	INIT
	call setup_user_paging
	movl $ROUNDS, %edi
1:	HCALL LHCALL_SET_PTE, $PGDIR, $0x300000, $0x300067
	decl %edi
	jnz 1b
	POWEROFF
