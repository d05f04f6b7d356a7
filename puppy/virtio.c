/*
 * virtio.c - the virtio 1.0 PCI driver core: how a Guest drives lguest's
 * devices.  Every register access is MMIO of exactly the register's width
 * (io.h); the Launcher kills a Guest that gets the protocol wrong, with
 * "<dev>: bad driver: <why>".
 */
#include "puppy.h"
#include "io.h"
#include "irq.h"
#include "mm.h"
#include "sched.h"
#include "virtio.h"

/* The common configuration structure (virtio 1.0 section 4.1.4.3). */
#define COMMON_DFSELECT		0	/* u32 device_feature_select */
#define COMMON_DF		4	/* u32 device_feature */
#define COMMON_GFSELECT		8	/* u32 guest_feature_select */
#define COMMON_GF		12	/* u32 guest_feature */
#define COMMON_NUMQ		18	/* u16 num_queues */
#define COMMON_STATUS		20	/* u8 device_status */
#define COMMON_Q_SELECT		22	/* u16 queue_select */
#define COMMON_Q_SIZE		24	/* u16 queue_size */
#define COMMON_Q_ENABLE		28	/* u16 queue_enable */
#define COMMON_Q_NOFF		30	/* u16 queue_notify_off */
#define COMMON_Q_DESCLO		32	/* u32 pairs: low, then high half */
#define COMMON_Q_DESCHI		36
#define COMMON_Q_AVAILLO	40
#define COMMON_Q_AVAILHI	44
#define COMMON_Q_USEDLO		48
#define COMMON_Q_USEDHI		52
#define COMMON_MIN_LEN		56
/* msix_config (16) and queue_msix_vector (26) are never touched: lguest
 * has no MSI-X, and merely reading them is fatal. */

#define ISR_QUEUE		0x1	/* "a queue has used buffers" */

/* --- the handshake ------------------------------------------------------ */

static void set_status(struct virtio_device *vd, u8 status)
{
	writeb(status, vd->common + COMMON_STATUS);
}

static u8 get_status(struct virtio_device *vd)
{
	return readb(vd->common + COMMON_STATUS);
}

/* Is [offset, offset + len) of this structure inside the BAR0 page? */
static int in_page(const struct pci_device *pci, unsigned int type, u32 min_len)
{
	u32 off = pci->caps.offset[type], len = pci->caps.length[type];

	return (pci->caps.found & (1u << type)) && len >= min_len && off < PAGE_SIZE &&
	       len <= PAGE_SIZE - off;
}

/* tour:G.210 Bringing a virtio device up
 * Every lguest 4.x device is a virtio 1.0 device behind an emulated PCI
 * function (§8.4).  The driver's half of the conversation, in order, as
 * Linux 4.9's virtio_pci_modern does it:
 *
 *  1. Map the device's BAR0 page (ioremap) and find the common config,
 *     notify, ISR and device config structures in it (pci.c found them).
 *  2. The status handshake, one bit at a time: reset (0), ACKNOWLEDGE,
 *     DRIVER; read the device's 64 feature bits, accept the ones we want
 *     (never one it did not offer; VERSION_1 is a must); FEATURES_OK, and
 *     read the status back to see that the device agreed.
 *  3. For each virtqueue (virtio_setup_vq): select it, choose its size,
 *     give it the guest-physical addresses of its three rings (descriptor
 *     table, available ring, used ring) and enable it.
 *  4. DRIVER_OK (virtio_driver_ok), after the irq handler is in place and
 *     the irq unmasked: the Launcher starts serving the queues.
 *
 * Each register access is one MMIO exit to the Launcher, which checks it
 * against the protocol.  The rings themselves are ordinary Guest RAM:
 * from here on neither the Host nor the Launcher copies a request
 * anywhere, the Launcher reads and writes our memory where it lies.
 */

