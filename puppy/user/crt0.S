/*
 * crt0.S - where a puppy process starts: the kernel's iret lands here, at
 * ring 3, with argc at %esp and the argv pointers above it.
 */
	.section .text.start, "ax"
	.globl	_start
_start:
	movl	(%esp), %eax		/* argc */
	leal	4(%esp), %edx		/* argv */
	andl	$-16, %esp
	subl	$8, %esp
	pushl	%edx
	pushl	%eax
	call	main
	pushl	%eax
	call	exit			/* main's return value is the status */
1:	jmp	1b

	.section .note.GNU-stack, "", @progbits
