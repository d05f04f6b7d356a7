/*
 * main.c - puppy's C entry: the order in which an lguest Guest comes alive.
 *
 * By the time head.S jumps here, the Host knows where lguest_data is and we
 * run on our own page table at our linked (virtual) addresses.  We show the
 * ways a Guest talks to its Host: port I/O that the Launcher emulates (the
 * early console), hypercalls batched on the async ring, plain synchronous
 * hypercalls, and -- once the IDT is loaded -- traps and interrupts coming
 * the other way.  Words on the command line run small demonstrations, up
 * to user processes at ring 3 in address spaces of their own, and a shell
 * driving the virtio devices (console, disk, entropy, network).
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"
#include "virtio.h"
#include "bench/bench.h"

/* The boot page table maps at most this much, so it is all we may touch. */
#define MAX_LOWMEM	0x4000000u

static const char *cmdline = "";

/*
 * Find the whole, space-separated word on the command line that is @word,
 * or (if @word ends in '=') that starts with it.  Returns what follows
 * @word in it, or NULL if there is no such word.
 */
static const char *cmdline_find(const char *word)
{
	unsigned int len = strlen(word);
	int prefix = len && word[len - 1] == '=';
	const char *p = cmdline;

	while (*p) {
		const char *start;

		while (*p == ' ')
			p++;
		start = p;
		while (*p && *p != ' ')
			p++;
		if ((unsigned int)(p - start) < len || memcmp(start, word, len))
			continue;
		if (prefix || (unsigned int)(p - start) == len)
			return start + len;
	}
	return NULL;
}

static int cmdline_has(const char *word)
{
	return cmdline_find(word) != NULL;
}

/* The decimal number after "@word=" (up to 9 digits), or -1 if none. */
static int cmdline_number(const char *word)
{
	const char *p = cmdline_find(word);
	int v = 0, digits = 0;

	if (!p)
		return -1;
	for (; *p >= '0' && *p <= '9'; p++, digits++)
		v = v * 10 + (*p - '0');
	if (!digits || digits > 9 || (*p && *p != ' '))
		return -1;
	return v;
}

/* tour:G.270 The end: SHUTDOWN
 * A Guest cannot switch itself off; it asks.  SHUTDOWN takes the
 * guest-physical address of a reason string and what to do: power off
 * (1) or restart (2).  The Host reads the reason, stops the Guest for
 * good, and the Launcher prints "lguest: CRASH: <reason>" (it says CRASH
 * even for a clean power-off, as the original did) and exits, or, for a
 * restart, boots a fresh Guest.  An oops ends the same way, with the oops
 * line as the reason.  Linux 4.9's power-off and restart hooks and its
 * panic notifier make this same call.  That is the Guest's whole story;
 * the Launcher that built its machine comes next.
 */
void shutdown(const char *why, u32 how)
{
	/* The Launcher stops serving the console when we go: drain it first. */
	if (virtio_console_ready())
		virtio_console_flush();
	/* The Host wants a guest-physical address for the reason string. */
	hcall(LHCALL_SHUTDOWN, __pa(why), how, 0, 0);
	/* Not reached: the Host does not run us again after SHUTDOWN. */
	for (;;)
		;
}

/* The end of every normal run (and of the shell's poweroff). */
void power_off(void)
{
	printk("puppy: %u timer ticks\n", jiffies);
	printk("puppy: power off\n");
	shutdown("Power down", LGUEST_SHUTDOWN_POWEROFF);
}

/* What the Host's processor looks like to us, once filtered. */
static void show_cpu(void)
{
	u32 vendor[4], eax, ebx, ecx, edx;

	/* The vendor string is spelled out in ebx, edx, ecx, in that order. */
	puppy_cpuid(0, &eax, &vendor[0], &vendor[2], &vendor[1]);
	vendor[3] = 0;
	puppy_cpuid(1, &eax, &ebx, &ecx, &edx);
	printk("puppy: cpu: %s family %u, features edx %08x ecx %08x\n",
	       (const char *)vendor, (eax >> 8) & 0xF, edx, ecx);
}

/*
 * sleep=<ms>: idle that long, then compare the ticks we counted with how
 * far the Host's clock moved.  The difference of two nearby clock readings
 * fits a 32-bit word for any sleep under four seconds; div_u64_rem copes
 * with longer ones without needing 64-bit division from libgcc.
 */
static void sleep_test(u32 ms)
{
	u32 start, ticks;
	u64 before, after;

	/*
	 * The clock only moves when an interrupt is delivered, so start on a
	 * tick: then both readings are stamps of a tick's delivery, and we
	 * measure the sleep rather than how long ago the last stamp was.
	 */
	start = jiffies;
	while (jiffies == start)
		idle();
	start = jiffies;
	before = clock_ns();
	sleep_ms(ms);
	ticks = jiffies - start;
	after = clock_ns();
	printk("puppy: slept %u ms: %u ticks, clock advanced %u ms\n",
	       ms, ticks, (u32)div_u64_rem(after - before, 1000000, NULL));
}

