/*
 * puppy.h - what the pieces of the puppy kernel share.
 */
#ifndef PUPPY_H
#define PUPPY_H

#include <stdarg.h>
#include <stddef.h>
#include "lguest.h"

/* lib.c */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* early_console.c */
int early_console_init(void);
void console_write(const char *s, unsigned int len);
int puts(const char *s);		/* appends a newline, like C's */
int vprintk(const char *fmt, va_list ap);
int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* main.c */
void puppy_main(u32 boot_params_pa) __attribute__((noreturn));

#endif /* PUPPY_H */
