/* tour:S.130 Why the doorbell hook is C
 * On the pure-Python path it runs before every translated block the Guest executes:
 * a Python hook there would cost more than the Guest's own code.  In C it is two
 * loads and a compare (about 18% of pure compute, docs/design.md), and it calls
 * uc_emu_stop only when the bell is rung, at the one place where stopping is clean.
 * On the native path it runs only for the Switcher's code page, where every entry
 * starts: a bell rung before the emulator ran stops it there, and otherwise the
 * entry gate's block sends the vCPU on to the Guest's EIP.
 */

/*
 * The vCPU's doorbell: a Unicorn block hook, in C because it runs before every
 * translated block the Guest executes.
 *
 * Other threads (the clock, the devices) must be able to get a running vCPU out
 * of the emulator.  Unicorn's uc_emu_stop() from another thread is not safe: if
 * it lands while the emulator is inside one of our callbacks, the instruction
 * can be left half-done with EIP not moved on, and it runs a second time when
 * emulation resumes (upstream issue #1355).  So other threads only ring this
 * doorbell; the vCPU's own thread answers it at the start of the next block,
 * where stopping is clean.
 */
#include <stdint.h>

struct doorbell {
	volatile int32_t rung;
	int (*stop)(void *uc);	/* uc_emu_stop, looked up by the Python side */
	int (*reg_write)(void *uc, int reg, const void *value);	/* uc_reg_write */
	uint64_t gate;		/* the entry gate's address (0: none) */
	uint32_t resume;	/* where the Guest goes on from the gate */
	int32_t eip;		/* UC_X86_REG_EIP */
};

void lguest_doorbell_hook(void *uc, uint64_t address, uint32_t size, void *data)
{
	struct doorbell *bell = data;

	(void)size;
	/*
	 * The bell stays rung until the run loop answers it (doorbell_answered).
	 * A stop asked here can be dropped by Unicorn when a later hook in the same
	 * block restarts it (our direct traps move EIP): clearing the bell first
	 * then lost the kick for good, and a Linux boot hung at "Calibrating delay
	 * loop" with its tick pending.  Left rung, the next block asks again.
	 */
	if (bell->rung)
		bell->stop(uc);
	else if (address == bell->gate) {
		/* Nobody rang while we entered: on to the Guest (Unicorn leaves
		 * this block before running it, as for any EIP set in a hook). */
		bell->reg_write(uc, bell->eip, &bell->resume);
	}
}
