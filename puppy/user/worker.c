/*
 * worker.c - many address spaces at the same virtual addresses.
 *
 * Every worker keeps its data at exactly the same addresses as every other
 * (same program, same heap), each filled from its own pid.  If the Host's
 * shadow page tables ever confused two address spaces -- say after evicting
 * one of its four cached shadows -- a worker would find another's data, and
 * its final checksum would not be the one it expects.
 */
#include "ulib.h"

#define HEAP_WORDS	(4 * 4096 / 4)		/* 16 KiB of heap */
#define ROUNDS		4

static u32 data[256];				/* bss: private too */

static u32 fill(u32 *p, u32 n, u32 seed)
{
	u32 i;

	for (i = 0; i < n; i++)
		p[i] = seed = next_random(seed);
	return seed;
}

/* Does the memory still hold what fill(seed) put there? */
static int check(const u32 *p, u32 n, u32 seed)
{
	u32 i;

	for (i = 0; i < n; i++)
		if (p[i] != (seed = next_random(seed)))
			return 0;
	return 1;
}

static u32 checksum(const u32 *p, u32 n, u32 sum)
{
	u32 i;

	for (i = 0; i < n; i++)
		sum = (sum << 5 | sum >> 27) ^ p[i];
	return sum;
}

int main(void)
{
	int pid = getpid(), round, bad = 0;
	u32 start = brk(0), seed, sum, expected, i;
	volatile u32 work = 0;		/* volatile: the loop must not be optimised away */
	u32 *heap = (u32 *)start;

	if (brk(start + HEAP_WORDS * 4) < 0) {
		printf("worker: pid %d: no heap\n", pid);
		return 1;
	}
	for (round = 0; round < ROUNDS; round++) {
		seed = (u32)pid * 0x9E3779B9u + round;
		fill(data, 256, fill(heap, HEAP_WORDS, seed));
		/* Some work, long enough for the timer to preempt us now and then. */
		for (i = 0; i < 2000000; i++)
			work = next_random(work ^ i);
		yield();
		bad |= !check(heap, HEAP_WORDS, seed);
		sleep_ms(10 * (pid % 3 + 1));
		bad |= !check(heap, HEAP_WORDS, seed);
		bad |= !check(data, 256, heap[HEAP_WORDS - 1]);
	}
	sum = checksum(data, 256, checksum(heap, HEAP_WORDS, 0));
	/* The same sum, from the generator alone rather than from memory. */
	expected = 0;
	for (i = 0, seed = (u32)pid * 0x9E3779B9u + ROUNDS - 1; i < HEAP_WORDS + 256; i++) {
		seed = next_random(seed);
		expected = (expected << 5 | expected >> 27) ^ seed;
	}
	bad |= sum != expected;
	printf("worker: pid %d checksum %08x (expected %08x) %s\n", pid, sum, expected,
	       bad ? "CORRUPTED" : "ok");
	return bad;
}
