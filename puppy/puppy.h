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
void early_console_write(const char *s, unsigned int len);
void console_write(const char *s, unsigned int len);
void console_emergency(void);		/* back to emerg_wr for good (oops) */
int puts(const char *s);		/* appends a newline, like C's */
int vprintk(const char *fmt, va_list ap);
int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int snprintk(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* lib.c: 64-by-32-bit division with two 32-bit divides (no libgcc) */
u64 div_u64_rem(u64 n, u32 d, u32 *rem);

/* virtio_console.c: the console driver, once bound */
int virtio_console_ready(void);
void virtio_console_write(const char *s, unsigned int len);
void virtio_console_flush(void);

/* segments.c */
void user_segments_init(void);

/* main.c */
void puppy_main(u32 boot_params_pa) __attribute__((noreturn));
void shutdown(const char *why, u32 how) __attribute__((noreturn));
void power_off(void) __attribute__((noreturn));

/* cpu.c: filtered cpuid and the virtual CR0 (lazy FPU) */
void puppy_cpuid(u32 leaf, u32 *eax, u32 *ebx, u32 *ecx, u32 *edx);
u32 read_cr0(void);
void write_cr0(u32 val);
void clts(void);

/* time.c: the clockevent, the lguest clocksource, idling */
#define HZ	100
extern volatile u32 jiffies;
int clockevent_set_next(u32 delta_ns);
void clockevent_shutdown(void);
void time_init(void);
u64 clock_ns(void);
void idle(void);
void sleep_ms(u32 ms);

#endif /* PUPPY_H */
