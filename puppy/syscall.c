/*
 * syscall.c - system calls: what a process may ask of the kernel.
 *
 * A process enters with `int $0x80` (entry.S: syscall_entry), which lands on
 * its kernel stack as a pt_regs; the number is in eax, the arguments in ebx,
 * ecx and edx, and whatever we leave in regs->eax is what it gets back.
 * Nothing a process passes is trusted: pointers are checked against its own
 * page tables and copied through the kernel's mapping (copy_from_user).
 */
#include "puppy.h"
#include "sched.h"
#include "virtio.h"
#include "user/syscalls.h"

#define WRITE_CHUNK	128
#define READ_CHUNK	256
#define SECTOR_SIZE	512

/* Each chunk goes to the console as it is copied; the whole buffer was
 * checked first, so a bad pointer means nothing is written at all. */
static int sys_write(u32 fd, u32 buf, u32 len)
{
	char chunk[WRITE_CHUNK];
	u32 done, n;

	if (fd != 1 && fd != 2)
		return -EBADF;
	if (!user_access_ok(current->mm, buf, len))
		return -EFAULT;
	for (done = 0; done < len; done += n) {
		n = len - done < WRITE_CHUNK ? len - done : WRITE_CHUNK;
		if (copy_from_user(current->mm, chunk, buf + done, n))
			return -EFAULT;
		console_write(chunk, n);
	}
	return len;
}

/*
 * fd 0 is the console's input: wait for at least one byte, return what
 * has come (up to @len).  The buffer is checked before we wait, so input
 * is never taken and then lost to a bad pointer.
 */
static int sys_read(u32 fd, u32 buf, u32 len)
{
	char chunk[READ_CHUNK];
	int n;

	if (fd != 0)
		return -EBADF;
	if (len > READ_CHUNK)
		len = READ_CHUNK;
	if (!user_write_ok(current->mm, buf, len))
		return -EFAULT;
	n = console_read(chunk, len);
	if (n > 0 && copy_to_user(current->mm, buf, chunk, n))
		return -EFAULT;
	return n;
}

static int sys_ps(u32 buf, u32 max)
{
	struct ps_entry list[MAX_TASKS];
	int n;

	if (max > MAX_TASKS)
		max = MAX_TASKS;
	n = task_list(list, max);
	if (copy_to_user(current->mm, buf, list, n * sizeof(list[0])))
		return -EFAULT;
	return n;
}

static int sys_disk_info(u32 buf)
{
	struct disk_info info;
	u64 sectors = blk_capacity();

	if (!blk_present())
		return -ENODEV;
	info.sectors_lo = (u32)sectors;
	info.sectors_hi = (u32)(sectors >> 32);
	info.read_only = blk_read_only();
	return copy_to_user(current->mm, buf, &info, sizeof(info)) ? -EFAULT : 0;
}

/* tour:G.220 One virtio request, from a process's system call
 * Follow a process's disk_read(sector, buf, 1) (the shell's `cat`): int
 * $0x80 brings it to do_syscall, and sys_disk_rw sends it through
 * bounce() below, then blk_rw (virtio_blk.c).  A device is given
 * guest-physical addresses, and a user buffer need not be physically
 * contiguous, nor even stay mapped while we wait for the device.  So device
 * I/O goes through a page of the kernel's own, a bounce buffer: the user's
 * buffer is checked first, then towards the device its @len bytes are
 * copied into the page and @op's result is returned; from the device, @op
 * returns how many bytes it produced (or -errno) and those are copied back
 * out, through the kernel's mapping of the process's pages.  Linux drivers
 * map user pages or bounce the same way; a Guest's "physical" address is
 * what the Launcher indexes its mapping of our RAM with.
 */
enum bounce_direction { TO_DEVICE, FROM_DEVICE };

typedef int (*device_op)(void *page, u32 len, u32 arg);

static int bounce(enum bounce_direction dir, u32 buf, u32 len, device_op op, u32 arg)
{
	struct mm *mm = current->mm;
	u32 page;
	int n;

	if (!(dir == TO_DEVICE ? user_access_ok(mm, buf, len) : user_write_ok(mm, buf, len)))
		return -EFAULT;
	page = alloc_pages(1);
	if (!page)
		return -ENOMEM;
	if (dir == TO_DEVICE && copy_from_user(mm, __va(page), buf, len))
		n = -EFAULT;
	else
		n = op(__va(page), len, arg);
	if (dir == FROM_DEVICE && n > 0 && copy_to_user(mm, buf, __va(page), n))
		n = -EFAULT;
	free_pages(page, 1);
	return n;
}

