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
#include "user/syscalls.h"

#define WRITE_CHUNK	128

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
	default:
		ret = -ENOSYS;
		break;
	}
	regs->eax = ret;
}
