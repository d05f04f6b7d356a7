/*
 * io.h - the two ways an lguest Guest touches a device: port I/O and MMIO.
 *
 * Port I/O ("in"/"out") is privileged: at ring 1 each one traps (#GP) to
 * the Host, which hands it to the Launcher to emulate.  PCI configuration
 * space is reached that way, through ports 0xCF8/0xCFC.
 *
 * MMIO is an ordinary load or store to a device's BAR0 page.  The Host never
 * maps those pages to RAM, so every access faults out to the Launcher, which
 * decodes the instruction to find the width, the register and the value.
 * The original decoder knows only the simple "mov reg, (reg)" forms, so the
 * accessors below spell those out in asm rather than leave the choice of
 * instruction to the compiler, and each uses exactly the register's width:
 * the virtio transport kills a driver that reads a u16 register as a u32.
 */
#ifndef PUPPY_IO_H
#define PUPPY_IO_H

#include "lguest.h"

/* --- port I/O --- */
static inline void outb(u8 v, u16 port)
{
	asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(u32 v, u16 port)
{
	asm volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;

	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u16 inw(u16 port)
{
	u16 v;

	asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u32 inl(u16 port)
{
	u32 v;

	asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* --- MMIO: one plain mov each, register-indirect, of the natural width --- */
static inline u8 readb(const volatile void *addr)
{
	u8 v;

	asm volatile("movb (%1), %0" : "=q"(v) : "r"(addr) : "memory");
	return v;
}

static inline u16 readw(const volatile void *addr)
{
	u16 v;

	asm volatile("movw (%1), %0" : "=r"(v) : "r"(addr) : "memory");
	return v;
}

static inline u32 readl(const volatile void *addr)
{
	u32 v;

	asm volatile("movl (%1), %0" : "=r"(v) : "r"(addr) : "memory");
	return v;
}

static inline void writeb(u8 v, volatile void *addr)
{
	asm volatile("movb %0, (%1)" : : "q"(v), "r"(addr) : "memory");
}

static inline void writew(u16 v, volatile void *addr)
{
	asm volatile("movw %0, (%1)" : : "r"(v), "r"(addr) : "memory");
}

static inline void writel(u32 v, volatile void *addr)
{
	asm volatile("movl %0, (%1)" : : "r"(v), "r"(addr) : "memory");
}

/*
 * A full barrier: a locked no-op is the i686 way (no SSE2 mfence), and the
 * "memory" clobber keeps the compiler from moving accesses across it.  The
 * Launcher's device threads read our rings from another host thread, so a
 * ring entry must be in memory before the index that publishes it.
 */
static inline void mb(void)
{
	asm volatile("lock; addl $0,0(%%esp)" ::: "memory");
}

/* A spin-wait hint ("pause"): polite to whoever we are waiting for. */
static inline void cpu_relax(void)
{
	asm volatile("rep; nop" ::: "memory");
}

#endif /* PUPPY_IO_H */
