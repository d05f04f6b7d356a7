/*
 * Port reads with a fixed answer, served without leaving the emulator's hook.
 *
 * Linux's boot reads an absent port some 100,000 times (calibrating against
 * the PIT), and an absent port always reads all ones: a Python callback for
 * each costs far more than the read.  The Launcher decides which ports answer
 * what, whatever happens (lguest/launcher/ports.py); the Host hands that over
 * as this table (lguest/host/ports.py),
 * and this hook only consults it.  Everything else -- a port whose answer
 * depends on state, a read from ring 3 or virtual-8086 mode (which must fault),
 * a read while the Host has something pending -- goes to the Python hook,
 * exactly as if this one were not here.
 */
#include <stddef.h>
#include <stdint.h>

#define NPORTS 65536
#define X86_EFLAGS_VM 0x20000

typedef uint32_t (*in_hook)(void *uc, uint32_t port, int size, void *data);

struct port_table {
	volatile int32_t python_decides;	/* the Host has state this hook cannot see */
	int (*reg_read)(void *uc, int reg, void *value);	/* uc_reg_read */
	int32_t cs, eflags;			/* UC_X86_REG_CS, UC_X86_REG_EFLAGS */
	in_hook python;				/* the Host's own hook */
	uint64_t served;			/* reads answered here */
	uint8_t fixed[NPORTS];			/* 1: answer[port] is the whole story */
	uint32_t answer[NPORTS];
};

void lguest_ports_fill(struct port_table *table, uint32_t answer)
{
	for (int port = 0; port < NPORTS; port++) {
		table->fixed[port] = 1;
		table->answer[port] = answer;
	}
}

static int plain_kernel_read(struct port_table *table, void *uc)
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
	    plain_kernel_read(table, uc)) {
		table->served++;
		return table->answer[port] & (0xFFFFFFFFu >> (32 - 8 * size));
	}
	return table->python(uc, port, size, NULL);
}
