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
 * when the queue is full).  A write the Launcher may refuse is queued only when
 * this hook is certain it will not: a refusal is a #GP at that very `out`.
 *
 * Whether a write to the PCI data ports is quiet depends on the config address
 * latched before it: the Launcher names that selector port, and lists per
 * selected value the quiet (port, size) writes.  This hook knows the selected
 * value only after a full-width write to the selector that it queued itself;
 * any other write there, or any write it leaves to Python, makes it unknown.
 *
 * The early console's eighth `out`, the byte, goes through a function's PCI_CFG
 * window (bar, offset, length) to its BAR0, and is refused when the window is
 * invalid.  The Launcher says which selected writes set which field of which
 * function's window, and through which whole windows a write is quiet but for
 * its output (the console's emerg_wr, and only if the window is valid: that
 * rule is the Launcher's, applied there).  So this hook tracks the windows
 * from the writes it queued itself since anything last went to Python (the
 * Host bumps `epoch` then), and queues the byte when the window it knows is
 * one of those.  The byte is printed when the queue is drained, and a newline
 * drains it at once: the console shows each line as soon as it is complete.
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
#define FUNCTIONS 32		/* PCI slots: the functions whose windows we track */

/* What a selected write does to its function's PCI_CFG window (ports.py's Window). */
enum window_effect { UNTOUCHED, SETS_BAR, SETS_OFFSET, SETS_LENGTH, UNSETTLES, WRITES_DATA };
#define WHOLE_WINDOW (1u << SETS_BAR | 1u << SETS_OFFSET | 1u << SETS_LENGTH)

typedef uint32_t (*in_hook)(void *uc, uint32_t port, int size, void *data);
typedef void (*out_hook)(void *uc, uint32_t port, int size, uint32_t value, void *data);
typedef void (*drain_queue)(void);

struct queued_write {
	uint32_t port, size, value;
};

/* One function's window as the writes queued in this epoch set it. */
struct window {
	uint32_t epoch, known;			/* known: 1 << SETS_... for each field set */
	uint32_t bar, offset, length;
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
	const uint32_t *effects;		/* for each: function << 8 | enum window_effect;
						   WRITES_DATA: quiet only through a quiet window */
	uint32_t quiet_selected_count;
	const uint64_t *quiet_windows;		/* sorted: function << 48 | bar << 40 | length << 32 | offset */
	uint32_t quiet_windows_count;
	uint32_t epoch;				/* bumped whenever anything goes to Python */
	uint64_t served;			/* reads answered here */
	uint64_t deferred;			/* writes queued here */
	uint64_t passed;			/* writes handed to the Python hook */
	uint32_t queued;			/* writes waiting in the queue, oldest first */
	struct queued_write queue[QUEUE];
	struct window windows[FUNCTIONS];
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

static int64_t find(const uint64_t *keys, uint32_t count, uint64_t key)
{
	uint32_t low = 0, high = count;

	while (low < high) {
		uint32_t middle = low + (high - low) / 2;

		if (keys[middle] == key)
			return middle;
		if (keys[middle] < key)
			low = middle + 1;
		else
			high = middle;
	}
	return -1;
}

/* The window of `function` as this epoch's queued writes left it (NULL: no such function). */
static struct window *window_of(struct port_table *table, uint32_t function)
{
	struct window *window = function < FUNCTIONS ? &table->windows[function] : NULL;

	if (window && window->epoch != table->epoch) {
		window->epoch = table->epoch;
		window->known = 0;
	}
	return window;
}

/* Is a data write through this function's window, as we know it, quiet? */
static int window_is_quiet(struct port_table *table, uint32_t function)
{
	const struct window *window = window_of(table, function);

	if (!window || window->known != WHOLE_WINDOW || window->bar > 0xFF || window->length > 0xFF)
		return 0;
	return find(table->quiet_windows, table->quiet_windows_count,
		    (uint64_t)function << 48 | (uint64_t)window->bar << 40 |
		    (uint64_t)window->length << 32 | window->offset) >= 0;
}

/* Is this write quiet while the selector holds what it does?  Its effect on a window too. */
static int quiet_as_selected(struct port_table *table, uint32_t port, int size, uint32_t *effect)
{
	uint64_t key = (uint64_t)table->selected << 32 | port << 8 | (uint32_t)size;
	int64_t entry;

	if (!table->selected_known)
		return 0;
	entry = find(table->quiet_selected, table->quiet_selected_count, key);
	if (entry < 0)
		return 0;
	*effect = table->effects[entry];
	return (*effect & 0xFF) != WRITES_DATA || window_is_quiet(table, *effect >> 8);
}

static void set_window(struct port_table *table, uint32_t effect, uint32_t value)
{
	uint32_t field = effect & 0xFF;
	struct window *window;

	if (field == UNTOUCHED || field == WRITES_DATA)
		return;		/* a write elsewhere, or through the window: no field of it */
	window = window_of(table, effect >> 8);
	if (!window)
		return;
	if (field == SETS_BAR)
		window->bar = value;
	else if (field == SETS_OFFSET)
		window->offset = value;
	else if (field == SETS_LENGTH)
		window->length = value;
	if (field == UNSETTLES)
		window->known = 0;
	else
		window->known |= 1u << field;
}

static void queue_write(struct port_table *table, uint32_t port, int size, uint32_t value, uint32_t effect)
{
	if (port == table->selector && size == 4) {
		table->selected = value;
		table->selected_known = 1;
	} else if (port - table->selector < table->selector_ports) {
		table->selected_known = 0;	/* a part of it: what it makes is the Launcher's */
	}
	set_window(table, effect, value & (0xFFFFFFFFu >> (32 - 8 * size)));
	table->queue[table->queued++] = (struct queued_write){port, (uint32_t)size, value};
	table->deferred++;
	/* A whole line printed: the Launcher shows it now. */
	if ((effect & 0xFF) == WRITES_DATA && (value & 0xFF) == '\n')
		table->drain();
}

void lguest_port_out_hook(void *uc, uint32_t port, int size, uint32_t value, void *data)
{
	struct port_table *table = data;
	uint32_t effect = UNTOUCHED;

	if (port < NPORTS && size >= 1 && size <= 4 &&
	    (table->quiet[port] || quiet_as_selected(table, port, size, &effect)) &&
	    plain_kernel_access(table, uc)) {
		if (table->queued == QUEUE)
			table->drain();
		/* A drain that failed left the queue full, and Python deciding. */
		if (table->queued < QUEUE) {
			queue_write(table, port, size, value, effect);
			return;
		}
	}
	/* Whatever Python does with it, the selector and the windows are the Launcher's. */
	table->selected_known = 0;
	table->epoch++;
	table->passed++;
	table->python_out(uc, port, size, value, NULL);
}