/* A whole read comes back, or nothing: blk_rw says 0 or -errno. */
static int disk_read_op(void *page, u32 len, u32 sector)
{
	int err = blk_rw(0, sector, page, len / SECTOR_SIZE);

	return err ? err : (int)len;
}

static int disk_write_op(void *page, u32 len, u32 sector)
{
	return blk_rw(1, sector, page, len / SECTOR_SIZE);
}

static int sys_disk_rw(int write, u32 sector, u32 buf, u32 count)
{
	int n;

	if (!blk_present())
		return -ENODEV;
	if (!count || count > DISK_MAX_SECTORS)
		return -EINVAL;
	n = bounce(write ? TO_DEVICE : FROM_DEVICE, buf, count * SECTOR_SIZE,
		   write ? disk_write_op : disk_read_op, sector);
	return n < 0 ? n : 0;
}

static int rng_op(void *page, u32 len, u32 unused)
{
	(void)unused;
	return rng_read(page, len);
}

static int sys_getrandom(u32 buf, u32 len)
{
	if (!rng_present())
		return -ENODEV;
	if (len > PAGE_SIZE)
		len = PAGE_SIZE;
	return bounce(FROM_DEVICE, buf, len, rng_op, 0);
}

static int net_send_op(void *page, u32 len, u32 unused)
{
	(void)unused;
	return net_send(page, len);
}

static int sys_net_send(u32 buf, u32 len)
{
	if (!net_present())
		return -ENODEV;
	if (len > PAGE_SIZE)
		return -EINVAL;
	return bounce(TO_DEVICE, buf, len, net_send_op, 0);
}

static int net_recv_op(void *page, u32 len, u32 timeout_ms)
{
	return net_recv(page, len, timeout_ms);
}

static int sys_net_recv(u32 buf, u32 len, u32 timeout_ms)
{
	if (!net_present())
		return -ENODEV;
	if (len > PAGE_SIZE)
		len = PAGE_SIZE;
	return bounce(FROM_DEVICE, buf, len, net_recv_op, timeout_ms);
}

static int sys_net_mac(u32 buf)
{
	u8 mac[6];

	if (!net_present())
		return -ENODEV;
	net_mac(mac);
	return copy_to_user(current->mm, buf, mac, 6) ? -EFAULT : 0;
}

static int sys_exit(int status)
{
	printk("puppy: pid %d (%s) exited with status %d\n",
	       current->pid, current->name, status);
	do_exit(status);
}

void do_syscall(struct pt_regs *regs)
{
	u32 a = regs->ebx, b = regs->ecx, c = regs->edx;
	int ret;

	/* The Host entered us through an interrupt gate: interrupts are off
	 * (with `trapgate` they are on already).  A system call may take a
	 * while, and may sleep: let the timer in. */
	irq_enable();

	switch (regs->eax) {
	case SYS_exit:
		ret = sys_exit(a);
		break;
	case SYS_write:
		ret = sys_write(a, b, c);
		break;
	case SYS_getpid:
		ret = current->pid;
		break;
	case SYS_sleep:
		sched_sleep(a);
		ret = 0;
		break;
	case SYS_yield:
		sched_yield();
		ret = 0;
		break;
	case SYS_brk:
		ret = mm_brk(current->mm, a);
		break;
	case SYS_uptime:
		ret = jiffies * (1000 / HZ);
		break;
	case SYS_read:
		ret = sys_read(a, b, c);
		break;
	case SYS_poweroff:
		power_off();
	case SYS_ps:
		ret = sys_ps(a, b);
		break;
	case SYS_disk_info:
		ret = sys_disk_info(a);
		break;
	case SYS_disk_read:
		ret = sys_disk_rw(0, a, b, c);
		break;
	case SYS_disk_write:
		ret = sys_disk_rw(1, a, b, c);
		break;
	case SYS_disk_flush:
		ret = blk_flush();
		break;
	case SYS_getrandom:
		ret = sys_getrandom(a, b);
		break;
	case SYS_net_send:
		ret = sys_net_send(a, b);
		break;
	case SYS_net_recv:
		ret = sys_net_recv(a, b, c);
		break;
	case SYS_net_mac:
		ret = sys_net_mac(a);
		break;
	default:
		ret = -ENOSYS;
		break;
	}
	regs->eax = ret;
}
