/*
 * sched.c - processes and the scheduler: the context switch, lguest style.
 *
 * Round robin, preemptive: the 100 Hz tick takes TIMESLICE_TICKS off the
 * running task's budget and asks for a reschedule when it runs out; the
 * switch happens on the way back to ring 3 (the kernel itself is never
 * preempted).  Tasks also give way by yielding, sleeping or exiting.  When
 * nobody can run, the idle task (the boot context, task 0) HALTs.
 */
#include "puppy.h"
#include "sched.h"
#include "user/syscalls.h"

static struct task tasks[MAX_TASKS];
#define idle_task	(&tasks[0])

struct task *current = &tasks[0];
volatile int need_resched;
static int next_pid = 1;
static int nr_alive;		/* processes started and not yet dead */

extern char boot_stack_top[];
extern char ret_from_fork[];
struct task *switch_stacks(struct task *prev, struct task *next);

/*
 * The stack pointer SET_STACK gets: a little below the top, like Linux's
 * sp0.  The Host translates this address itself to push a trap frame; the
 * exact top would be the first byte of the *next* page.
 */
#define SP0_PADDING	16

void sched_init(void)
{
	idle_task->pid = 0;
	idle_task->state = TASK_RUNNABLE;
	idle_task->mm = &init_mm;
	idle_task->sp0 = (u32)boot_stack_top - SP0_PADDING;
	memcpy(idle_task->name, "idle", 5);
}

/* The next runnable process after the current one; idle if there is none. */
static struct task *pick_next(void)
{
	unsigned int i, start = current - tasks;

	for (i = 1; i <= MAX_TASKS; i++) {
		struct task *t = &tasks[(start + i) % MAX_TASKS];

		if (t != idle_task && t->state == TASK_RUNNABLE)
			return t;
	}
	return idle_task;
}

/* tour:G.160 User processes: address spaces and the context switch
 * A process is a page directory of its own and a two-page kernel stack.
 * The directory's user half is private; its kernel half is a copy of the
 * boot directory's entries, i.e. the very same page tables (mm.c).  The
 * Host counts on that: everything above lguest_data.kernel_address is
 * assumed to be mapped the same in every directory, so the Host keeps
 * those shadow entries across switches and applies a kernel SET_PTE to
 * every shadow it has (§6.1, §6.6).  It keeps at most four shadows, so
 * with more processes than that it evicts and refills them (`procs=5`).
 *
 * Switching tasks is where a paravirtualized kernel differs from a native
 * one.  The new address space is NEW_PGTABLE (write_cr3), and the stack a
 * trap from ring 3 lands on (the TSS's esp1, which only the Host may
 * write) is SET_STACK (load_sp0); the Host also checks that stack's pages
 * are mapped and writable, so it can always push a frame there (§6.8).
 * Like Linux 4.9 (arch_start_context_switch / arch_end_context_switch),
 * both are made in lazy CPU mode, so they only go on the async ring, and
 * the FLUSH_ASYNC in finish_task_switch, already on the new task's stack,
 * delivers them in one Host trip.  Both are safe to queue before the
 * stacks are swapped: every kernel stack is in the kernel half, present
 * in every address space.
 */
static struct task *context_switch(struct task *prev, struct task *next)
{
	lazy_cpu_enter();
	if (next->mm != prev->mm)
		write_cr3(next->mm->pgd);
	load_sp0(next->sp0);
	current = next;
	return switch_stacks(prev, next);
}

/*
 * First thing on the new stack.  A dead task could not free the stack it
 * was running on, nor the directory the Host was using; now it can be.
 */
static void finish_task_switch(struct task *prev)
{
	lazy_cpu_leave();
	if (prev->state == TASK_DEAD) {
		mm_free(prev->mm);
		free_pages(prev->kstack, KSTACK_PAGES);
		prev->state = TASK_FREE;
	}
}

/* ret_from_fork (entry.S): a new task's first switch ends here. */
void schedule_tail(struct task *prev)
{
	finish_task_switch(prev);
}

