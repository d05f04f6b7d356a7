/*
 * native_main.c - run puppy's benchmark as an ordinary 32-bit Linux process.
 *
 * The same bench.c, with the same compiler flags as the kernel, gives the
 * "native" time that the Guest's run under lguest is compared with.  It needs
 * no C library (so no 32-bit libc on the build machine): it talks to Linux with
 * `int $0x80` itself.  CPU time of this process only, so a busy machine does
 * not count against it.
 */
#include "bench.h"

#define SYS_exit		1
#define SYS_write		4
#define SYS_clock_gettime	265
#define CLOCK_PROCESS_CPUTIME_ID 2

struct timespec32 { int tv_sec; int tv_nsec; };

static int syscall3(int nr, int a, int b, int c)
{
	int ret;

	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

static char *put_dec(char *p, unsigned int v, int digits)
{
	char tmp[12];
	int n = 0;

	do {
		tmp[n++] = '0' + v % 10;
		v /= 10;
	} while (v || n < digits);
	while (n)
		*p++ = tmp[--n];
	return p;
}

static void cpu_time(struct timespec32 *t)
{
	syscall3(SYS_clock_gettime, CLOCK_PROCESS_CPUTIME_ID, (int)t, 0);
}

int native_main(void);
int native_main(void)
{
	static const char hex[] = "0123456789abcdef";
	char line[64], *p = line;
	struct timespec32 t0, t1;
	unsigned int sum, us;
	const char *s;
	int i;

	cpu_time(&t0);
	sum = puppy_bench();
	cpu_time(&t1);
	/* In 32-bit arithmetic: no libgcc for 64-bit division here. */
	us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;

	/* "checksum 0x%08x seconds %u.%06u\n" */
	for (s = "checksum 0x"; *s; s++)
		*p++ = *s;
	for (i = 28; i >= 0; i -= 4)
		*p++ = hex[(sum >> i) & 0xf];
	for (s = " seconds "; *s; s++)
		*p++ = *s;
	p = put_dec(p, us / 1000000, 1);
	*p++ = '.';
	p = put_dec(p, us % 1000000, 6);
	*p++ = '\n';
	syscall3(SYS_write, 1, (int)line, p - line);
	return 0;
}

__asm__(".globl _start\n"
	"_start:\n"
	"	call native_main\n"
	"	movl %eax, %ebx\n"
	"	movl $1, %eax\n"		/* SYS_exit */
	"	int $0x80\n");
