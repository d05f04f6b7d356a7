/* Benchmark guest: ROUNDS reads from ring 3 of a page the Guest's tables leave not
 * present; its page-fault handler (a GATE_TYPE gate) steps over the 5-byte `movl` and
 * returns, so each round is one page fault reflected into the Guest and its iret. */
on_pf:	addl $4, %esp			/* the error code */
	addl $5, (%esp)
	decl %edi
	jz done
	jmp lguest_iret
done:	POWEROFF
test_main:
	INIT
	call setup_user_paging
	movl $0, page_table + (0x380000 >> 12) * 4
	HCALL LHCALL_SET_PTE, $page_dir, $0x380000, $0
	GATE 14, on_pf, GATE_TYPE
	movl $0x200, lguest_data + LD_IRQ_ENABLED
	movl $ROUNDS, %edi
	TO_USER user
user:	movl 0x380000, %eax
	jmp user