void schedule(void)
{
	u32 flags = local_irq_save();
	struct task *prev = current, *next;

	need_resched = 0;
	next = pick_next();
	next->slice = TIMESLICE_TICKS;
	if (next != prev) {
		/* We come back here, later, when someone switches to us. */
		prev = context_switch(prev, next);
		finish_task_switch(prev);
	}
	local_irq_restore(flags);
}

/*
 * The timer's part (irq 0, interrupts off): wake the sleepers whose time
 * has come and charge the running task for the tick.
 */
void scheduler_tick(void)
{
	struct task *t;

	for (t = &tasks[1]; t < &tasks[MAX_TASKS]; t++) {
		if (t->state == TASK_SLEEPING && t->timed && (int)(jiffies - t->wake_at) >= 0) {
			t->state = TASK_RUNNABLE;
			if (current == idle_task)
				need_resched = 1;
		}
	}
	if (current != idle_task && --current->slice <= 0)
		need_resched = 1;
}

/*
 * ret_from_trap (entry.S) calls this on every return to ring 3.  Turning
 * interrupts on first matters: an interrupt that came while a handler had
 * them off is only noted by the Host (irq_pending), and lguest_iret would
 * re-enable them without asking for it.  irq_enable() does ask.
 */
void exit_to_user(void)
{
	irq_enable();
	while (need_resched)
		schedule();
}

void sched_yield(void)
{
	schedule();
}

void sched_sleep(u32 ms)
{
	/* Whole ticks, rounded up; capped so that wake_at stays comparable. */
	u32 ticks = ms / (1000 / HZ) + (ms % (1000 / HZ) != 0);
	u32 flags;

	if (ticks > 0x3FFFFFFF)
		ticks = 0x3FFFFFFF;
	flags = local_irq_save();

	/* Interrupts off: the tick must not wake us before we are asleep. */
	current->wake_at = jiffies + ticks;
	current->timed = 1;
	current->state = ticks ? TASK_SLEEPING : TASK_RUNNABLE;
	schedule();
	local_irq_restore(flags);
}

/*
 * Wait for @chan (interrupts off, the caller's condition just found false).
 * A process gives the CPU away until wake_up(@chan) or, if @ticks is not 0,
 * that many ticks.  The idle task (the kernel at boot and shutdown) has
 * nobody to give the CPU to: it HALTs, which returns once the Host has
 * delivered an interrupt -- with interrupts on, so turn them off again
 * before the caller looks.  An interrupt that came after the caller looked
 * is not lost either way: the Host holds it pending until we can take it.
 */
void sleep_on(const void *chan, u32 ticks)
{
	if (current == idle_task) {
		hcall(LHCALL_HALT, 0, 0, 0, 0);
		irq_disable();
		return;
	}
	current->wait_chan = chan;
	current->timed = ticks != 0;
	current->wake_at = jiffies + ticks;
	current->state = TASK_SLEEPING;
	schedule();
	current->wait_chan = NULL;
}

/*
 * An interrupt handler's half: make every task waiting for @chan runnable,
 * and ask for a switch on the way back to user mode so that it runs soon.
 */
void wake_up(const void *chan)
{
	struct task *t;

	for (t = &tasks[1]; t < &tasks[MAX_TASKS]; t++) {
		if (t->state == TASK_SLEEPING && t->wait_chan == chan) {
			t->state = TASK_RUNNABLE;
			need_resched = 1;
		}
	}
}

/* ps: every live task, the idle task first. */
int task_list(struct ps_entry *out, int max)
{
	u32 flags = local_irq_save();
	int i, n = 0;

	for (i = 0; i < MAX_TASKS && n < max; i++) {
		struct task *t = &tasks[i];

		if (i && t->state != TASK_RUNNABLE && t->state != TASK_SLEEPING)
			continue;
		out[n].pid = t->pid;
		if (t == current)
			out[n].state = PS_RUNNING;
		else if (t->state == TASK_RUNNABLE)
			out[n].state = PS_RUNNABLE;
		else
			out[n].state = t->wait_chan ? PS_WAITING : PS_SLEEPING;
		memcpy(out[n].name, t->name, sizeof(out[n].name));
		n++;
	}
	local_irq_restore(flags);
	return n;
}

