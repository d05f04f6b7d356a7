/*
 * syscalls.h - puppy's system call numbers and error codes, shared by the
 * kernel (syscall.c) and the user library (ulib.h).
 *
 * `int $0x80` with the number in %eax and the arguments in %ebx, %ecx,
 * %edx; the result comes back in %eax, negative for an error.
 */
#ifndef PUPPY_SYSCALLS_H
#define PUPPY_SYSCALLS_H

#define SYS_exit	1	/* exit(status): never returns */
#define SYS_write	2	/* write(fd 1 or 2, buf, len) -> len */
#define SYS_getpid	3	/* getpid() -> pid */
#define SYS_sleep	4	/* sleep(ms) -> 0 */
#define SYS_yield	5	/* yield() -> 0 */
#define SYS_brk		6	/* brk(new_end) -> new end; brk(0) -> current end */
#define SYS_uptime	7	/* uptime() -> milliseconds since boot (ticks * 10) */

#define EBADF		9
#define ENOMEM		12
#define EFAULT		14
#define ENOSYS		38

#endif /* PUPPY_SYSCALLS_H */
