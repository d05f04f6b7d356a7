/*
 * evil.c - a process that attacks its kernel, its Host and its neighbours.
 *
 * argv[1] names the attack.  A Guest's user code runs at ring 3 on the
 * real CPU, so every one of these meets the real protection checks: the
 * USER bit in the shadow page tables (which the Host copies from ours), the
 * Switcher's pages (never mapped for the Guest at all), IOPL 0 and no I/O
 * bitmap for in/out/cli/hlt, the DPL of the hypercall gate, and the DPL of
 * the kernel's segments, and with PAE the NX bit of its stack.  The kernel
 * should kill the process for each of them -- except big-brk and bad-write,
 * which are asking, not attacking: the kernel should just say no (and
 * run-stack without PAE, where nothing forbids running the stack).
 */
#include "ulib.h"

static volatile u32 sink;

static void __attribute__((noinline)) attack(const char *what)
{
	if (!strcmp(what, "read-kernel")) {
		sink = *(volatile u32 *)0xC0100000;
	} else if (!strcmp(what, "write-kernel")) {
		*(volatile u32 *)0xC0100000 = 0xBAD;
	} else if (!strcmp(what, "read-switcher")) {
		sink = *(volatile u32 *)0xFFC00000;
	} else if (!strcmp(what, "peek-secret")) {
		/* steady's secret page: this address is in its heap, not ours. */
		sink = *(volatile u32 *)SECRET_ADDR;
	} else if (!strcmp(what, "write-text")) {
		/* Our own code is mapped read-only. */
		*(volatile u32 *)(u32)attack = 0xBAD;
	} else if (!strcmp(what, "jump-unmapped")) {
		((void (*)(void))0xDEAD0000)();
	} else if (!strcmp(what, "run-stack")) {
		/* A `ret` on the stack: it runs without PAE, never with (NX). */
		volatile unsigned char code[4] = { 0xC3 };

		((void (*)(void))(u32)code)();
	} else if (!strcmp(what, "cli")) {
		asm volatile("cli");
	} else if (!strcmp(what, "hlt")) {
		asm volatile("hlt");
	} else if (!strcmp(what, "inb")) {
		u32 v;

		asm volatile("inb $0x40, %%al" : "=a"(v));
		sink = v;
	} else if (!strcmp(what, "int1f")) {
		/* A hypercall from ring 3: the gate is DPL 1. */
		asm volatile("int $0x1f" : : "a"(2), "b"(0), "c"(1));
	} else if (!strcmp(what, "kernel-ds")) {
		/* The kernel's data segment (DPL 1) from ring 3. */
		asm volatile("movl %0, %%ds" : : "r"(0x69));
	} else if (!strcmp(what, "ud2")) {
		asm volatile("ud2");
	} else if (!strcmp(what, "div0")) {
		/* In assembly: gcc would turn 1 / x into a comparison. */
		asm volatile("xorl %%edx, %%edx; divl %1" : "=a"(sink) : "r"(0), "a"(1) : "edx");
	}
}

/* Ask for far too much heap, and for heap in the kernel's half. */
static int big_brk(int pid)
{
	u32 start = brk(0);
	int huge = brk(start + 0x40000000);	/* 1 GiB more than the RAM */
	int kernel = brk(0xC0001000);

	printf("evil: pid %d big-brk: +1 GiB -> %d, into the kernel -> %d, heap still ends at %x\n",
	       pid, huge, kernel, (u32)brk(0));
	return huge == -ENOMEM && kernel == -ENOMEM && (u32)brk(0) == start ? 0 : 1;
}

/* Ask the kernel to print memory that is not ours. */
static int bad_write(int pid)
{
	int kernel = write(1, (void *)0xC0100000, 16);
	int unmapped = write(1, (void *)0xDEAD0000, 16);
	int switcher = write(1, (void *)0xFFC00000, 16);

	printf("evil: pid %d bad-write: kernel %d, unmapped %d, switcher %d\n",
	       pid, kernel, unmapped, switcher);
	return kernel == -EFAULT && unmapped == -EFAULT && switcher == -EFAULT ? 0 : 1;
}

int main(int argc, char **argv)
{
	int pid = getpid();

	if (argc < 2)
		return 2;
	if (!strcmp(argv[1], "big-brk"))
		return big_brk(pid);
	if (!strcmp(argv[1], "bad-write"))
		return bad_write(pid);
	attack(argv[1]);
	printf("evil: pid %d %s was NOT stopped\n", pid, argv[1]);
	return 1;
}
