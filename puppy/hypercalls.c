/*
 * hypercalls.c - lguest_data and the asynchronous hypercall ring.
 *
 * Every trip into the Host is expensive, so calls that can wait (page-table
 * updates, TLB flushes, the TS bit...) are written into a 64-slot ring inside
 * lguest_data instead.  The Host runs whatever is queued there at the start
 * of the next synchronous hypercall, in order, and marks each slot free again.
 */
#include "lguest.h"
#include "irq.h"

/* The address of the one instruction at which the Host may deliver an
 * interrupt "on top of" our iret frame (see lguest_iret in head.S). */
extern char lguest_noirq_iret[];

/*
 * The shared structure, filled in before we ever run: the Host reads
 * noirq_iret, kernel_address and syscall_vec once, at LGUEST_INIT.
 */
struct lguest_data lguest_data = {
	.irq_enabled = 0,		/* we start with interrupts off */
	.blocked_interrupts = 1,	/* and the timer (irq 0) masked */
	.hcall_status = { [0 ... LHCALL_RING_SIZE - 1] = HCALL_STATUS_FREE },
	.noirq_iret = (u32)lguest_noirq_iret,
	.kernel_address = PAGE_OFFSET,
	.syscall_vec = SYSCALL_VECTOR,
};

/* Our cursor in the ring; the Host keeps its own, which trails ours. */
static unsigned int next_call;

/*
 * Queue a hypercall.  If the slot we would use has not been consumed yet the
 * ring is full: make this call synchronously, which makes the Host drain the
 * ring first, so the calls still happen in the order we issued them.
 *
 * Interrupts are off throughout: a handler that queued a call of its own
 * between our look at the cursor and our advancing it would take our slot.
 */
void async_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4)
{
	u32 flags = local_irq_save();
	volatile u8 *status = &lguest_data.hcall_status[next_call];
	struct hcall_args *slot = &lguest_data.hcalls[next_call];

	if (*status != HCALL_STATUS_FREE) {
		hcall(call, arg1, arg2, arg3, arg4);
		local_irq_restore(flags);
		return;
	}

	slot->arg0 = call;
	slot->arg1 = arg1;
	slot->arg2 = arg2;
	slot->arg3 = arg3;
	slot->arg4 = arg4;
	/*
	 * The arguments must be in memory before the Host can see the slot
	 * as ready.  A locked no-op is the i686 write barrier (no SSE2
	 * "sfence" for us), and the "memory" clobber stops gcc moving the
	 * stores across it.
	 */
	asm volatile("lock; addl $0,0(%%esp)" ::: "memory");
	*status = HCALL_STATUS_READY;

	if (++next_call == LHCALL_RING_SIZE)
		next_call = 0;
	local_irq_restore(flags);
}
