/*
 * irq.c - the Guest's IDT, the lguest "interrupt controller", and what
 * becomes of a trap: an irq handler, a system call, a dead process or an
 * oops.
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

/* tour:G.80 The IDT, one gate at a time: LOAD_IDT_ENTRY
 * Before interrupts can be turned on, the Guest needs an IDT, and it may
 * not load one: lidt is privileged and the real IDT belongs to the Host.
 * So it hands the Host each gate, as the two descriptor words the CPU
 * would read, with LOAD_IDT_ENTRY(vector, lo, hi).  The Host checks the
 * type, forces the selector to the Guest's ring-1 code segment 0x61, and
 * keeps the gate (§4.5).  When a trap or a virtual interrupt is for us, the
 * Host pushes a frame on our stack and jumps to that gate's handler: it
 * "reflects" the trap (§4.6).
 *
 * Until a gate exists, any exception the Host would have to reflect kills
 * the Guest (§1.3), which is why this comes before interrupts are enabled.
 * Vectors 2, 8 and 15 are the Host's own (NMI, double fault, reserved)
 * and 0x1f is the hypercall: the Host ignores gates for them.  The gate
 * type matters: through an interrupt gate the Host turns our virtual
 * interrupts off on entry; a trap gate leaves them alone, and for a few
 * vectors it even lets the CPU deliver the trap straight to us without
 * leaving the Guest (a "direct trap", §4.4).  Linux 4.9 does the same
 * from trap_init through its write_idt_entry hook, one hypercall per gate.
 */
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

/* tour:G.180 A page fault, from the Guest's side
 * When a process touches a page, the CPU walks the Host's shadow tables,
 * not ours.  A miss goes to the Host first, which reads our directory and
 * PTE for that address (§6.3).  If we map the page, with the rights the
 * access needs, the Host fills in its shadow and resumes the process: the
 * most common page fault of all is one the Guest never sees.  Only if our
 * own tables say no (not present, a write to a read-only page, a user
 * access to a kernel page) does the Host reflect the fault: it writes the
 * faulting address into lguest_data.cr2 (the Guest cannot read the real
 * CR2) and delivers vector 14 with the CPU's error code (§4.3).
 *
 * #PF's gate is an interrupt gate (idt_init) and cr2 is read first thing:
 * an interrupt, or another fault, could overwrite lguest_data.cr2 before
 * we looked.  A Linux 4.9 Guest reads it the same way (its read_cr2 hook
 * returns lguest_data.cr2), and its do_page_fault often fixes things up:
 * it allocates a page and maps it with set_pte_at, i.e. SET_PTE, then
 * returns, and the retried access is found by the Host's walk.  puppy maps
 * every page a process may use up front (exec.c, mm_brk), so a fault that
 * reaches it is a bug: from ring 3 it kills the process ("page fault at
 * 0x... (error 0x...)"), in the kernel it is an oops that shuts the
 * Guest down.  `hostile` and `pf` on the command line show both.
 */

/*
 * Called from common_trap (entry.S) for every vector we installed.
 */
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
