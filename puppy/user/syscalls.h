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
#define SYS_read	8	/* read(fd 0, buf, len) -> bytes (>= 1; waits for input) */
#define SYS_poweroff	9	/* poweroff(): never returns */
#define SYS_ps		10	/* ps(struct ps_entry *buf, max) -> entries filled */
#define SYS_disk_info	11	/* disk_info(struct disk_info *) -> 0 */
#define SYS_disk_read	12	/* disk_read(sector, buf, count <= 8) -> 0 */
#define SYS_disk_write	13	/* disk_write(sector, buf, count <= 8) -> 0 */
#define SYS_disk_flush	14	/* disk_flush() -> 0 */
#define SYS_getrandom	15	/* getrandom(buf, len) -> bytes (at most 4096) */
#define SYS_net_send	16	/* net_send(frame, len 14..1514) -> 0 */
#define SYS_net_recv	17	/* net_recv(buf, len, timeout_ms) -> frame length, 0 if none */
#define SYS_net_mac	18	/* net_mac(u8 mac[6]) -> 0 */

/* What ps and disk_info fill in. */
#define PS_RUNNING	0
#define PS_RUNNABLE	1
#define PS_SLEEPING	2
#define PS_WAITING	3	/* for a device */

struct ps_entry {
	int pid;
	int state;
	char name[16];
};

struct disk_info {
	unsigned int sectors_lo, sectors_hi;	/* capacity in 512-byte sectors */
	unsigned int read_only;
};

#define DISK_MAX_SECTORS	8	/* per disk_read/disk_write call */

#define EIO		5
#define EBADF		9
#define ENOMEM		12
#define EFAULT		14
#define ENODEV		19	/* no such device on this Guest */
#define EINVAL		22
#define EROFS		30
#define ENOSYS		38
#define EOPNOTSUPP	95

#endif /* PUPPY_SYSCALLS_H */
