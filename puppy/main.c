/*
 * main.c - puppy's C entry: a Guest that says hello and asks to be stopped.
 *
 * By the time head.S jumps here, the Host knows where lguest_data is and we
 * run on our own page table at our linked (virtual) addresses.  We show the
 * three ways a Guest talks to its Host: port I/O that the Launcher emulates
 * (the early console), hypercalls batched on the async ring, and plain
 * synchronous hypercalls (FLUSH_ASYNC, SHUTDOWN).
 */
#include "puppy.h"
#include "bench/bench.h"

/* The boot page table maps at most this much, so it is all we may touch. */
#define MAX_LOWMEM	0x4000000u

static const char *cmdline = "";

/* Does the command line contain @word as a whole, space-separated word? */
static int cmdline_has(const char *word)
{
	unsigned int len = strlen(word);
	const char *p = cmdline;

	while (*p) {
		const char *start;

		while (*p == ' ')
			p++;
		start = p;
		while (*p && *p != ' ')
			p++;
		if ((unsigned int)(p - start) == len && !memcmp(start, word, len))
			return 1;
	}
	return 0;
}

static void __attribute__((noreturn)) shutdown(const char *why, u32 how)
{
	/* The Host wants a guest-physical address for the reason string. */
	hcall(LHCALL_SHUTDOWN, __pa(why), how, 0, 0);
	/* Not reached: the Host does not run us again after SHUTDOWN. */
	for (;;)
		;
}

void puppy_main(u32 boot_params_pa)
{
	const u8 *bp = __va(boot_params_pa);
	u64 ram = *(const u64 *)(bp + BP_E820_MAP + 8);
	u32 cmd_pa = *(const u32 *)(bp + BP_CMD_LINE_PTR);

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

	if (cmdline_has("bench"))
		printk("puppy: bench checksum 0x%08x\n", puppy_bench());

	if (cmdline_has("restart")) {
		printk("puppy: restart\n");
		shutdown("Restarting", LGUEST_SHUTDOWN_RESTART);
	}

	printk("puppy: power off\n");
	shutdown("Power down", LGUEST_SHUTDOWN_POWEROFF);
}