/*
 * fpu: lazy FPU switching.  With TS set the first FPU instruction traps
 * (#NM); our handler clears TS and the instruction is retried.  This is
 * the kernel's only FPU instruction, and it exists to be trapped.
 */
static void fpu_test(void)
{
	u32 before = nm_traps;

	write_cr0(read_cr0() | 0x8);
	asm volatile("fninit" ::: "memory");
	if (nm_traps - before == 1)
		printk("puppy: lazy FPU switch ok\n");
	else
		printk("puppy: lazy FPU switch FAILED\n");
}

/* procs: three well-behaved programs, side by side. */
static void procs_demo(void)
{
	spawn("hello", NULL);
	spawn("counter", NULL);
	spawn("sleeper", NULL);
	run_processes();
}

/*
 * procs=<n>: n copies of one program at the same virtual addresses, each
 * with its own data.  More than four address spaces make the Host evict
 * shadows from its 4-slot cache; a mix-up would show in the checksums.
 */
static void workers_demo(int n)
{
	int i;

	if (n > MAX_TASKS - 1) {
		printk("puppy: procs=%d: at most %d processes\n", n, MAX_TASKS - 1);
		n = MAX_TASKS - 1;
	}
	for (i = 0; i < n; i++)
		spawn("worker", NULL);
	run_processes();
}

/*
 * hostile: one long-running, well-behaved program and many that try to
 * break out of their address space or their ring.  Each of those must be
 * killed (or refused) while the good one carries on undisturbed.
 */
static void hostile_demo(void)
{
	static const char *const attacks[] = {
		"read-kernel", "write-kernel", "read-switcher", "peek-secret",
		"write-text", "jump-unmapped", "run-stack", "cli", "hlt", "inb", "int1f",
		"kernel-ds", "ud2", "div0", "big-brk", "bad-write",
	};
	unsigned int i;

	spawn("steady", NULL);
	for (i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++)
		spawn("evil", attacks[i]);
	run_processes();
}

void puppy_main(u32 boot_params_pa)
{
	const u8 *bp = __va(boot_params_pa);
	u64 ram = *(const u64 *)(bp + BP_E820_MAP + 8);
	u32 cmd_pa = *(const u32 *)(bp + BP_CMD_LINE_PTR);
	int ms, n;

	early_console_init();

	if (cmd_pa && cmd_pa < MAX_LOWMEM && cmd_pa < ram)
		cmdline = __va(cmd_pa);

	printk("puppy 0.1: a paravirtualized guest for lguest (Linux 4.x ABI)\n");
	printk("puppy: command line: \"%s\"\n", cmdline);
	printk("puppy: %u MiB of RAM, lguest_data at 0x%x\n",
	       (u32)(ram >> 20), __pa(&lguest_data));

	/*
	 * Three calls that can wait: queued, not made.  The synchronous
	 * FLUSH_ASYNC then makes the Host run all three (in order) first.
	 */
	async_hcall(LHCALL_TS, 1, 0, 0, 0);
	async_hcall(LHCALL_TS, 0, 0, 0, 0);
	async_hcall(LHCALL_FLUSH_TLB, 0, 0, 0, 0);
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	printk("puppy: async hypercalls flushed\n");

	show_cpu();

	/*
	 * Memory (the page allocator, the boot directory made kernel-only),
	 * the user segments, and the idle task: what processes will need.
	 */
	mm_init(ram);
	user_segments_init();
	sched_init();

	/*
	 * Gates first (until then any exception the Host must reflect kills
	 * us), then the timer and its handler, and interrupts on last.
	 */
	syscall_trap_gate = cmdline_has("trapgate");
	idt_init();
	time_init();
	irq_enable();
	printk("puppy: timer ticking at %u Hz\n", HZ);

	/*
	 * The virtio drivers, only when asked for: a plain boot keeps
	 * printing through emerg_wr and leaves the devices alone.
	 */
	if (cmdline_has("shell") || cmdline_has("devices"))
		virtio_probe_all();

	ms = cmdline_number("sleep=");
	if (ms >= 0)
		sleep_test(ms);

	if (cmdline_has("fpu"))
		fpu_test();

	if (cmdline_has("bench"))
		printk("puppy: bench checksum 0x%08x\n", puppy_bench());

	if (cmdline_has("procs"))
		procs_demo();

	n = cmdline_number("procs=");
	if (n >= 0)
		workers_demo(n);

	if (cmdline_has("hostile"))
		hostile_demo();

	/* The shell, a process reading the console: until it exits or powers off. */
	if (cmdline_has("shell")) {
		spawn("sh", NULL);
		run_processes();
	}

	if (cmdline_has("oops"))
		asm volatile("ud2");

	if (cmdline_has("pf"))
		(void)*(volatile u32 *)0xA0000000;

	if (cmdline_has("restart")) {
		printk("puppy: restart\n");
		shutdown("Restarting", LGUEST_SHUTDOWN_RESTART);
	}

	power_off();
}
