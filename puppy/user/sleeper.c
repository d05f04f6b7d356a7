/*
 * sleeper.c - a process that mostly sleeps: the idle task HALTs meanwhile.
 *
 * While every process sleeps, the kernel has nothing to run and makes the
 * HALT hypercall; the Host wakes it for the next timer tick (a one-shot
 * SET_CLOCKEVENT, re-armed every 10 ms), which wakes the sleeper.
 */
#include "ulib.h"

int main(void)
{
	int pid = getpid(), i;

	for (i = 1; i <= 3; i++) {
		u32 before = uptime_ms(), slept;

		sleep_ms(50);
		slept = uptime_ms() - before;
		printf("sleeper: pid %d nap %d of 3: %s\n", pid, i,
		       slept >= 50 ? "slept at least 50 ms" : "woke too early");
	}
	return 0;
}