/*
 * Steps 1 and 2: map the device, reset it, and agree on features.  We ask
 * for @wanted (low 32 bits; the high word only carries VERSION_1) and get
 * what the device offers of it in vd->features.  0, or -1 with the device
 * left reset.
 */
int virtio_start(struct virtio_device *vd, const struct pci_device *pci, const char *name,
		 u32 wanted)
{
	volatile u8 *base;
	u32 lo, hi;

	memset(vd, 0, sizeof(*vd));
	vd->name = name;
	vd->pci = *pci;
	if (!in_page(pci, VIRTIO_PCI_CAP_COMMON_CFG, COMMON_MIN_LEN) ||
	    !in_page(pci, VIRTIO_PCI_CAP_NOTIFY_CFG, 2) || !in_page(pci, VIRTIO_PCI_CAP_ISR_CFG, 1) ||
	    (pci->bar0 & ~PAGE_MASK) || pci->irq >= PUPPY_NR_IRQS) {
		printk("puppy: virtio: %s: unusable BAR0 layout or irq\n", name);
		return -1;
	}
	base = ioremap(pci->bar0);
	if (!base)
		return -1;
	vd->common = base + pci->caps.offset[VIRTIO_PCI_CAP_COMMON_CFG];
	vd->notify_base = base + pci->caps.offset[VIRTIO_PCI_CAP_NOTIFY_CFG];
	vd->isr = base + pci->caps.offset[VIRTIO_PCI_CAP_ISR_CFG];
	if (in_page(pci, VIRTIO_PCI_CAP_DEVICE_CFG, 1)) {
		vd->config = base + pci->caps.offset[VIRTIO_PCI_CAP_DEVICE_CFG];
		vd->config_len = pci->caps.length[VIRTIO_PCI_CAP_DEVICE_CFG];
	}

	/* Reset, then "I see you" and "I can drive you". */
	set_status(vd, 0);
	set_status(vd, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(vd, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

	/* The device's features, 32 bits at a time. */
	writel(0, vd->common + COMMON_DFSELECT);
	lo = readl(vd->common + COMMON_DF);
	writel(1, vd->common + COMMON_DFSELECT);
	hi = readl(vd->common + COMMON_DF);
	if (!(hi & VIRTIO_F_VERSION_1_HI)) {
		/* A legacy (pre-1.0) device: its rules are not the ones we follow. */
		printk("puppy: virtio: %s: no VERSION_1\n", name);
		set_status(vd, 0);
		return -1;
	}

	/* Ours: only what was offered, and VERSION_1. */
	vd->features = lo & wanted;
	writel(0, vd->common + COMMON_GFSELECT);
	writel(vd->features, vd->common + COMMON_GF);
	writel(1, vd->common + COMMON_GFSELECT);
	writel(VIRTIO_F_VERSION_1_HI, vd->common + COMMON_GF);

	/* The device may still say no: FEATURES_OK only counts if it stays set. */
	set_status(vd, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	if (!(get_status(vd) & VIRTIO_STATUS_FEATURES_OK)) {
		printk("puppy: virtio: %s: features refused\n", name);
		set_status(vd, 0);
		return -1;
	}
	return 0;
}

/* Give up on a device half set up: a reset is the only legal way back. */
void virtio_fail(struct virtio_device *vd)
{
	set_status(vd, 0);
}

/* Device config: read-only for us, and any width is allowed. */
u8 virtio_config_read8(struct virtio_device *vd, unsigned int offset)
{
	if (!vd->config || offset >= vd->config_len)
		return 0;
	return readb(vd->config + offset);
}

u32 virtio_config_read32(struct virtio_device *vd, unsigned int offset)
{
	if (!vd->config || offset + 4 > vd->config_len)
		return 0;
	return readl(vd->config + offset);
}

/* --- step 3: a virtqueue ------------------------------------------------ */

/*
 * Where the three rings go in one block of pages: the descriptor table
 * (16-byte aligned: at the start of a page), the available ring (2-byte
 * aligned) straight after it, and the used ring at the next 4 bytes.
 * Both rings have a spare u16 at the end (the event index, unused here).
 */
static u32 avail_offset(unsigned int size)
{
	return 16 * size;
}

static u32 used_offset(unsigned int size)
{
	return (avail_offset(size) + 6 + 2 * size + 3) & ~3u;
}

static u32 ring_bytes(unsigned int size)
{
	return used_offset(size) + 6 + 8 * size;
}

int virtio_setup_vq(struct virtio_device *vd, unsigned int index, unsigned int max_size,
		    vq_callback_t callback)
{
	struct virtqueue *vq;
	unsigned int size, dev_size, i;
	u32 pa, notify_off;

	if (index >= VIRTIO_MAX_VQS || index >= readw(vd->common + COMMON_NUMQ))
		return -1;
	vq = &vd->vqs[index];
	writew(index, vd->common + COMMON_Q_SELECT);
	dev_size = readw(vd->common + COMMON_Q_SIZE);
	if (!dev_size)
		return -1;		/* no such queue */

	/* The largest power of two that suits both of us. */
	if (max_size > VQ_MAX_SIZE)
		max_size = VQ_MAX_SIZE;
	for (size = 1; size * 2 <= dev_size && size * 2 <= max_size; size *= 2)
		;

	/* Rings live in RAM the Launcher can reach: page allocator, zeroed
	 * (used->flags must start as 0), contiguous and page-aligned. */
	vq->ring_pages = PAGE_ALIGN(ring_bytes(size)) >> PAGE_SHIFT;
	pa = alloc_pages(vq->ring_pages);
	if (!pa)
		return -1;
	memset(__va(pa), 0, vq->ring_pages * PAGE_SIZE);
	vq->vdev = vd;
	vq->index = index;
	vq->size = size;
	vq->ring_pa = pa;
	vq->desc = __va(pa);
	vq->avail = __va(pa + avail_offset(size));
	vq->used = __va(pa + used_offset(size));
	vq->callback = callback;

	/* Free descriptors form a list through their next fields. */
	for (i = 0; i < size; i++)
		vq->desc[i].next = i + 1;
	vq->free_head = 0;
	vq->num_free = size;

	/* Tell the device: size, then the three guest-physical addresses
	 * (a 32-bit Guest's high halves are 0), then enable. */
	if (size != dev_size)
		writew(size, vd->common + COMMON_Q_SIZE);
	writel(pa, vd->common + COMMON_Q_DESCLO);
	writel(0, vd->common + COMMON_Q_DESCHI);
	writel(pa + avail_offset(size), vd->common + COMMON_Q_AVAILLO);
	writel(0, vd->common + COMMON_Q_AVAILHI);
	writel(pa + used_offset(size), vd->common + COMMON_Q_USEDLO);
	writel(0, vd->common + COMMON_Q_USEDHI);
	writew(1, vd->common + COMMON_Q_ENABLE);

	/* Where this queue's kicks go (lguest: one shared register). */
	notify_off = readw(vd->common + COMMON_Q_NOFF);
	vq->notify = (volatile u16 *)(vd->notify_base + notify_off * vd->pci.caps.notify_mult);
	if (index + 1 > vd->nvqs)
		vd->nvqs = index + 1;
	return 0;
}

/* --- the rings ----------------------------------------------------------- */

/* tour:G.240 A request on the ring: descriptors, the available ring, the kick
 * The request is a chain of descriptors, each a buffer's guest-physical
 * address, length and flags: device-readable buffers first, then
 * device-writable ones (WRITE), linked by NEXT.  They come from the
 * queue's free list.  The chain's head goes into the next slot of the
 * available ring, and only then, after a barrier, does avail->idx move
 * on: the device must never see an index before the slot it covers.
 *
 * The device sees nothing until the kick (virtqueue_kick, below): a
 * 16-bit write of the queue's index to its notify register, unless the
 * device has said in used->flags that it does not need one.  That write
 * is MMIO: the Guest stops, the Host hands the access to the Launcher,
 * and the Launcher wakes the thread that serves this queue and lets the
 * Guest run on (chapter D follows the request there).  The service thread
 * reads the chain out of our RAM, does the work (for the disk: pread or
 * pwrite on the image file), writes the result into our writable
 * buffers, and puts the head on the used ring.
 */

/*
 * Offer a chain: @out device-readable buffers, then @in device-writable
 * ones.  @token comes back from virtqueue_get_buf when the device is done.
 * -1 if there are not enough free descriptors (the caller waits and tries
 * again).
 */
int virtqueue_add(struct virtqueue *vq, const struct vbuf *bufs, unsigned int out,
		  unsigned int in, void *token)
{
	unsigned int n = out + in, k, i, head;
	u32 flags;

	if (!n || !token)
		return -1;
	flags = local_irq_save();
	if (vq->num_free < n) {
		local_irq_restore(flags);
		return -1;
	}
	head = i = vq->free_head;
	for (k = 0; k < n; k++) {
		struct vring_desc *d = &vq->desc[i];

		d->addr = __pa(bufs[k].addr);
		d->len = bufs[k].len;
		d->flags = (k >= out ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0);
		i = d->next;		/* the free list's next is the chain's next */
	}
	vq->free_head = i;
	vq->num_free -= n;
	vq->token[head] = token;

	/* The ring slot first, then (after a barrier) the index that shows it. */
	vq->avail->ring[vq->avail_idx & (vq->size - 1)] = head;
	mb();
	vq->avail->idx = ++vq->avail_idx;
	local_irq_restore(flags);
	return 0;
}

/* "Look at your queue": the queue's index, to the notify register. */
void virtqueue_kick(struct virtqueue *vq)
{
	mb();
	if (!(vq->used->flags & VRING_USED_F_NO_NOTIFY))
		writew(vq->index, vq->notify);
}

/*
 * The next chain the device has finished with: its token, and in @len the
 * bytes the device wrote into it.  Its descriptors go back on the free
 * list.  NULL if there is none.
 */
void *virtqueue_get_buf(struct virtqueue *vq, u32 *len)
{
	u32 flags = local_irq_save();
	unsigned int head, i, n = 1;
	volatile struct vring_used_elem *e;
	void *token;

	if (vq->last_used == vq->used->idx) {
		local_irq_restore(flags);
		return NULL;
	}
	mb();			/* the entry is read only after the index */
	e = &vq->used->ring[vq->last_used & (vq->size - 1)];
	head = e->id;
	if (len)
		*len = e->len;
	vq->last_used++;
	if (head >= vq->size || !vq->token[head]) {
		local_irq_restore(flags);
		printk("puppy: virtio: %s: device returned bad chain %u\n", vq->vdev->name, head);
		return NULL;
	}
	token = vq->token[head];
	vq->token[head] = NULL;

	/* Back onto the free list, whole chain at once. */
	for (i = head; vq->desc[i].flags & VRING_DESC_F_NEXT; i = vq->desc[i].next)
		n++;
	vq->desc[i].next = vq->free_head;
	vq->free_head = head;
	vq->num_free += n;
	local_irq_restore(flags);
	return token;
}

/* Ask the device not to interrupt for this queue (or to again): a hint. */
void virtqueue_no_interrupts(struct virtqueue *vq, int off)
{
	vq->avail->flags = off ? VRING_AVAIL_F_NO_INTERRUPT : 0;
	mb();
}

/*
 * Whether a driver waiting for its device may sleep: only if interrupts
 * were on when it was called, outside an interrupt handler.  Otherwise it
 * polls the used ring itself (the Launcher's threads run on regardless).
 */
int may_sleep(u32 irq_flags)
{
	return (irq_flags & X86_EFLAGS_IF) && !in_irq;
}

/* --- interrupts ---------------------------------------------------------- */

#define MAX_VIRTIO_DEVICES	16
static struct virtio_device *irq_devices[MAX_VIRTIO_DEVICES];
static unsigned int nr_irq_devices;

/* tour:G.250 The answer: the used ring and the interrupt
 * When the Launcher has put a chain on the used ring it sets bit 0 of the
 * device's ISR and raises the device's irq: it asks the Host to make the
 * irq pending (§4.7).  The Host delivers it the next time it is about to
 * run the Guest with interrupts enabled and the irq unmasked in
 * blocked_interrupts (or wakes the Guest from HALT to do so): a frame on
 * our stack, vector 0x20 + irq, through common_trap and do_trap to here.
 *
 * virtio_irq reads the ISR, which tells us why and clears it; then each
 * queue's callback looks at its used ring (virtqueue_get_buf, above,
 * reads the used entry only after the index, and returns the chain's
 * descriptors to the free list).  We look even if the ISR says nothing:
 * a poller may have taken the buffers already, and looking costs no exit.
 */
static void virtio_irq(unsigned int irq)
{
	unsigned int i, q;

	for (i = 0; i < nr_irq_devices; i++) {
		struct virtio_device *vd = irq_devices[i];

		if (vd->pci.irq != irq)
			continue;
		(void)readb(vd->isr);
		for (q = 0; q < vd->nvqs; q++) {
			struct virtqueue *vq = &vd->vqs[q];

			if (vq->callback && vq->last_used != vq->used->idx)
				vq->callback(vq);
		}
	}
}

/*
 * Step 4.  The handler and the unmasked irq come first, so no interrupt
 * can find us unprepared; the Launcher starts serving at DRIVER_OK.
 */
void virtio_driver_ok(struct virtio_device *vd)
{
	if (nr_irq_devices < MAX_VIRTIO_DEVICES)
		irq_devices[nr_irq_devices++] = vd;
	request_irq(vd->pci.irq, virtio_irq);
	irq_unmask(vd->pci.irq);
	set_status(vd, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		   VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

/* --- probing -------------------------------------------------------------- */

static const char *const virtio_names[] = {
	[VIRTIO_ID_NET] = "net", [VIRTIO_ID_BLOCK] = "block",
	[VIRTIO_ID_CONSOLE] = "console", [VIRTIO_ID_RNG] = "rng",
};

/*
 * Scan the bus and give each device its driver, the console first (it is
 * slot 1): from the moment it binds, printk goes through its queue.  Each
 * driver takes one device of its kind (a probe returns 1 for any more).
 */
void virtio_probe_all(void)
{
	static struct pci_device devs[PCI_SLOTS];
	int n = pci_scan(devs, PCI_SLOTS), i;

	for (i = 0; i < n; i++) {
		const struct pci_device *d = &devs[i];
		unsigned int id = d->device - PCI_DEVICE_VIRTIO_BASE;
		const char *name = id < sizeof(virtio_names) / sizeof(virtio_names[0]) && virtio_names[id]
				   ? virtio_names[id] : "unknown";
		int err;

		switch (id) {
		case VIRTIO_ID_CONSOLE:
			err = virtio_console_probe(d);
			break;
		case VIRTIO_ID_BLOCK:
			err = virtio_blk_probe(d);
			break;
		case VIRTIO_ID_RNG:
			err = virtio_rng_probe(d);
			break;
		case VIRTIO_ID_NET:
			err = virtio_net_probe(d);
			break;
		default:
			err = 2;
			break;
		}
		printk("puppy: virtio: slot %u: %s, irq %u, BAR0 0x%x%s\n", d->slot, name, d->irq,
		       d->bar0, err == 1 ? " (a second one: not used)" : err == 2 ? " (no driver)"
		       : err < 0 ? " (failed)" : "");
	}
}
