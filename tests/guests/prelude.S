/*
 * Prelude for the Host's assembly test guests.  Each test guest is this file
 * followed by its own code, which starts at `test_main` with a stack, at ring 1,
 * in linear mode (virtual == physical), before INIT: exactly like a kernel's
 * very first instructions.  Linked flat at 0x100000.
 */
	.code32

	.set LHCALL_FLUSH_ASYNC, 0
	.set LHCALL_LGUEST_INIT, 1
	.set LHCALL_SHUTDOWN, 2
	.set LHCALL_NEW_PGTABLE, 4
	.set LHCALL_FLUSH_TLB, 5
	.set LHCALL_LOAD_IDT_ENTRY, 6
	.set LHCALL_SET_STACK, 7
	.set LHCALL_TS, 8
	.set LHCALL_SET_CLOCKEVENT, 9
	.set LHCALL_HALT, 10
	.set LHCALL_SET_PMD, 13
	.set LHCALL_SET_PTE, 14
	.set LHCALL_SET_PGD, 15
	.set LHCALL_LOAD_TLS, 16
	.set LHCALL_LOAD_GDT_ENTRY, 18
	.set LHCALL_SEND_INTERRUPTS, 19

	.set LD_IRQ_ENABLED, 0
	.set LD_BLOCKED, 4
	.set LD_CR2, 8
	.set LD_IRQ_PENDING, 20
	.set LD_HCALL_STATUS, 24
	.set LD_HCALLS, 88
	.set LD_RESERVE_MEM, 1368
	.set LD_TSC_KHZ, 1372
	.set LD_NOIRQ_IRET, 1376
	.set LD_KERNEL_ADDRESS, 1380
	.set LD_SYSCALL_VEC, 1384

/* A synchronous hypercall: number and up to four arguments. */
.macro HCALL nr, a1=$0, a2=$0, a3=$0, a4=$0
	movl $\nr, %eax
	movl \a1, %ebx
	movl \a2, %ecx
	movl \a3, %edx
	movl \a4, %esi
	int $0x1f
.endm

/* Queue a call on the async ring in slot `slot` (the test keeps count). */
.macro QUEUE slot, nr, a1=$0, a2=$0, a3=$0, a4=$0
	movl $\nr, lguest_data + LD_HCALLS + 20 * \slot
	movl \a1, lguest_data + LD_HCALLS + 20 * \slot + 4
	movl \a2, lguest_data + LD_HCALLS + 20 * \slot + 8
	movl \a3, lguest_data + LD_HCALLS + 20 * \slot + 12
	movl \a4, lguest_data + LD_HCALLS + 20 * \slot + 16
	movb $0, lguest_data + LD_HCALL_STATUS + \slot
.endm

.macro INIT
	HCALL LHCALL_LGUEST_INIT, $lguest_data
.endm

/* Power off with a reason: the Launcher exits 0 only for "Power down". */
.macro SHUTDOWN msg, how=$1
	HCALL LHCALL_SHUTDOWN, \msg, \how
.endm

.macro POWEROFF
	SHUTDOWN $power_down
.endm

/*
 * For a trap handler that compares what it found on both paths: one record of ten words
 * in the ring from `log` to `log_end` (the test defines them, and `log_at` and `records`;
 * a long run keeps the last records): `first` and `second` (registers or memory, not
 * %ecx or %edi), the five words from `frame`(%esp) up (eip, cs, eflags, then the old esp
 * and ss from ring 3, or what the interrupted stack held above the frame from ring 1),
 * irq_enabled, %eax and %esp.  Uses %ecx and %edi, which the handler saved.
 */
.macro LOG_TRAP first, second, frame
	movl log_at, %edi
	movl \first, %ecx
	movl %ecx, (%edi)
	movl \second, %ecx
	movl %ecx, 4(%edi)
	.irp word, 0, 1, 2, 3, 4
	movl \frame + 4 * \word(%esp), %ecx
	movl %ecx, 8 + 4 * \word(%edi)
	.endr
	movl lguest_data + LD_IRQ_ENABLED, %ecx
	movl %ecx, 28(%edi)
	movl %eax, 32(%edi)
	movl %esp, 36(%edi)
	incl records
	addl $40, log_at
	cmpl $log_end, log_at
	jb .Llog_kept\@
	movl $log, log_at
.Llog_kept\@:
.endm

/* Install an IDT gate: vector, handler, type (0xE interrupt / 0xF trap), dpl. */
.macro GATE vector, handler, type=0xE, dpl=1
	movl $\handler, %ecx
	andl $0xffff, %ecx
	orl $(0x61 << 16), %ecx
	movl $\handler, %edx
	andl $0xffff0000, %edx
	orl $(0x8000 | (\dpl << 13) | (\type << 8)), %edx
	movl $LHCALL_LOAD_IDT_ENTRY, %eax
	movl $\vector, %ebx
	int $0x1f
