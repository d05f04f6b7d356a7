/*
 * irq.h - the Guest's interrupt flag is a word in memory.
 */
#ifndef PUPPY_IRQ_H
#define PUPPY_IRQ_H

#include "lguest.h"

/* Where struct pt_regs (below) keeps the interrupted cs: for entry.S. */
#define PT_REGS_CS	60

#ifndef __ASSEMBLY__

/* tour:G.90 Interrupts: irq_enabled, blocked_interrupts, irq_pending
 * A native kernel turns interrupts off and on with cli/sti/pushf/popf.  At
 * ring 1 those cannot touch the real flag (the Host keeps interrupts on
 * for itself), and trapping on each would be ruinous: kernels disable
 * interrupts constantly.  So the Guest's flag is a word in memory,
 * lguest_data.irq_enabled: 0 is disabled, 0x200 (EFLAGS.IF) enabled.
 * Disabling and reading it are single memory accesses (Linux 4.9 patches
 * them inline over the native instructions).  The Host reads the word
 * before it delivers a virtual interrupt (§4.7); if it is 0, the Host sets
 * lguest_data.irq_pending instead and lets us run on.  That is why
 * enabling is longer: lg_irq_enable (entry.S) stores 0x200 and, if
 * irq_pending is set, makes the SEND_INTERRUPTS hypercall so that what
 * was held back is delivered now, not at the next exit.
 *
 * The interrupt controller is just as thin: irq n is masked while bit n
 * of lguest_data.blocked_interrupts is set (irq_mask and irq_unmask, in
 * irq.c), and there is nothing to acknowledge, because the Host clears an
 * irq as it delivers it (§4.9).  Virtual irq n arrives through IDT
 * vector 0x20 + n.
 */

/* "cli": the Host simply will not deliver while irq_enabled is 0. */
static inline void irq_disable(void)
{
	asm volatile("movl $0, %0" : "=m"(lguest_data.irq_enabled) : : "memory");
}

/* "pushf": only the IF bit means anything to the Host. */
static inline u32 save_fl(void)
{
	u32 flags;

	asm volatile("movl %1, %0" : "=r"(flags) : "m"(lguest_data.irq_enabled) : "memory");
	return flags;
}

/* "sti" and "popf": lg_irq_enable / lg_restore_fl keep every register. */
static inline void irq_enable(void)
{
	asm volatile("call lg_irq_enable" : : : "memory", "cc");
}

static inline void restore_fl(u32 flags)
{
	asm volatile("call lg_restore_fl" : : "a"(flags) : "memory", "cc");
}

/* A critical section that nests: remember the old state, then disable. */
static inline u32 local_irq_save(void)
{
	u32 flags = save_fl();

	irq_disable();
	return flags;
}

#define local_irq_restore(flags)	restore_fl(flags)

/* irq.c: the IDT, the lguest "interrupt controller", traps. */
typedef void (*irq_handler_t)(unsigned int irq);

/*
 * Everything common_trap (entry.S) leaves on the kernel stack: the segment
 * registers, pushal's block, the stub's vector and error code, then the
 * frame the Host (or the CPU, for a direct trap) pushed.  Only a trap from
 * ring 3 has the last two words: the Host switched to the SET_STACK stack
 * and saved the user's stack pointer there.
 */
struct pt_regs {
	u32 gs, fs, es, ds;
	u32 edi, esi, ebp, esp_kernel, ebx, edx, ecx, eax;
	u32 vector, error;
	u32 eip, cs, eflags;
	u32 esp, ss;		/* from ring 3 only */
};

_Static_assert(__builtin_offsetof(struct pt_regs, cs) == PT_REGS_CS, "pt_regs.cs");

static inline int user_mode(const struct pt_regs *regs)
{
	return (regs->cs & 3) == 3;
}

void idt_init(void);
void irq_mask(unsigned int irq);
void irq_unmask(unsigned int irq);
void request_irq(unsigned int irq, irq_handler_t handler);
void do_trap(struct pt_regs *regs);
extern volatile int irq_work;		/* set by every irq handled */
extern volatile int in_irq;		/* nonzero inside an irq handler */
extern volatile unsigned int nm_traps;		/* #NM traps taken */
extern int syscall_trap_gate;		/* 0x80 as a trap gate, not an interrupt gate */

#endif /* __ASSEMBLY__ */
#endif /* PUPPY_IRQ_H */
