/*
 * bench.h - puppy's CPU-bound benchmark, shared by the kernel and a native
 * program so that "Guest compute vs native" compares the very same code.
 */
#ifndef PUPPY_BENCH_H
#define PUPPY_BENCH_H

/* Runs the whole benchmark; the result is the same wherever it runs. */
unsigned int puppy_bench(void);

#endif /* PUPPY_BENCH_H */