.endm

	.text
	.globl start
start:
	movl $stack_top, %esp
	jmp test_main

/* Print the NUL-terminated string at %esi through the console's emerg_wr. */
print:
	pushl %eax
	pushl %edx
	pushl %esi
1:	movzbl (%esi), %eax
	testl %eax, %eax
	jz 2f
	call putc
	incl %esi
	jmp 1b
2:	popl %esi
	popl %edx
	popl %eax
	ret

/*
 * Character in %eax: point the PCI_CFG window at emerg_wr, then write it.  The
 * console is slot 1; its PCI_CFG capability sits at 0x84 in config space, so
 * cap.bar (byte 4 of the cap) is 0x88, cap.offset 0x8c, cap.length 0x90 and
 * the data window 0x94 (spec §7.2); emerg_wr is at 8 in the device config, which
 * starts at 60 in BAR0.
 */
putc:
	pushl %eax
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x88), %eax	/* cap.bar */
	outl %eax, %dx
	movw $0xcfc, %dx
	movb $0, %al
	outb %al, %dx
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x90), %eax	/* cap.length */
	outl %eax, %dx
	movw $0xcfc, %dx
	movl $4, %eax
	outl %eax, %dx
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x8c), %eax	/* cap.offset */
	outl %eax, %dx
	movw $0xcfc, %dx
	movl $(60 + 8), %eax
	outl %eax, %dx
	movw $0xcf8, %dx
	movl $(0x80000000 | (1 << 11) | 0x94), %eax	/* the data window */
	outl %eax, %dx
	movw $0xcfc, %dx
	popl %eax
	outl %eax, %dx
	ret

#include "lguest_data.S"		/* from lguest/fuzz/guest/ */
	.data

power_down:
	.asciz "Power down"

	.bss
	.p2align 12
	.space 16384
stack_top:

	.text
/* lguest_iret as the 4.x Guest has it: restore irq_enabled, then the iret. */
	.globl lguest_iret
lguest_iret:
	pushl 8(%esp)
	popl %ss:lguest_data
noirq_iret:
	iret

/*
 * Leave linear mode with an identity map of the first 4 MiB, user-accessible,
 * and flat user segments in GDT entries 14 and 15: what ring-3 tests need.
 */
	.text
setup_user_paging:
	xorl %eax, %eax
1:	movl %eax, %edx
	shll $12, %edx
	orl $0x067, %edx
	movl %edx, page_table(,%eax,4)
	incl %eax
	cmpl $1024, %eax
	jne 1b
	movl $page_table, %eax
	orl $0x067, %eax
	movl %eax, page_dir
	HCALL LHCALL_NEW_PGTABLE, $page_dir
	HCALL LHCALL_LOAD_GDT_ENTRY, $14, $0x0000ffff, $0x00cffa00
	HCALL LHCALL_LOAD_GDT_ENTRY, $15, $0x0000ffff, $0x00cff200
	HCALL LHCALL_SET_STACK, $0x69, $kstack_top, $1
	ret

/*
 * The same for a PAE Guest (lguest --pae): a PDPT whose first entry (P only) names
 * one PMD, whose first two entries name two tables of 64-bit PTEs.
 */
setup_pae_paging:
	xorl %eax, %eax
1:	movl %eax, %edx
	shll $12, %edx
	orl $0x067, %edx
	movl %edx, pae_pt(,%eax,8)
	incl %eax
	cmpl $1024, %eax
	jne 1b
	movl $pae_pt + 0x067, pmd
	movl $pae_pt + 0x1067, pmd + 8
	movl $pmd + 1, pdpt
	HCALL LHCALL_NEW_PGTABLE, $pdpt
	HCALL LHCALL_LOAD_GDT_ENTRY, $14, $0x0000ffff, $0x00cffa00
	HCALL LHCALL_LOAD_GDT_ENTRY, $15, $0x0000ffff, $0x00cff200
	HCALL LHCALL_SET_STACK, $0x69, $kstack_top, $1
	ret

/* iret to ring 3 at `target` with the user stack. */
.macro TO_USER target
	pushl $0x7b
	pushl $ustack_top
	pushl $0x202
	pushl $0x73
	pushl $\target
	iret
.endm

	.bss
	.p2align 12
page_dir:
	.space 4096
page_table:
	.space 4096
pdpt:
	.space 4096
pmd:
	.space 4096
pae_pt:
	.space 8192
	.space 4096
kstack_top:
	.space 4096
ustack_top:
	.text
