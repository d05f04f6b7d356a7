/*
 * irq.c - the Guest's IDT and the lguest "interrupt controller".
 *
 * A Guest cannot load an IDT itself (lidt is privileged, and the real IDT
 * belongs to the Host).  Instead it hands the Host one gate at a time with
 * LOAD_IDT_ENTRY, and the Host reflects traps and virtual interrupts through
 * them.  The interrupt controller is just as thin: virtual irq n is masked
 * by setting bit n of lguest_data.blocked_interrupts, and there is nothing
 * to acknowledge, since the Host clears an irq when it delivers it.
 */
#include "puppy.h"
#include "irq.h"

#define TRAP_STUB_SIZE	16	/* as in entry.S */
extern char trap_stubs[];

#define GATE_INTERRUPT	0xE	/* the Host sets irq_enabled = 0 on entry */
#define GATE_TRAP	0xF	/* irq_enabled stays as it was */
#define GATE_PRESENT	0x8000

#define VEC_NM		7	/* device not available: the lazy-FPU trap */
#define VEC_PF		14

static const char *const trap_names[FIRST_EXTERNAL_VECTOR] = {
	"DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM",
	"DF", "-", "TS", "NP", "SS", "GP", "PF", "-",
	"MF", "AC", "MC", "XM",
};

static irq_handler_t irq_handlers[PUPPY_NR_IRQS];
volatile int irq_work;
volatile unsigned int nm_traps;

/*
 * Build an i386 gate descriptor for stub @vec and give it to the Host.
 * DPL 0: these are for exceptions and Host-delivered interrupts, never for
 * "int n" from our own code.  The Host forces the selector to 0x61 anyway.
 */
static void set_gate(unsigned int vec, unsigned int type)
{
	u32 addr = (u32)trap_stubs + vec * TRAP_STUB_SIZE;
	u32 lo = (KERNEL_CS << 16) | (addr & 0xFFFF);
	u32 hi = (addr & 0xFFFF0000) | GATE_PRESENT | (type << 8);

	hcall(LHCALL_LOAD_IDT_ENTRY, vec, lo, hi, 0);
}

void idt_init(void)
{
	unsigned int vec;

	for (vec = 0; vec < 20; vec++) {
		/* NMI, double fault and 15 are the Host's business. */
		if (vec == 2 || vec == 8 || vec == 15)
			continue;
		/*
		 * #PF must be an interrupt gate: an interrupt arriving before
		 * the handler has read lguest_data.cr2 could fault and
		 * overwrite it.  The rest can run with interrupts as they were.
		 */
		set_gate(vec, vec == VEC_PF ? GATE_INTERRUPT : GATE_TRAP);
	}
	/* Interrupt handlers start with interrupts off, like on hardware. */
	for (vec = 0; vec < PUPPY_NR_IRQS; vec++)
		set_gate(FIRST_EXTERNAL_VECTOR + vec, GATE_INTERRUPT);
}

/* The whole interrupt controller: one bit per irq in lguest_data. */
void irq_mask(unsigned int irq)
{
	u32 flags = local_irq_save();

	lguest_data.blocked_interrupts |= 1u << irq;
	local_irq_restore(flags);
}

void irq_unmask(unsigned int irq)
{
	u32 flags = local_irq_save();

	lguest_data.blocked_interrupts &= ~(1u << irq);
	local_irq_restore(flags);
}

void request_irq(unsigned int irq, irq_handler_t handler)
{
	irq_handlers[irq] = handler;
}

/*
 * A level-type flow with nothing to acknowledge: just run the handler.  An
 * irq nobody asked for is masked so it cannot keep coming back.
 */
static void handle_irq(unsigned int irq)
{
	if (irq_handlers[irq])
		irq_handlers[irq](irq);
	else
		irq_mask(irq);
	irq_work = 1;		/* idle() must look again before it halts */
}

/* An exception we cannot fix: say what and where, and stop the Guest. */
static void __attribute__((noreturn)) oops(u32 vector, u32 error, struct trap_frame *frame)
{
	static char reason[128];	/* SHUTDOWN reads exactly 128 bytes */

	snprintk(reason, sizeof(reason),
		 "oops: vector %u (%s) at eip %08x error %08x cr2 %08x",
		 vector, trap_names[vector], frame->eip, error, lguest_data.cr2);
	printk("puppy: %s\n", reason);
	shutdown(reason, LGUEST_SHUTDOWN_POWEROFF);
}

/* Called from common_trap (entry.S) for every vector we installed. */
void do_trap(u32 vector, u32 error, struct trap_frame *frame)
{
	if (vector >= FIRST_EXTERNAL_VECTOR) {
		handle_irq(vector - FIRST_EXTERNAL_VECTOR);
		return;
	}
	if (vector == VEC_NM) {
		/*
		 * Someone set TS and then touched the FPU.  A real kernel
		 * would restore the current task's FPU state here; we only
		 * have one "task", so clearing TS is all there is to do.
		 * The iret then runs the FPU instruction again.
		 */
		clts();
		nm_traps++;
		return;
	}
	oops(vector, error, frame);
}
