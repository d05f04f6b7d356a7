/*
 * virtio_console.c - the virtio console: a terminal made of two queues.
 *
 * Queue 1 ("output") carries what we print: each chain is one readable
 * buffer, which the Launcher writes to its stdout.  Queue 0 ("input")
 * carries what the user types (or pipes in): we keep a few empty, writable
 * buffers posted there, the Launcher fills one whenever input arrives and
 * says how many bytes it wrote (the used length), and raises the console's
 * irq.  There is no line discipline on either side -- the Launcher puts
 * the terminal in raw mode and echoes nothing -- so what a program reads
 * is exactly the bytes that came in.
 *
 * Output buffers are a pool of fixed slots, one chain each, freed as the
 * device hands them back; a writer that finds none free waits for the
 * console's irq (or polls, if it may not sleep).  Input lands in a FIFO
 * that read() drains; a buffer is posted again only when the FIFO has room
 * for all the buffers on the ring, so no byte is ever dropped.
 */
#include "puppy.h"
#include "io.h"
#include "irq.h"
#include "sched.h"
#include "virtio.h"

#define VQ_INPUT	0
#define VQ_OUTPUT	1

#define OUT_SLOTS	32
#define OUT_SLOT_SIZE	512
#define IN_BUFS		4
#define IN_BUF_SIZE	256
#define FIFO_SIZE	4096		/* a power of two */

static struct virtio_device con;
static int ready;

static char out_slot[OUT_SLOTS][OUT_SLOT_SIZE];
static int out_busy[OUT_SLOTS];		/* on the ring, not yet given back */
static unsigned int out_outstanding;

static char in_buf[IN_BUFS][IN_BUF_SIZE];
static int in_posted[IN_BUFS];
static unsigned int in_nr_posted;
static char fifo[FIFO_SIZE];
static u32 fifo_head, fifo_tail;	/* free-running: head - tail bytes wait */

int virtio_console_ready(void)
{
	return ready;
}

/* --- output --------------------------------------------------------------- */

/* Take back every slot the device has written out (interrupts off). */
static void reclaim_output(void)
{
	char *slot;

	while ((slot = virtqueue_get_buf(&con.vqs[VQ_OUTPUT], NULL))) {
		out_busy[(slot - out_slot[0]) / OUT_SLOT_SIZE] = 0;
		out_outstanding--;
	}
}

static void output_done(struct virtqueue *vq)
{
	(void)vq;
	reclaim_output();
	wake_up(&out_outstanding);
}

/*
 * Wait (interrupts off) for the output queue to give something back: as a
 * sleeper woken by the irq if we may sleep, else by polling the used ring.
 */
static void wait_output(u32 flags)
{
	if (may_sleep(flags)) {
		sleep_on(&out_outstanding, 0);
	} else {
		cpu_relax();
		reclaim_output();
	}
}

static int free_slot(void)
{
	int i;

	reclaim_output();
	for (i = 0; i < OUT_SLOTS; i++)
		if (!out_busy[i])
			return i;
	return -1;
}

void virtio_console_write(const char *s, unsigned int len)
{
	while (len) {
		u32 flags = local_irq_save();
		unsigned int n = len < OUT_SLOT_SIZE ? len : OUT_SLOT_SIZE;
		struct vbuf b;
		int i;

		while ((i = free_slot()) < 0)
			wait_output(flags);
		memcpy(out_slot[i], s, n);
		b.addr = out_slot[i];
		b.len = n;
		/* A slot per chain and fewer slots than descriptors: it fits. */
		if (virtqueue_add(&con.vqs[VQ_OUTPUT], &b, 1, 0, out_slot[i]) == 0) {
			out_busy[i] = 1;
			out_outstanding++;
			virtqueue_kick(&con.vqs[VQ_OUTPUT]);
		}
		local_irq_restore(flags);
		s += n;
		len -= n;
	}
}

/*
 * Until the Launcher has written everything out: before we power off (it
 * stops serving the queues when we go) and before an oops switches back to
 * emerg_wr (whose bytes would otherwise overtake queued ones).
 */
void virtio_console_flush(void)
{
	u32 flags = local_irq_save();
	unsigned int spins = 0;

	if (ready) {
		reclaim_output();
		while (out_outstanding && spins++ < 50000000) {
			/* A flush from an oops must not trust interrupts. */
			if (may_sleep(flags))
				sleep_on(&out_outstanding, 0);
			else
				cpu_relax();
			reclaim_output();
		}
	}
	local_irq_restore(flags);
}

/* --- input ----------------------------------------------------------------- */

static u32 fifo_room(void)
{
	return FIFO_SIZE - (fifo_head - fifo_tail);
}

/*
 * Put idle input buffers back on the ring while the FIFO could take every
 * posted buffer full (interrupts off).  Kick if we posted any.
 */
static void post_input(void)
{
	int i, posted = 0;

	for (i = 0; i < IN_BUFS; i++) {
		struct vbuf b = { in_buf[i], IN_BUF_SIZE };

		if (in_posted[i] || fifo_room() < (in_nr_posted + 1) * IN_BUF_SIZE)
			continue;
		if (virtqueue_add(&con.vqs[VQ_INPUT], &b, 0, 1, in_buf[i]))
			break;
		in_posted[i] = 1;
		in_nr_posted++;
		posted = 1;
	}
	if (posted)
		virtqueue_kick(&con.vqs[VQ_INPUT]);
}

/* irq: the Launcher filled input buffers; move the bytes into the FIFO. */
static void input_done(struct virtqueue *vq)
{
	char *buf;
	u32 len, i;

	while ((buf = virtqueue_get_buf(vq, &len))) {
		if (len > IN_BUF_SIZE)
			len = IN_BUF_SIZE;
		for (i = 0; i < len && fifo_room(); i++)
			fifo[fifo_head++ & (FIFO_SIZE - 1)] = buf[i];
		in_posted[(buf - in_buf[0]) / IN_BUF_SIZE] = 0;
		in_nr_posted--;
	}
	post_input();
	wake_up(fifo);
}

int console_input_ready(void)
{
	return ready && fifo_head != fifo_tail;
}

/*
 * Up to @len bytes of input, waiting (sleeping) until there is at least
 * one.  Whatever has arrived is returned at once: no lines, no editing.
 */
int console_read(char *buf, u32 len)
{
	u32 flags, n = 0;

	if (!ready)
		return -19;		/* ENODEV */
	if (!len)
		return 0;
	flags = local_irq_save();
	while (fifo_head == fifo_tail)
		sleep_on(fifo, 0);
	while (n < len && fifo_head != fifo_tail)
		buf[n++] = fifo[fifo_tail++ & (FIFO_SIZE - 1)];
	post_input();		/* room again: buffers may go back */
	local_irq_restore(flags);
	return n;
}

/* --- binding ----------------------------------------------------------------- */

int virtio_console_probe(const struct pci_device *pci)
{
	if (ready)
		return 1;	/* one console is all we need */
	if (virtio_start(&con, pci, "console", VIRTIO_CONSOLE_F_EMERG_WRITE))
		return -1;
	if (virtio_setup_vq(&con, VQ_INPUT, 64, input_done) ||
	    virtio_setup_vq(&con, VQ_OUTPUT, 64, output_done)) {
		virtio_fail(&con);
		return -1;
	}
	virtio_driver_ok(&con);
	{
		u32 flags = local_irq_save();

		post_input();
		local_irq_restore(flags);
	}
	/* From here on printk goes through the output queue. */
	ready = 1;
	return 0;
}
