/*
 * irq.c - the Guest's IDT and the lguest "interrupt controller".
 *
 * A Guest cannot load an IDT itself (lidt is privileged, and the real IDT
 * belongs to the Host).  Instead it hands the Host one gate at a time with
 * LOAD_IDT_ENTRY, and the Host reflects traps and virtual interrupts through
 * them.  The interrupt controller is just as thin: virtual irq n is masked
 * by setting bit n of lguest_data.blocked_interrupts, and there is nothing
 * to acknowledge, since the Host clears an irq when it delivers it.
 *
 * Traps from ring 3 arrive the same way, on the kernel stack SET_STACK
 * named, with the user's esp and ss on top of the frame.  An exception a
 * process causes kills only that process; one the kernel causes is an oops.
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"

#define TRAP_STUB_SIZE	16	/* as in entry.S */
extern char trap_stubs[];
extern char syscall_entry[];

#define GATE_INTERRUPT	0xE	/* the Host sets irq_enabled = 0 on entry */
#define GATE_TRAP	0xF	/* irq_enabled stays as it was */
#define GATE_PRESENT	0x8000

#define VEC_DE		0
#define VEC_UD		6
#define VEC_NM		7	/* device not available: the lazy-FPU trap */
#define VEC_GP		13
#define VEC_PF		14

static const char *const trap_names[FIRST_EXTERNAL_VECTOR] = {
	"DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM",
	"DF", "-", "TS", "NP", "SS", "GP", "PF", "-",
	"MF", "AC", "MC", "XM",
};

static irq_handler_t irq_handlers[PUPPY_NR_IRQS];
int syscall_trap_gate;		/* main.c: the `trapgate` word */
volatile int irq_work;
volatile int in_irq;		/* inside an interrupt handler: must not sleep */
volatile unsigned int nm_traps;

/*
 * Build an i386 gate descriptor for @handler and give it to the Host.  The
 * Host forces the selector to 0x61 anyway.  @dpl is the lowest privilege
 * that may reach the gate with "int n": 0 for exceptions and interrupts,
 * so a user's "int3" or "int $0x20" is a #GP instead; 3 for system calls.
 */
static void set_gate(unsigned int vec, u32 handler, unsigned int type, unsigned int dpl)
{
	u32 lo = (KERNEL_CS << 16) | (handler & 0xFFFF);
	u32 hi = (handler & 0xFFFF0000) | GATE_PRESENT | (dpl << 13) | (type << 8);

	hcall(LHCALL_LOAD_IDT_ENTRY, vec, lo, hi, 0);
}

static u32 stub(unsigned int vec)
{
	return (u32)trap_stubs + vec * TRAP_STUB_SIZE;
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
		set_gate(vec, stub(vec), vec == VEC_PF ? GATE_INTERRUPT : GATE_TRAP, 0);
	}
	/* Interrupt handlers start with interrupts off, like on hardware. */
	for (vec = 0; vec < PUPPY_NR_IRQS; vec++)
		set_gate(FIRST_EXTERNAL_VECTOR + vec, stub(FIRST_EXTERNAL_VECTOR + vec),
			 GATE_INTERRUPT, 0);
	/*
	 * System calls: DPL 3, so that ring 3 may use `int $0x80`.  An
	 * interrupt gate, as Linux >= 4.6 has it: the Host reflects the call
	 * (one trip through the Host per system call) and turns interrupts
	 * off on the way in; do_syscall turns them back on.  `trapgate` on the
	 * command line makes it a trap gate instead, which lguest was designed
	 * to be fast with: the Host copies it into the real IDT and the CPU
	 * delivers `int $0x80` straight onto the SET_STACK stack.
	 */
	set_gate(SYSCALL_VECTOR, (u32)syscall_entry,
		 syscall_trap_gate ? GATE_TRAP : GATE_INTERRUPT, 3);
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
	in_irq++;
	if (irq_handlers[irq])
		irq_handlers[irq](irq);
	else
		irq_mask(irq);
	in_irq--;
	irq_work = 1;		/* idle() must look again before it halts */
}

/* An exception the kernel itself caused: say what and where, and stop. */
static void __attribute__((noreturn)) oops(struct pt_regs *regs, u32 cr2)
{
	static char reason[128];	/* SHUTDOWN reads exactly 128 bytes */

	snprintk(reason, sizeof(reason),
		 "oops: vector %u (%s) at eip %08x error %08x cr2 %08x",
		 regs->vector, trap_names[regs->vector], regs->eip, regs->error, cr2);
	/* The device queues may be what broke: the slow, sure way out. */
	console_emergency();
	printk("puppy: %s\n", reason);
	shutdown(reason, LGUEST_SHUTDOWN_POWEROFF);
}

/*
 * An exception a process caused.  The kernel is fine: only that process
 * dies, and the others carry on.
 */
static void __attribute__((noreturn)) user_fault(struct pt_regs *regs, u32 cr2)
{
	char reason[96];

	switch (regs->vector) {
	case VEC_PF:
		snprintk(reason, sizeof(reason), "page fault at 0x%x (error 0x%x)",
			 cr2, regs->error);
		break;
	case VEC_GP:
		snprintk(reason, sizeof(reason), "general protection fault (error 0x%x) at 0x%x",
			 regs->error, regs->eip);
		break;
	case VEC_UD:
		snprintk(reason, sizeof(reason), "invalid opcode at 0x%x", regs->eip);
		break;
	case VEC_DE:
		snprintk(reason, sizeof(reason), "divide error at 0x%x", regs->eip);
		break;
	default:
		snprintk(reason, sizeof(reason), "exception %u (%s, error 0x%x) at 0x%x",
			 regs->vector, trap_names[regs->vector], regs->error, regs->eip);
		break;
	}
	kill_current(reason);
}

/* Called from common_trap (entry.S) for every vector we installed. */
void do_trap(struct pt_regs *regs)
{
	u32 vector = regs->vector, cr2 = 0;

	if (vector >= FIRST_EXTERNAL_VECTOR && vector < FIRST_EXTERNAL_VECTOR + PUPPY_NR_IRQS) {
		handle_irq(vector - FIRST_EXTERNAL_VECTOR);
		return;
	}
	if (vector == SYSCALL_VECTOR) {
		do_syscall(regs);
		return;
	}
	/* Read cr2 first: the Host overwrites it at the next page fault. */
	if (vector == VEC_PF)
		cr2 = lguest_data.cr2;
	if (vector == VEC_NM) {
		/*
		 * Someone set TS and then touched the FPU.  A real kernel
		 * would restore the current task's FPU state here; puppy keeps
		 * no FPU state for anyone (its programs are built without FPU
		 * code), so clearing TS is all there is to do.  The iret then
		 * runs the FPU instruction again.
		 */
		clts();
		nm_traps++;
		return;
	}
	if (user_mode(regs))
		user_fault(regs, cr2);
	oops(regs, cr2);
}
