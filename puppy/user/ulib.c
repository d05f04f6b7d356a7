/*
 * ulib.c - the user library's out-of-line part.  printf formats a whole
 * line into a buffer and writes it with one system call, so the lines of
 * different processes never mix.
 */
#include "ulib.h"
#include "../format.h"

void exit(int status)
{
	syscall3(SYS_exit, status, 0, 0);
	for (;;)
		;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b || !*a)
			return (unsigned char)*a - (unsigned char)*b;
	}
	return 0;
}

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;

	while (n--)
		*d++ = c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

/*
 * The kernel's own formatter (format.c, built into this library too), into
 * a 256-byte line that is dropped past its end rather than flushed: one
 * printf, one write.
 */
int printf(const char *fmt, ...)
{
	char line[256];
	struct sink out = { line, sizeof(line), 0, NULL };
	va_list ap;

	va_start(ap, fmt);
	vformat(&out, fmt, ap);
	va_end(ap);
	return write(1, line, out.len);
}
