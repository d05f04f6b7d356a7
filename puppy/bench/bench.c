/*
 * bench.c - a CPU-bound workload for measuring the cost of virtualization.
 *
 * Pure integer work with no system calls, no page faults after the first
 * touch, and no I/O: under lguest it should run at (nearly) the speed of the
 * CPU, so comparing it with the same code run natively shows what the CPU
 * emulation and the shadow page tables cost.  Freestanding C: it builds both
 * into the kernel (no libc, no FPU) and into a hosted native program.
 *
 * Each round: fill an array from a linear congruential generator, CRC32 it
 * (table-driven), quicksort it in place, CRC32 it again and sample it.
 */
#include "bench.h"

typedef unsigned int u32;

#define N_ELEMS		(256 * 1024)	/* 1 MiB of u32, in .bss */
#define ROUNDS		8

static u32 array[N_ELEMS];
static u32 crc_table[256];

static void crc32_init(void)
{
	u32 i, j, c;

	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* The usual reflected CRC-32 (as zlib's crc32()), over the array's bytes. */
static u32 crc32(const unsigned char *p, u32 len)
{
	u32 c = 0xFFFFFFFFu;

	while (len--)
		c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

static u32 lcg_fill(u32 *a, u32 n, u32 x)
{
	u32 i;

	for (i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		/* The low bits of an LCG are weak: mix the high ones down. */
		a[i] = x ^ (x >> 16);
	}
	return x;
}

static void swap(u32 *a, u32 *b)
{
	u32 t = *a;

	*a = *b;
	*b = t;
}

/*
 * Quicksort a[lo..hi] (inclusive), median-of-three pivot, insertion sort
 * for short runs.  Recurse on the smaller half and loop on the larger, so
 * the stack stays under ~20 frames: the kernel only has 16 KiB of it.
 */
static void quicksort(u32 *a, int lo, int hi)
{
	while (hi - lo > 16) {
		int mid = lo + (hi - lo) / 2;
		int i = lo, j = hi;
		u32 pivot;

		if (a[mid] < a[lo])
			swap(&a[mid], &a[lo]);
		if (a[hi] < a[lo])
			swap(&a[hi], &a[lo]);
		if (a[hi] < a[mid])
			swap(&a[hi], &a[mid]);
		pivot = a[mid];

		while (i <= j) {
			while (a[i] < pivot)
				i++;
			while (a[j] > pivot)
				j--;
			if (i <= j) {
				swap(&a[i], &a[j]);
				i++;
				j--;
			}
		}
		if (j - lo < hi - i) {
			quicksort(a, lo, j);
			lo = i;
		} else {
			quicksort(a, i, hi);
			hi = j;
		}
	}
	/* Insertion sort for what is left. */
	for (int k = lo + 1; k <= hi; k++) {
		u32 v = a[k];
		int m = k - 1;

		while (m >= lo && a[m] > v) {
			a[m + 1] = a[m];
			m--;
		}
		a[m + 1] = v;
	}
}

static u32 rotl(u32 v, unsigned int s)
{
	return (v << s) | (v >> (32 - s));
}

unsigned int puppy_bench(void)
{
	u32 sum = 0, seed = 0x5EED, r, k;

	crc32_init();
	for (r = 0; r < ROUNDS; r++) {
		seed = lcg_fill(array, N_ELEMS, seed + r);
		sum = rotl(sum, 5) ^ crc32((const unsigned char *)array, sizeof(array));
		quicksort(array, 0, N_ELEMS - 1);
		sum = rotl(sum, 7) ^ crc32((const unsigned char *)array, sizeof(array));
		/* Samples across the sorted array; a bad sort would show. */
		for (k = 0; k < N_ELEMS; k += N_ELEMS / 16)
			sum = sum * 31 + array[k];
		for (k = 1; k < N_ELEMS; k++)
			if (array[k - 1] > array[k])
				sum ^= 0xBADu;	/* not sorted: poison */
	}
	return sum;
}
