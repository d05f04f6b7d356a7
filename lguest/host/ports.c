/*
 * Port I/O served without leaving the emulator's hooks: reads with a fixed
 * answer, and quiet writes, queued for the Launcher.
 *
 * Linux's boot reads an absent port some 100,000 times (calibrating against
 * the PIT), and an absent port always reads all ones: a Python callback for
 * each costs far more than the read.  Its early console writes each byte with
 * eight `out`s, seven of which only set the PCI address latch or a field of
 * the console's PCI configuration.  The Launcher decides which ports answer
 * what, and which writes are quiet -- accepted whatever the value, with no
 * effect but on its own state, which nothing sees before the next port or
 * device access (lguest/launcher/ports.py); the Host hands that over as this
 * table (lguest/host/ports.py), and these hooks only consult it.  A quiet write
 * needs no answer now, only to reach the Launcher in order: it is queued here,
 * and the Host hands the queue to the Launcher before any other port or device
 * access its Python sees and whenever the emulator stops (the hook asks it to
 * when the queue is full).  A write the Launcher may refuse, or whose effect
 * is seen at once (the byte the early console prints), is never queued: a
 * refusal is a #GP at that very `out`.
 *
 * Whether a write to the PCI data ports is quiet depends on the config address
 * latched before it: the Launcher names that selector port, and lists per
 * selected value the quiet (port, size) writes.  This hook knows the selected
 * value only after a full-width write to the selector that it queued itself;
 * any other write there, or any write it leaves to Python, makes it unknown.
 *
 * Everything else -- a port whose answer depends on state, a write that is not
 * quiet, an access from ring 3 or virtual-8086 mode (which must fault), an
 * access while the Host has something pending -- goes to the Python hooks,
 * exactly as if these were not here.
 */
#include <stddef.h>
#include <stdint.h>

#define NPORTS 65536
#define QUEUE 256
#define X86_EFLAGS_VM 0x20000

typedef uint32_t (*in_hook)(void *uc, uint32_t port, int size, void *data);
typedef void (*out_hook)(void *uc, uint32_t port, int size, uint32_t value, void *data);
typedef void (*drain_queue)(void);

struct queued_write {
	uint32_t port, size, value;
};

struct port_table {
	volatile int32_t python_decides;	/* the Host has state this hook cannot see */
	int (*reg_read)(void *uc, int reg, void *value);	/* uc_reg_read */
	int32_t cs, eflags;			/* UC_X86_REG_CS, UC_X86_REG_EFLAGS */
	in_hook python;				/* the Host's own hooks */
	out_hook python_out;
	drain_queue drain;			/* the Host hands the queue to the Launcher */
	uint32_t selector, selector_ports;	/* the selector's first port, and how many */
	uint32_t selected, selected_known;	/* what the last full write there selected */
	const uint64_t *quiet_selected;		/* sorted: selected << 32 | port << 8 | size */
	uint32_t quiet_selected_count;
	uint64_t served;			/* reads answered here */
	uint64_t deferred;			/* writes queued here */
	uint32_t queued;			/* writes waiting in the queue, oldest first */
	struct queued_write queue[QUEUE];
	uint8_t fixed[NPORTS];			/* 1: answer[port] is the whole story */
	uint8_t quiet[NPORTS];			/* 1: any write there is quiet */
	uint32_t answer[NPORTS];
};

/* For the Python side to check its copy of the layout. */
size_t lguest_port_table_size(void)
{
	return sizeof(struct port_table);
}

void lguest_ports_fill(struct port_table *table, uint32_t answer, uint8_t quiet)
{
	for (int port = 0; port < NPORTS; port++) {
		table->fixed[port] = 1;
		table->answer[port] = answer;
		table->quiet[port] = quiet;
	}
}

/* An access of the Guest kernel, with nothing pending the table cannot see. */
static int plain_kernel_access(struct port_table *table, void *uc)
{
	uint64_t cs = 0, eflags = 0;

	if (table->python_decides)
		return 0;
	if (table->reg_read(uc, table->cs, &cs) || table->reg_read(uc, table->eflags, &eflags))
		return 0;
	/* The same decision as the Host's CPL: virtual-8086 mode is ring 3. */
	return !(eflags & X86_EFLAGS_VM) && (cs & 3) != 3;
}

uint32_t lguest_port_in_hook(void *uc, uint32_t port, int size, void *data)
{
	struct port_table *table = data;

	if (port < NPORTS && table->fixed[port] && size >= 1 && size <= 4 &&
	    plain_kernel_access(table, uc)) {
		table->served++;
		return table->answer[port] & (0xFFFFFFFFu >> (32 - 8 * size));
	}
	return table->python(uc, port, size, NULL);
}

/* Is this write quiet while the selector holds what it does? */
static int quiet_as_selected(const struct port_table *table, uint32_t port, int size)
{
	uint64_t key = (uint64_t)table->selected << 32 | port << 8 | (uint32_t)size;
	uint32_t low = 0, high = table->quiet_selected_count;

	if (!table->selected_known)
		return 0;
	while (low < high) {
		uint32_t middle = low + (high - low) / 2;

		if (table->quiet_selected[middle] == key)
			return 1;
		if (table->quiet_selected[middle] < key)
			low = middle + 1;
		else
			high = middle;
	}
	return 0;
}

static void queue_write(struct port_table *table, uint32_t port, int size, uint32_t value)
{
	if (port == table->selector && size == 4) {
		table->selected = value;
		table->selected_known = 1;
	} else if (port - table->selector < table->selector_ports) {
		table->selected_known = 0;	/* a part of it: what it makes is the Launcher's */
	}
	table->queue[table->queued++] = (struct queued_write){port, (uint32_t)size, value};
	table->deferred++;
}

void lguest_port_out_hook(void *uc, uint32_t port, int size, uint32_t value, void *data)
{
	struct port_table *table = data;

	if (port < NPORTS && size >= 1 && size <= 4 &&
	    (table->quiet[port] || quiet_as_selected(table, port, size)) && plain_kernel_access(table, uc)) {
		if (table->queued == QUEUE)
			table->drain();
		/* A drain that failed left the queue full, and Python deciding. */
		if (table->queued < QUEUE) {
			queue_write(table, port, size, value);
			return;
		}
	}
	table->selected_known = 0;	/* whatever Python does with it */
	table->python_out(uc, port, size, value, NULL);
}
