/*
 * format.h - printf's formatting, shared by the kernel and its processes.
 *
 * The kernel (printk, snprintk) and the user library (printf) are separate
 * freestanding binaries with no C library under either, so each needs its
 * own copy of the formatter.  They get the same one: format.c is compiled
 * twice, once into the kernel and once into the user library (Makefile),
 * so a process's "%5d" and the kernel's always agree.  This header needs
 * nothing but the compiler's own <stdarg.h>.
 */
#ifndef PUPPY_FORMAT_H
#define PUPPY_FORMAT_H

#include <stdarg.h>

/*
 * Where formatted characters go: a buffer of @size bytes.  When it fills,
 * @flush (if any) takes what is there and the buffer starts again (printk
 * streams a long line to the console); without one the rest is dropped
 * (snprintk, and printf's one-line buffer).
 */
struct sink {
	char *buf;
	unsigned int size, len;
	void (*flush)(const char *s, unsigned int len);
};

/*
 * %d %u %x %p %c %s %%, an optional width, '0' padding (after the sign).
 * 'l' is ignored (long is int here); a NULL %s prints "(null)"; anything
 * else is shown as written.  Returns the number of characters formatted,
 * dropped ones included.
 */
int vformat(struct sink *out, const char *fmt, va_list ap);

#endif /* PUPPY_FORMAT_H */
