/*
 * ulib.h - the whole C library of a puppy process: system calls, a few
 * string routines and printf.
 */
#ifndef PUPPY_ULIB_H
#define PUPPY_ULIB_H

#include <stdarg.h>
#include <stddef.h>
#include "syscalls.h"

typedef unsigned int u32;

/*
 * A system call: number in %eax, arguments in %ebx, %ecx, %edx, result in
 * %eax.  The kernel preserves every other register.
 */
static inline int syscall3(int nr, u32 a, u32 b, u32 c)
{
	int ret;

	asm volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

static inline int write(int fd, const void *buf, u32 len)
{
	return syscall3(SYS_write, fd, (u32)buf, len);
}

static inline int getpid(void)
{
	return syscall3(SYS_getpid, 0, 0, 0);
}

static inline int sleep_ms(u32 ms)
{
	return syscall3(SYS_sleep, ms, 0, 0);
}

static inline int yield(void)
{
	return syscall3(SYS_yield, 0, 0, 0);
}

/* brk(0) asks where the heap ends; negative results are errors. */
static inline int brk(u32 end)
{
	return syscall3(SYS_brk, end, 0, 0);
}

static inline u32 uptime_ms(void)
{
	return syscall3(SYS_uptime, 0, 0, 0);
}

/* fd 0: the console.  Waits for input; returns what has arrived. */
static inline int read(int fd, void *buf, u32 len)
{
	return syscall3(SYS_read, fd, (u32)buf, len);
}

static inline void poweroff(void)
{
	syscall3(SYS_poweroff, 0, 0, 0);
}

static inline int ps(struct ps_entry *buf, u32 max)
{
	return syscall3(SYS_ps, (u32)buf, max, 0);
}

static inline int disk_info(struct disk_info *info)
{
	return syscall3(SYS_disk_info, (u32)info, 0, 0);
}

static inline int disk_read(u32 sector, void *buf, u32 count)
{
	return syscall3(SYS_disk_read, sector, (u32)buf, count);
}

static inline int disk_write(u32 sector, const void *buf, u32 count)
{
	return syscall3(SYS_disk_write, sector, (u32)buf, count);
}

static inline int disk_flush(void)
{
	return syscall3(SYS_disk_flush, 0, 0, 0);
}

static inline int getrandom(void *buf, u32 len)
{
	return syscall3(SYS_getrandom, (u32)buf, len, 0);
}

static inline int net_send(const void *frame, u32 len)
{
	return syscall3(SYS_net_send, (u32)frame, len, 0);
}

static inline int net_recv(void *buf, u32 len, u32 timeout_ms)
{
	return syscall3(SYS_net_recv, (u32)buf, len, timeout_ms);
}

static inline int net_mac(unsigned char mac[6])
{
	return syscall3(SYS_net_mac, (u32)mac, 0, 0);
}

void exit(int status) __attribute__((noreturn));
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A small deterministic generator: each process's data depends on its pid. */
static inline u32 next_random(u32 x)
{
	return x * 1103515245u + 12345u;
}

/*
 * The "steady" program keeps a secret page here, inside its heap; the
 * "evil peek-secret" process tries to read the same address in its own
 * address space, where nothing is mapped.
 */
#define SECRET_ADDR	0x08070000u

#endif /* PUPPY_ULIB_H */
