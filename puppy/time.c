/*
 * time.c - time in an lguest Guest: a Host timer, a Host clock, and HALT.
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"

#define TIMER_IRQ		0
#define NSEC_PER_TICK		(1000000000u / HZ)
#define CLOCK_MIN_DELTA_NS	100	/* shorter requests are refused */

volatile u32 jiffies;

/* tour:G.120 The timer and the clock
 * There is no PIT, HPET or local APIC timer for a Guest to program.  Its
 * only timer is the SET_CLOCKEVENT hypercall: "raise irq 0 this many
 * nanoseconds from now", one-shot, or cancel with 0 (§4.8).  So puppy's
 * 100 Hz tick is a handler that re-arms the next tick each time it runs.
 * Irq 0 starts masked in blocked_interrupts (hypercalls.c), so the Host
 * holds the timer back until time_init has a handler and unmasks it.
 *
 * The clock: INIT told us tsc_khz = 0, so no TSC.  The Guest's only
 * clock is lguest_data.time, which the Host writes at INIT and whenever
 * it delivers an interrupt, so it moves in steps, not smoothly
 * (clock_ns, below).  Linux 4.9 registers exactly these two: the lguest
 * clockevent device (one-shot, minimum delta 100 ns, set_next_event is
 * SET_CLOCKEVENT) and, with no TSC, the "lguest" clocksource that reads
 * lguest_data.time.
 */

/*
 * The clockevent: one-shot, counted in nanoseconds.  Like Linux's, it
 * refuses deltas too short to be worth a hypercall (Linux returns -ETIME;
 * the caller then handles the expiry itself).
 */
int clockevent_set_next(u32 delta_ns)
{
	if (delta_ns < CLOCK_MIN_DELTA_NS)
		return -1;
	hcall(LHCALL_SET_CLOCKEVENT, delta_ns, 0, 0, 0);
	return 0;
}

/* SET_CLOCKEVENT(0) cancels whatever was armed. */
void clockevent_shutdown(void)
{
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0, 0);
}

/* irq 0: one tick has passed; ask for the next one. */
static void timer_interrupt(unsigned int irq)
{
	(void)irq;
	jiffies++;
	clockevent_set_next(NSEC_PER_TICK);
	scheduler_tick();
}

/*
 * blocked_interrupts starts with bit 0 set, so the Host holds the timer
 * back until we have a handler for it.  Now we do.
 */
void time_init(void)
{
	request_irq(TIMER_IRQ, timer_interrupt);
	irq_unmask(TIMER_IRQ);
	clockevent_set_next(NSEC_PER_TICK);
}

/*
 * The lguest clocksource: the Host's timestamp in nanoseconds.  The Host
 * may rewrite it between our two reads (an interrupt can arrive between
 * them), so if the seconds moved underneath us, read again.
 */
u64 clock_ns(void)
{
	volatile int *sec = &lguest_data.time.tv_sec;
	volatile int *nsec = &lguest_data.time.tv_nsec;
	u32 s, ns;

	do {
		s = *sec;
		ns = *nsec;
	} while (s != (u32)*sec);
	return (u64)s * 1000000000u + ns;
}

/* tour:G.130 Idle: the HALT hypercall
 * With nothing to do, a native kernel executes "sti; hlt".  At ring 1 hlt
 * would only trap (#GP), and spinning would burn the Host's CPU.  Instead
 * the Guest makes the HALT hypercall: the Host stops running it until an
 * unmasked interrupt is pending (§4.7).  The race every idle loop has to
 * close, an interrupt arriving between "is there work?" and the halt, is
 * closed by calling HALT with interrupts (virtually) off: an interrupt in
 * that window stays pending in the Host, and HALT returns at once.  When
 * the Host wakes us it turns irq_enabled back on itself and delivers the
 * interrupt, so the handler has run by the time HALT returns.  This is
 * Linux 4.9's lguest_safe_halt.
 */
void idle(void)
{
	irq_disable();
	if (irq_work) {
		/* Something happened since the caller looked: look again. */
		irq_work = 0;
		irq_enable();
		return;
	}
	hcall(LHCALL_HALT, 0, 0, 0, 0);
	/* The caller looks again now anyway, which is all the flag asks. */
	irq_work = 0;
}

/* Wait for @ms worth of ticks, halting between them. */
void sleep_ms(u32 ms)
{
	u32 end = jiffies + ms / (1000 / HZ);

	while ((int)(jiffies - end) < 0)
		idle();
}
