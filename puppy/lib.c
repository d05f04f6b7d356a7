/*
 * lib.c - the few C library routines a freestanding kernel still needs.
 *
 * A Guest kernel has no libc underneath it, yet gcc may emit calls to
 * memcpy/memset/memmove/memcmp for struct copies and large initialisers,
 * so we supply them.  The x86 string instructions do the work; this file is
 * built with -fno-tree-loop-distribute-patterns so that gcc cannot turn a
 * loop in here back into a call to the function it is part of.
 */
#include "puppy.h"

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;

	asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	asm volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	const char *s = src;
	char *d = dst;

	if (d <= s || d >= s + n)
		return memcpy(dst, src, n);
	/* Overlapping with dst above src: copy backwards, last byte first. */
	s += n - 1;
	d += n - 1;
	asm volatile("std; rep movsb; cld"
		     : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

/*
 * 64-bit by 32-bit division without libgcc: long division in two steps of
 * the CPU's own 64/32 "divl".  The high word is divided first; its
 * remainder (< d) becomes the top half of the second dividend, which keeps
 * the second quotient within 32 bits, so divl cannot overflow.
 */
u64 div_u64_rem(u64 n, u32 d, u32 *rem)
{
	u32 hi = (u32)(n >> 32), lo = (u32)n;
	u32 q_hi = hi / d, r = hi % d, q_lo;

	asm("divl %4" : "=a"(q_lo), "=d"(r) : "a"(lo), "d"(r), "rm"(d));
	if (rem)
		*rem = r;
	return ((u64)q_hi << 32) | q_lo;
}
