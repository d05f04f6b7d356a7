/*
 * sched.h - tasks: what the scheduler knows about each process.
 */
#ifndef PUPPY_SCHED_H
#define PUPPY_SCHED_H

#include "mm.h"
#include "irq.h"

#define MAX_TASKS		32	/* task 0 is the idle task */
#define KSTACK_PAGES		2	/* SET_STACK pins exactly this many */
#define KSTACK_SIZE		(KSTACK_PAGES * PAGE_SIZE)
#define TIMESLICE_TICKS		2	/* 20 ms at HZ = 100 */
#define TASK_NAME_LEN		16

enum task_state {
	TASK_FREE,		/* an unused slot */
	TASK_RUNNABLE,
	TASK_SLEEPING,		/* until jiffies reaches wake_at, or a wake_up on wait_chan */
	TASK_DEAD,		/* gone; its stack and directory are freed by the next task */
};

struct task {
	u32 ksp;		/* saved kernel esp: must stay first (switch.S) */
	u32 sp0;		/* where traps from ring 3 land (SET_STACK) */
	int pid;
	enum task_state state;
	u32 wake_at;
	int timed;		/* a sleep with a deadline (wake_at) */
	const void *wait_chan;	/* what a sleep waits for, if anything (wake_up) */
	int slice;		/* ticks left before it must give way */
	u32 kstack;		/* physical address of its stack pages; 0 for idle */
	struct mm *mm;
	struct mm user_mm;	/* a process's own address space */
	char name[TASK_NAME_LEN];
};

extern struct task *current;
extern volatile int need_resched;

void sched_init(void);
int spawn(const char *program, const char *arg);
void run_processes(void);
void schedule(void);
void scheduler_tick(void);
void sched_yield(void);
void sched_sleep(u32 ms);
void do_exit(int status) __attribute__((noreturn));
void kill_current(const char *reason) __attribute__((noreturn));

/*
 * Waiting for a device.  With interrupts off: check the condition, then
 * sleep_on(chan, ticks); an interrupt handler's wake_up(chan) (or the
 * deadline, if ticks is not 0) makes the task runnable again, and the
 * caller checks again.  The idle task cannot sleep: it HALTs instead.
 */
void sleep_on(const void *chan, u32 ticks);
void wake_up(const void *chan);

/* ps: a snapshot of the task table (struct ps_entry: user/syscalls.h). */
struct ps_entry;
int task_list(struct ps_entry *out, int max);

/* exec.c: the ELF loader */
int exec_load(struct mm *mm, const char *program, const char *arg,
	      const char *name, u32 *entry, u32 *user_esp);

/* syscall.c */
void do_syscall(struct pt_regs *regs);

#endif /* PUPPY_SCHED_H */
