/*
 * cpu.c - the CPU a Guest believes it has: filtered cpuid, a virtual CR0.
 */
#include "puppy.h"

#define X86_CR0_TS	0x8

/* tour:G.140 The CPU it believes it has: cpuid, CR0 and lazy FPU
 * cpuid is not privileged, so a Guest sees the real processor.  But some
 * of what it advertises cannot work under lguest (sysenter, NX, PGE's
 * global pages, the APIC...) or would lead the kernel to instructions that
 * trap (family 6 Intel early setup reads an MSR).  So the Guest masks
 * what cpuid says before believing it (§7.4), as Linux 4.9's lguest_cpuid
 * does.
 *
 * CR0 is privileged, and the only bit of it a Guest cares about is TS
 * (task switched): with TS set, the next FPU instruction traps with #NM.
 * That is lazy FPU switching: a kernel sets TS when it switches tasks and
 * restores the FPU registers only if the new task really uses the FPU,
 * in the #NM handler.  So we keep our own CR0 and tell the Host about TS
 * alone, with the TS hypercall (§7.5); Linux 4.9's lguest_write_cr0 and
 * lguest_clts do the same.  The #NM handler (do_trap, irq.c) clears TS
 * and returns, and the FPU instruction runs again; puppy keeps no FPU
 * state for anyone, so that is all it has to do.  The word `fpu` on the
 * command line shows the round trip.
 */
void puppy_cpuid(u32 leaf, u32 *eax, u32 *ebx, u32 *ecx, u32 *edx)
{
	u32 a, b, c, d;

	asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(0));

	switch (leaf) {
	case 0:			/* highest standard leaf: no more than 5 */
		if (a > 5)
			a = 5;
		break;
	case 1:
		/* Keep SSE3, SSSE3 and CMPXCHG16B, nothing else. */
		c &= 0x00002201;
		/* FPU, TSC, PAE, CX8, CMOV, MMX, FXSR, SSE, SSE2 only... */
		d &= 0x07808151;
		/* ...plus PGE, so that the kernel tells the Host which TLB
		 * flushes may keep kernel mappings (FLUSH_TLB's argument). */
		d |= 0x00002000;
		/* Family 5: a "Pentium" skips the MSR-reading Intel quirks. */
		a = (a & ~0xF00u) | 0x500;
		break;
	case 0x40000000:	/* a hypervisor signature: not ours, hide it */
		b = c = d = 0;
		break;
	case 0x80000000:	/* highest extended leaf */
		if (a > 0x80000008)
			a = 0x80000008;
		break;
	case 0x80000001:
#ifndef CONFIG_PAE
		/* No NX: two-level page tables have no NX bit.  (The PAE
		 * build keeps it: the Host honours NX in PAE PTEs.) */
		d &= ~(1u << 20);
#endif
		break;
	}
	*eax = a;
	*ebx = b;
	*ecx = c;
	*edx = d;
}

/* Our private CR0: the Host only ever hears about TS. */
static u32 current_cr0;

u32 read_cr0(void)
{
	return current_cr0;
}

/* A hypercall costs a trip to the Host: only make one if TS changes. */
void write_cr0(u32 val)
{
	if ((val ^ current_cr0) & X86_CR0_TS)
		hcall(LHCALL_TS, val & X86_CR0_TS, 0, 0, 0);
	current_cr0 = val;
}

/* "clts": clear TS, always telling the Host (it is what #NM waits for). */
void clts(void)
{
	current_cr0 &= ~X86_CR0_TS;
	hcall(LHCALL_TS, 0, 0, 0, 0);
}
