/*
 * ulib.c - the user library's out-of-line part.  printf formats a whole
 * line into a buffer and writes it with one system call, so the lines of
 * different processes never mix.
 */
#include "ulib.h"

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

struct buf {
	char data[256];
	u32 len;
};

static void put(struct buf *b, char c)
{
	if (b->len < sizeof(b->data))
		b->data[b->len++] = c;
}

static void put_number(struct buf *b, u32 v, u32 base, int neg, u32 width, char pad)
{
	char digits[12];
	u32 n = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		digits[n++] = '-';
	for (; width > n; width--)
		put(b, pad);
	while (n)
		put(b, digits[--n]);
}

/* %d %u %x %s %c %%, with an optional width and '0' padding. */
int printf(const char *fmt, ...)
{
	struct buf b = { .len = 0 };
	va_list ap;

	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		u32 width = 0;
		char pad = ' ';

		if (*fmt != '%') {
			put(&b, *fmt);
			continue;
		}
		if (*++fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		switch (*fmt) {
		case 'd': {
			int v = va_arg(ap, int);

			put_number(&b, v < 0 ? 0u - (u32)v : (u32)v, 10, v < 0, width, pad);
			break;
		}
		case 'u':
			put_number(&b, va_arg(ap, u32), 10, 0, width, pad);
			break;
		case 'x':
			put_number(&b, va_arg(ap, u32), 16, 0, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);

			while (*s)
				put(&b, *s++);
			break;
		}
		case 'c':
			put(&b, (char)va_arg(ap, int));
			break;
		case '\0':
			fmt--;
			break;
		default:
			put(&b, *fmt);
			break;
		}
	}
	va_end(ap);
	return write(1, b.data, b.len);
}
