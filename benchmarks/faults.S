/* Benchmark guest: ROUNDS passes over 1024 pages (4 MiB) each touching every page once,
 * with FLUSH_TLB(1) between passes, so every touch is a shadow fill by the Host.
 * SETUP_PAGING is the prelude's setup_user_paging, or setup_pae_paging (run with PAE). */
test_main:
	INIT
	call SETUP_PAGING
	movl $ROUNDS, %edi
1:	HCALL LHCALL_FLUSH_TLB, $1
	xorl %ebp, %ebp
2:	movl (%ebp), %eax
	addl $4096, %ebp
	cmpl $0x400000, %ebp
	jne 2b
	decl %edi
	jnz 1b
	POWEROFF
