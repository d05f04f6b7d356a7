/*
 * Interrupts from the clock and the devices, delivered by the emulated CPU
 * itself without leaving the emulator (the native path).
 *
 * Another thread raises an irq: it sets the irq's bit in `pending` (the one
 * copy of what is pending, shared with the Host's Python) and asks the vCPU
 * to look, the way QEMU's own devices do, with the CPU's interrupt_request
 * and the "stop chaining blocks" half of its instruction counter.  At the next
 * block boundary QEMU calls its CPU class's cpu_exec_interrupt, which this
 * file replaces (calibration.py proves where it is): here, on the vCPU's own
 * thread, the lowest pending irq the Guest has not blocked is delivered
 * through the real IDT, if the Guest takes interrupts and the delivery is one
 * interrupts.c would make for a trap (the same checks: ring, segments, frame
 * pages the fill hook answers), with lguest's rules around it: an interrupt
 * gate turns irq_enabled off, the clock in lguest_data is refreshed, and the
 * irq_pending hint is cleared once nothing deliverable is left.  Anything
 * else (no lguest_data yet, interrupts off, every pending irq blocked, no
 * gate, the Guest on its final `iret`, the Host with news of its own) stops
 * the emulator, as a ring of the doorbell did, and the run loop decides as it
 * always did.  interrupts.py marks, per irq, whether and how the CPU may
 * deliver it.
 *
 * QEMU clears the counter's half without a barrier before it reads
 * interrupt_request, so a raise landing in between can go unnoticed; the
 * Python side keeps a late doorbell ring for that (native_irqs.py).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define IRQS 32
#define FIRST_EXTERNAL_VECTOR 0x20
#define CPU_INTERRUPT_HARD 0x0002
#define X86_EFLAGS_IF 0x200
#define REGISTERED 256			/* engines at once in one process */
#define LD_IRQ_ENABLED 0		/* struct lguest_data */
#define LD_BLOCKED 4
#define LD_TIME 12
#define LD_IRQ_PENDING 20

enum irq_gate {
	IRQ_ASK_PYTHON,
	IRQ_TRAP_GATE,		/* the Guest's gate is a trap gate: irq_enabled stays */
	IRQ_INTERRUPT_GATE,	/* an interrupt gate: irq_enabled goes to 0 */
};

struct gate_table;		/* interrupts.c */
struct fill_table;		/* fills.c */
uint8_t *lguest_delivery_frame(struct gate_table *table, void *uc, uint32_t hflags, uint32_t words);
uint32_t lguest_frame_words(uint32_t hflags, bool error_code);
uint32_t lguest_cpu_hflags(const struct gate_table *table);
void lguest_fills_delivering(struct fill_table *table, bool delivering);

typedef bool (*exec_interrupt_fn)(void *cpu, int request);

struct irq_table {
	uint32_t pending;			/* bit per irq: every thread, atomically */
	uint8_t gate[IRQS];			/* enum irq_gate, per irq */
	int32_t enabled;			/* 0: every raise is a doorbell ring, as before */
	const volatile int32_t *python_decides;	/* trap_hook.c's: the Host has news */
	uint32_t lguest_data;			/* Guest-physical; 0 before INIT */
	uint32_t noirq_iret;
	void *uc;
	void *cpu;				/* the engine's CPUState */
	void *env;				/* its CPUX86State */
	uint32_t *interrupt_request;		/* in the CPUState */
	int16_t *icount_high;			/* the counter's half QEMU checks at every block */
	exec_interrupt_fn x86_exec_interrupt;	/* the class's own, for any other request */
	void (*hardirq)(void *env, int vector, int is_hw);	/* QEMU's do_interrupt_x86_hardirq */
	int (*stop)(void *uc);			/* uc_emu_stop: the run loop decides */
	int (*reg_read)(void *uc, int reg, void *value);	/* uc_reg_read */
	int32_t reg_eip;			/* UC_X86_REG_EIP */
	struct gate_table *gates;
	struct fill_table *fills;
	uint8_t *ram;
	uint32_t ram_size;
	uint64_t delivered[IRQS];		/* per irq, for --stats */
	uint64_t total;				/* all of them */
};

/* Which table belongs to the CPU QEMU asks about (a hook has no data of its own). */
static struct irq_table *registered[REGISTERED];

static struct irq_table *table_of(void *cpu)
{
	for (int i = 0; i < REGISTERED; i++) {
		struct irq_table *table = __atomic_load_n(&registered[i], __ATOMIC_ACQUIRE);

		if (table && table->cpu == cpu)
			return table;
	}
	return NULL;
}

/* A field of lguest_data (`deliver` checked that all of them lie in RAM). */
static uint32_t guest_field(const struct irq_table *table, uint32_t offset)
{
	uint32_t value;

	memcpy(&value, table->ram + table->lguest_data + offset, 4);
	return value;
}

static void set_guest_field(struct irq_table *table, uint32_t offset, uint32_t value)
{
	memcpy(table->ram + table->lguest_data + offset, &value, 4);
}

static uint32_t deliverable(const struct irq_table *table)
{
	return __atomic_load_n(&table->pending, __ATOMIC_ACQUIRE) & ~guest_field(table, LD_BLOCKED);
}

static void write_time(struct irq_table *table)
{
	struct timespec now;
	int32_t words[2];

	clock_gettime(CLOCK_REALTIME, &now);
	words[0] = (int32_t)now.tv_sec;
	words[1] = (int32_t)now.tv_nsec;
	memcpy(table->ram + table->lguest_data + LD_TIME, words, sizeof(words));
}

static uint32_t eip_now(const struct irq_table *table)
{
	uint64_t eip = 0;

	table->reg_read(table->uc, table->reg_eip, &eip);
	return (uint32_t)eip;
}

