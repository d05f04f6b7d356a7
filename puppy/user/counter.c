/*
 * counter.c - a process that gives the CPU away: yields and short sleeps.
 *
 * Each yield or sleep is a context switch in the kernel, and each context
 * switch is a NEW_PGTABLE and a SET_STACK queued on lguest's async ring and
 * flushed in one trip to the Host.
 */
#include "ulib.h"

int main(void)
{
	int pid = getpid(), i;

	for (i = 1; i <= 5; i++) {
		printf("counter: pid %d counts %d\n", pid, i);
		if (i % 2)
			yield();
		else
			sleep_ms(20);
	}
	return i - 1;		/* the exit status: how far we counted */
}
