/*
 * The native path's interrupt hook: every exception and `int n` the Guest
 * raises arrives here first, inside the emulator.
 *
 * Most of them need nothing the Host's Python knows at that moment: a
 * hypercall whose effect the Host handed over as data (hypercalls.c), a trap
 * the emulated CPU can deliver through the Guest's gates itself
 * (interrupts.c).  Those are served here, and the Guest goes on without an
 * exit.  Everything else, and everything while the Host has news this hook
 * cannot see (an exit pending, a failed hook, a frame for the trampoline),
 * goes to the Switcher's Python hook exactly as if this one were not here.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LGUEST_TRAP_ENTRY 0x1f

struct hcall_table;	/* hypercalls.c */
struct gate_table;	/* interrupts.c */

bool lguest_native_hypercall(void *uc, struct hcall_table *table);
bool lguest_native_trap(void *uc, uint32_t vector, struct gate_table *table);
void lguest_native_trap_over(struct gate_table *table);

typedef void (*intr_hook)(void *uc, uint32_t intno, void *data);
typedef bool (*invalid_hook)(void *uc, void *data);

struct trap_hook {
	volatile int32_t python_decides;	/* the Host has state this hook cannot see */
	intr_hook python;			/* the Switcher's own hook */
	invalid_hook python_invalid;		/* and its invalid-opcode hook */
	struct hcall_table *hcalls;		/* NULL: every hypercall goes to Python */
	struct gate_table *gates;		/* NULL: every other trap goes to Python */
	uint64_t hypercalls_served;		/* hypercalls run here */
	uint64_t traps_served;			/* traps delivered here */
};

void lguest_interrupt_hook(void *uc, uint32_t intno, void *data)
{
	struct trap_hook *hook = data;

	if (hook->gates)
		lguest_native_trap_over(hook->gates);	/* a delivery a fault cut short */
	if (!hook->python_decides) {
		if (intno == LGUEST_TRAP_ENTRY) {
			if (hook->hcalls && lguest_native_hypercall(uc, hook->hcalls)) {
				hook->hypercalls_served++;
				return;
			}
		} else if (hook->gates && lguest_native_trap(uc, intno, hook->gates)) {
			hook->traps_served++;
			return;
		}
	}
	hook->python(uc, intno, 0);
}

/*
 * An invalid opcode never reaches the interrupt hook: Unicorn hands #UD to the
 * invalid-instruction hook instead (and, answered true, runs on from whatever
 * CS:EIP the CPU then has), so the same choice is made here.
 */
#define INVALID_OPCODE 6

bool lguest_invalid_hook(void *uc, void *data)
{
	struct trap_hook *hook = data;

	if (hook->gates)
		lguest_native_trap_over(hook->gates);
	if (!hook->python_decides && hook->gates && lguest_native_trap(uc, INVALID_OPCODE, hook->gates)) {
		hook->traps_served++;
		return true;
	}
	return hook->python_invalid(uc, NULL);
}