enum outcome { NOTHING, DELIVERED, ASK_PYTHON };

/* The lowest deliverable irq through the CPU, or why not. */
static enum outcome deliver(struct irq_table *table)
{
	uint32_t pending, irq, hflags;
	uint8_t *frame;

	/* lguest_data's fields up to irq_pending, the last one used here, lie in RAM */
	if (!table->enabled || *table->python_decides || !table->lguest_data ||
	    (uint64_t)table->lguest_data + LD_IRQ_PENDING + 4 > table->ram_size)
		return ASK_PYTHON;
	pending = deliverable(table);
	if (!pending)
		return __atomic_load_n(&table->pending, __ATOMIC_ACQUIRE) ? ASK_PYTHON : NOTHING;
	irq = (uint32_t)__builtin_ctz(pending);
	if (!(guest_field(table, LD_IRQ_ENABLED) & X86_EFLAGS_IF) || table->gate[irq] == IRQ_ASK_PYTHON ||
	    eip_now(table) == table->noirq_iret)
		return ASK_PYTHON;
	hflags = lguest_cpu_hflags(table->gates);
	frame = lguest_delivery_frame(table->gates, table->uc, hflags, lguest_frame_words(hflags, false));
	if (frame == NULL)
		return ASK_PYTHON;

	__atomic_and_fetch(&table->pending, ~(1u << irq), __ATOMIC_ACQ_REL);
	lguest_fills_delivering(table->fills, true);
	table->hardirq(table->env, FIRST_EXTERNAL_VECTOR + irq, 1);
	lguest_fills_delivering(table->fills, false);
	/* The real gate is a trap gate (the CPU's IF stays set), and irq_enabled said
	 * IF, so the pushed EFLAGS is what the Python path pushes. */
	if (table->gate[irq] == IRQ_INTERRUPT_GATE)
		set_guest_field(table, LD_IRQ_ENABLED, 0);
	write_time(table);
	if (!deliverable(table))
		set_guest_field(table, LD_IRQ_PENDING, 0);
	table->delivered[irq]++;
	table->total++;
	return DELIVERED;
}

/* In place of the CPU class's cpu_exec_interrupt: QEMU calls it at a block boundary
 * whenever interrupt_request is not 0 (the vCPU's thread). */
static bool exec_interrupt(void *cpu, int request)
{
	struct irq_table *table = table_of(cpu);
	bool done = false;

	if (table == NULL)
		return false;
	if (request & CPU_INTERRUPT_HARD)
		__atomic_and_fetch(table->interrupt_request, ~(uint32_t)CPU_INTERRUPT_HARD, __ATOMIC_ACQ_REL);
	if (request & ~CPU_INTERRUPT_HARD)
		done = table->x86_exec_interrupt(cpu, request & ~CPU_INTERRUPT_HARD);
	if (__atomic_load_n(&table->pending, __ATOMIC_ACQUIRE)) {
		switch (deliver(table)) {
		case DELIVERED:
			done = true;
			break;
		case ASK_PYTHON:
			table->stop(table->uc);
			break;
		case NOTHING:
			break;
		}
	}
	return done;
}

/*
 * From any thread: irq is pending.  With native delivery on, the vCPU is asked to
 * look at its next block boundary; the bit is set first, so a vCPU that sees the
 * request sees the irq.  True if it was asked (else the caller rings the doorbell).
 */
bool lguest_irq_raise(struct irq_table *table, uint32_t irq)
{
	__atomic_or_fetch(&table->pending, 1u << irq, __ATOMIC_ACQ_REL);
	if (!__atomic_load_n(&table->enabled, __ATOMIC_ACQUIRE))
		return false;
	__atomic_or_fetch(table->interrupt_request, CPU_INTERRUPT_HARD, __ATOMIC_ACQ_REL);
	__atomic_store_n(table->icount_high, (int16_t)-1, __ATOMIC_RELEASE);
	return true;
}

/* From any thread: the Host delivered (or dropped) these irqs itself. */
void lguest_irq_clear(struct irq_table *table, uint32_t bits)
{
	__atomic_and_fetch(&table->pending, ~bits, __ATOMIC_ACQ_REL);
}

/* Put exec_interrupt in the CPU class's slot, which must hold `x86_exec_interrupt`,
 * and remember the table for that CPU.  False if it cannot be (nothing changed). */
bool lguest_irqs_install(struct irq_table *table, exec_interrupt_fn *slot)
{
	int free = -1;

	if (*slot != table->x86_exec_interrupt && *slot != exec_interrupt)
		return false;
	for (int i = 0; i < REGISTERED; i++) {
		struct irq_table *there = __atomic_load_n(&registered[i], __ATOMIC_ACQUIRE);

		/* A table for this CPU's address belongs to an engine that is gone. */
		if (there && there->cpu == table->cpu)
			__atomic_store_n(&registered[i], NULL, __ATOMIC_RELEASE);
		if (free < 0 && !__atomic_load_n(&registered[i], __ATOMIC_ACQUIRE))
			free = i;
	}
	if (free < 0)
		return false;
	__atomic_store_n(&registered[free], table, __ATOMIC_RELEASE);
	*slot = exec_interrupt;
	return true;
}

/* The engine is closing: forget its table (its CPU is never asked about again). */
void lguest_irqs_forget(struct irq_table *table)
{
	for (int i = 0; i < REGISTERED; i++) {
		struct irq_table *expected = table;

		__atomic_compare_exchange_n(&registered[i], &expected, NULL, false, __ATOMIC_ACQ_REL,
					    __ATOMIC_ACQUIRE);
	}
}

/* For the Python side to check its copy of the layout. */
size_t lguest_irq_table_size(void)
{
	return sizeof(struct irq_table);
}
