/* Benchmark guest: ROUNDS round trips between two address spaces that share the
 * kernel's identity map; each switch touches a few pages, as a context switch would. */
	.bss
	.p2align 12
dir_b:	.space 4096
	.text
test_main:
	INIT
	call setup_user_paging
	movl $page_table + 0x67, dir_b
	movl $ROUNDS, %edi
1:	HCALL LHCALL_NEW_PGTABLE, $dir_b
	movl 0x200000, %eax
	movl 0x201000, %eax
	movl 0x202000, %eax
	HCALL LHCALL_NEW_PGTABLE, $page_dir
	movl 0x200000, %eax
	movl 0x201000, %eax
	movl 0x202000, %eax
	decl %edi
	jnz 1b
	POWEROFF
