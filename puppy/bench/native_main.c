/*
 * native_main.c - run puppy's benchmark as an ordinary Linux process.
 *
 * The same bench.c, built with gcc -m32 -O2, gives the "native" time that
 * the Guest's run under lguest is compared with.  CPU time of this process
 * only, so a busy machine does not count against it.
 */
#include <stdio.h>
#include <time.h>
#include "bench.h"

int main(void)
{
	struct timespec t0, t1;
	unsigned int sum;
	double secs;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
	sum = puppy_bench();
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);

	secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("checksum 0x%08x seconds %.6f\n", sum, secs);
	return 0;
}
