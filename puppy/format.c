/*
 * format.c - the one printf formatter, built into the kernel and into the
 * user library (see format.h).  It only touches its arguments and the sink:
 * no console, no system call, no library routine.
 */
#include "format.h"

static void pchar(struct sink *out, char c)
{
	if (out->len == out->size) {
		if (!out->flush)
			return;		/* no room and nowhere to go: dropped */
		out->flush(out->buf, out->len);
		out->len = 0;
	}
	out->buf[out->len++] = c;
}

static int pnumber(struct sink *o, unsigned int v, unsigned int base, int neg,
		   unsigned int width, char pad)
{
	char digits[12];
	unsigned int n = 0, out = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		digits[n++] = '-';
	/* Zero padding goes after the sign, space padding before it. */
	if (neg && pad == '0') {
		pchar(o, digits[--n]);
		out++;
		if (width)
			width--;
	}
	for (; width > n; width--, out++)
		pchar(o, pad);
	while (n) {
		pchar(o, digits[--n]);
		out++;
	}
	return out;
}

static int pstring(struct sink *o, const char *s, unsigned int width)
{
	unsigned int len = 0, out = 0;

	if (!s)
		s = "(null)";
	while (s[len])
		len++;
	for (; width > len; width--, out++)
		pchar(o, ' ');
	for (; *s; s++, out++)
		pchar(o, *s);
	return out;
}

int vformat(struct sink *o, const char *fmt, va_list ap)
{
	int count = 0;

	for (; *fmt; fmt++) {
		unsigned int width = 0;
		char pad = ' ';

		if (*fmt != '%') {
			pchar(o, *fmt);
			count++;
			continue;
		}
		fmt++;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')	/* long is int here */
			fmt++;

		switch (*fmt) {
		case 'd': {
			int v = va_arg(ap, int);
			unsigned int mag = v < 0 ? 0u - (unsigned int)v : (unsigned int)v;

			count += pnumber(o, mag, 10, v < 0, width, pad);
			break;
		}
		case 'u':
			count += pnumber(o, va_arg(ap, unsigned int), 10, 0, width, pad);
			break;
		case 'x':
		case 'p':
			count += pnumber(o, va_arg(ap, unsigned int), 16, 0, width, pad);
			break;
		case 'c':
			pchar(o, (char)va_arg(ap, int));
			count++;
			break;
		case 's':
			count += pstring(o, va_arg(ap, const char *), width);
			break;
		case '%':
			pchar(o, '%');
			count++;
			break;
		case '\0':		/* a lone '%' at the very end */
			fmt--;
			break;
		default:		/* unknown: show it as written */
			pchar(o, '%');
			pchar(o, *fmt);
			count += 2;
			break;
		}
	}
	return count;
}
