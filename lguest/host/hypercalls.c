/*
 * Hypercalls served inside the emulator's interrupt hook (trap_hook.c).
 *
 * Not yet: every hypercall goes to the Host's Python (hypercalls.py).
 */
#include <stdbool.h>

struct hcall_table;

bool lguest_native_hypercall(void *uc, struct hcall_table *table)
{
	(void)uc;
	(void)table;
	return false;
}
