/*
 * programs.S - the user programs, carried inside the kernel image.
 *
 * puppy has no file system (its disk is a bare array of sectors), so its
 * programs are linked into the kernel as plain ELF files (built from user/
 * by the Makefile) and exec.c loads them from here, exactly as it would
 * from a file.  user_programs is the table exec.c searches by name.
 */
	.macro	image name
	.balign	16
\name\()_image:
	.incbin	"\name\().elf"
\name\()_image_end:
	.endm

	.macro	entry name
	.long	\name\()_name, \name\()_image, \name\()_image_end
	.endm

	.macro	name name
\name\()_name:
	.asciz	"\name"
	.endm

#define PROGRAMS(x) x hello; x counter; x sleeper; x worker; x steady; x evil; x sh

	.section .rodata, "a"
	PROGRAMS(image)
	PROGRAMS(name)

	.balign	4
	.globl	user_programs
user_programs:
	PROGRAMS(entry)
	.long	0, 0, 0

	.section .note.GNU-stack, "", @progbits
