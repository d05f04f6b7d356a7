/*
 * time.c - time in an lguest Guest: a Host timer, a Host clock, and HALT.
 *
 * There is no PIT, HPET or local APIC timer to program.  The Guest's only
 * timer is SET_CLOCKEVENT: "raise irq 0 this many nanoseconds from now",
 * one-shot, so every tick arms the next.  Its only clock (the Host reports
 * tsc_khz = 0, so no TSC) is lguest_data.time, which the Host writes when
 * it delivers an interrupt: it moves in steps, not smoothly.  And idling is
 * the HALT hypercall, which sleeps until an interrupt is due -- a real
 * "hlt" would just trap.
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"

#define TIMER_IRQ		0
#define NSEC_PER_TICK		(1000000000u / HZ)
#define CLOCK_MIN_DELTA_NS	100	/* shorter requests are refused */

volatile u32 jiffies;

/*
 * The clockevent: one-shot, counted in nanoseconds.  Like Linux's, it
 * refuses deltas that are too short to be worth a hypercall (Linux returns
 * -ETIME; the caller then handles the expiry itself).
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

/*
 * Nothing to do: sleep in the Host until an interrupt is due.  Interrupts
 * are off between the caller's last look and the HALT, so an interrupt in
 * that window is not lost: the Host sees it pending (irq_pending) and HALT
 * returns at once.  The Host turns interrupts back on when it wakes us and
 * runs the handler before HALT returns.
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