/*
 * The end of a process.  Its user memory goes now; the kernel stack we are
 * standing on, and the directory we are running in, go once we have
 * switched away (finish_task_switch).
 */
void do_exit(int status)
{
	(void)status;
	mm_release_user(current->mm);
	irq_disable();
	current->state = TASK_DEAD;
	nr_alive--;
	schedule();
	for (;;)		/* not reached: nobody switches to a dead task */
		;
}

void kill_current(const char *reason)
{
	printk("puppy: pid %d (%s) killed: %s\n", current->pid, current->name, reason);
	do_exit(-1);
}

static struct task *alloc_task(void)
{
	struct task *t;

	for (t = &tasks[1]; t < &tasks[MAX_TASKS]; t++)
		if (t->state == TASK_FREE)
			return t;
	return NULL;
}

/*
 * A new process running @program (with @arg as its argv[1], and as its name
 * if given).  Its kernel stack is made to look like one that was switched
 * out on its way back to ring 3: a pt_regs at the top with the user entry
 * state, below it ret_from_fork as switch_stacks' return address and four
 * zeros for the registers switch_stacks pops.  The first switch to it
 * therefore "returns" into ret_from_fork, which irets to the program.
 */
int spawn(const char *program, const char *arg)
{
	const char *name = arg ? arg : program;
	struct task *t = alloc_task();
	struct pt_regs *regs;
	u32 entry, user_esp, *sp;
	unsigned int len;
	int err;

	if (!t) {
		printk("puppy: cannot start %s: too many processes\n", name);
		return -1;
	}
	memset(t, 0, sizeof(*t));
	t->mm = &t->user_mm;
	t->kstack = alloc_pages(KSTACK_PAGES);
	if (!t->kstack || mm_create(t->mm)) {
		err = -12;
		goto fail;
	}
	err = exec_load(t->mm, program, arg, name, &entry, &user_esp);
	if (err)
		goto fail;

	t->sp0 = (u32)__va(t->kstack) + KSTACK_SIZE - SP0_PADDING;
	regs = (struct pt_regs *)(t->sp0 - sizeof(*regs));
	memset(regs, 0, sizeof(*regs));
	regs->ds = regs->es = USER_DS;
	regs->eip = entry;
	regs->cs = USER_CS;
	regs->eflags = X86_EFLAGS_IF | 0x2;	/* bit 1 is always set */
	regs->esp = user_esp;
	regs->ss = USER_DS;
	sp = (u32 *)regs;
	*--sp = (u32)ret_from_fork;
	sp -= 4;				/* ebp, ebx, esi, edi */
	memset(sp, 0, 16);
	t->ksp = (u32)sp;

	len = strlen(name);
	if (len >= TASK_NAME_LEN)
		len = TASK_NAME_LEN - 1;
	memcpy(t->name, name, len);
	t->pid = next_pid++;
	t->state = TASK_RUNNABLE;
	nr_alive++;
	printk("puppy: started pid %d (%s)\n", t->pid, t->name);
	return t->pid;

fail:
	if (t->mm->pgd) {
		mm_release_user(t->mm);
		mm_free(t->mm);
	}
	if (t->kstack)
		free_pages(t->kstack, KSTACK_PAGES);
	t->state = TASK_FREE;
	printk("puppy: cannot start %s: error %d\n", name, err);
	return -1;
}

/*
 * The idle task's loop while processes exist: let them run, and when none
 * can, HALT until an interrupt (a tick waking a sleeper) changes that.
 * Interrupts are off from our last look until the HALT, so a wake-up in
 * between is not lost: the Host sees it pending and HALT returns at once,
 * with interrupts back on and the handler already run.
 */
void run_processes(void)
{
	while (nr_alive) {
		schedule();
		irq_disable();
		if (nr_alive && !need_resched)
			hcall(LHCALL_HALT, 0, 0, 0, 0);
		else
			irq_enable();
	}
	printk("puppy: all processes finished\n");
}
