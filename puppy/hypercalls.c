/*
 * hypercalls.c - lguest_data and the asynchronous hypercall ring.
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

/* tour:G.60 The async hypercall ring: calls that can wait
 * Every trip into the Host costs a world switch, and some kernel work
 * makes many small calls in a row: tearing down an address space clears
 * hundreds of PTEs, and a context switch changes both the page table and
 * the kernel stack.  Calls whose effect may be late (page-table updates,
 * TLB flushes, TS, the stack) can instead be written into a 64-slot ring
 * inside lguest_data: the five registers of the call, then the slot's
 * status byte from 0xFF (free) to 0 (ready).  The Host runs everything
 * queued, in order, at the start of the next synchronous hypercall and
 * marks each slot free again (§1.4).  FLUSH_ASYNC is the synchronous call
 * that does nothing else.  puppy_main shows it once, right after its
 * first printk: TS(1), TS(0) and FLUSH_TLB(0) queued, then one
 * FLUSH_ASYNC, so three calls cost one exit.  Linux 4.9's async_hcall in
 * arch/x86/lguest/boot.c is the same ring with the same rules.
 */

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
