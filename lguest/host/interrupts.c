/*
 * Traps delivered by the emulated CPU itself, inside the emulator's interrupt
 * hook (trap_hook.c).
 *
 * Not yet: every trap goes to the Host's Python (interrupts.py).
 */
#include <stdbool.h>
#include <stdint.h>

struct gate_table;

bool lguest_native_trap(void *uc, uint32_t vector, struct gate_table *table)
{
	(void)uc;
	(void)vector;
	(void)table;
	return false;
}
