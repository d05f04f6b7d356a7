/*
 * virtio_net.c - the virtio network device: Ethernet frames over two queues.
 *
 * Queue 0 ("rx") holds empty buffers the device fills with incoming
 * frames; queue 1 ("tx") takes outgoing ones.  Every packet, both ways,
 * starts with a 12-byte virtio_net_hdr (the VERSION_1 layout) describing
 * checksum and segmentation offloads: we negotiate none, so ours is all
 * zeros and the one the device puts in front of received frames can be
 * skipped.  With the MAC feature the device config tells us our address.
 * Behind the device the Launcher has a tap interface or, with
 * --net=udp:..., a UDP socket to another Launcher: two Guests on one wire.
 *
 * Received frames wait in their rx buffers, in arrival order, until
 * net_recv takes them; then the buffer goes back on the ring.
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"
#include "virtio.h"

#define VQ_RX		0
#define VQ_TX		1
#define NET_HDR_LEN	12
#define ETH_MAX_FRAME	1514		/* without the FCS, which nobody sends us */
#define ETH_MIN_FRAME	14
#define RX_BUFS		16		/* a power of two */
#define RX_BUF_SIZE	(NET_HDR_LEN + 1526)

struct tx_request {
	volatile int done;
};

static struct virtio_device net;
static int present;
static u8 mac[6];
static const u8 zero_header[NET_HDR_LEN];

static u8 rx_buf[RX_BUFS][RX_BUF_SIZE];
static struct { unsigned int buf; u32 len; } rx_ready[RX_BUFS];
static u32 rx_head, rx_tail;		/* free-running: frames waiting */

int net_present(void)
{
	return present;
}

void net_mac(u8 out[6])
{
	memcpy(out, mac, 6);
}

/* An empty rx buffer back on the ring (interrupts off). */
static void post_rx(unsigned int i)
{
	struct vbuf b = { rx_buf[i], RX_BUF_SIZE };

	virtqueue_add(&net.vqs[VQ_RX], &b, 0, 1, rx_buf[i]);
}

/* irq: frames arrived; queue them for net_recv. */
static void rx_done(struct virtqueue *vq)
{
	u8 *buf;
	u32 len;

	while ((buf = virtqueue_get_buf(vq, &len))) {
		unsigned int i = (buf - rx_buf[0]) / RX_BUF_SIZE;

		if (len < NET_HDR_LEN + ETH_MIN_FRAME || len > RX_BUF_SIZE) {
			post_rx(i);		/* a runt: recycle it at once */
			virtqueue_kick(vq);
			continue;
		}
		rx_ready[rx_head & (RX_BUFS - 1)].buf = i;
		rx_ready[rx_head & (RX_BUFS - 1)].len = len - NET_HDR_LEN;
		rx_head++;
	}
	wake_up(rx_ready);
}

static void tx_done(struct virtqueue *vq)
{
	struct tx_request *req;

	while ((req = virtqueue_get_buf(vq, NULL))) {
		req->done = 1;
		wake_up(req);
	}
	wake_up(vq);
}

/*
 * The next received frame (Ethernet header onwards) into @frame, waiting
 * up to @timeout_ms for one.  Its length (cut to @max), or 0 if none came.
 */
int net_recv(void *frame, u32 max, u32 timeout_ms)
{
	u32 flags, deadline, len = 0;

	if (!present)
		return -19;		/* ENODEV */
	if (timeout_ms > 1000000000u)
		timeout_ms = 1000000000u;	/* keeps the deadline comparable */
	deadline = jiffies + (timeout_ms + 1000 / HZ - 1) / (1000 / HZ);
	flags = local_irq_save();
	while (rx_head == rx_tail) {
		int left = (int)(deadline - jiffies);

		if (left <= 0)
			break;
		sleep_on(rx_ready, left);
	}
	if (rx_head != rx_tail) {
		unsigned int i = rx_ready[rx_tail & (RX_BUFS - 1)].buf;

		len = rx_ready[rx_tail & (RX_BUFS - 1)].len;
		rx_tail++;
		if (len > max)
			len = max;
		memcpy(frame, rx_buf[i] + NET_HDR_LEN, len);
		post_rx(i);
		virtqueue_kick(&net.vqs[VQ_RX]);
	}
	local_irq_restore(flags);
	return len;
}

/* Send one frame (kernel memory): header and frame, two readable buffers. */
int net_send(const void *frame, u32 len)
{
	struct virtqueue *vq = &net.vqs[VQ_TX];
	struct tx_request req = { 0 };
	struct vbuf bufs[2] = { { (void *)zero_header, NET_HDR_LEN }, { (void *)frame, len } };
	u32 flags;

	if (!present)
		return -19;
	if (len < ETH_MIN_FRAME || len > ETH_MAX_FRAME)
		return -22;		/* EINVAL */
	flags = local_irq_save();
	while (virtqueue_add(vq, bufs, 2, 0, &req))
		sleep_on(vq, 0);
	virtqueue_kick(vq);
	while (!req.done)
		sleep_on(&req, 0);
	local_irq_restore(flags);
	return 0;
}

int virtio_net_probe(const struct pci_device *pci)
{
	unsigned int i;
	u32 flags;

	if (present)
		return 1;
	if (virtio_start(&net, pci, "net", VIRTIO_NET_F_MAC))
		return -1;
	/* Without MAC a driver makes an address up; ours says where from. */
	for (i = 0; i < 6; i++)
		mac[i] = (net.features & VIRTIO_NET_F_MAC) ? virtio_config_read8(&net, i)
							   : (u8[]){ 0x02, 0, 0, 0, 0, 1 }[i];
	if (virtio_setup_vq(&net, VQ_RX, 64, rx_done) || virtio_setup_vq(&net, VQ_TX, 64, tx_done)) {
		virtio_fail(&net);
		return -1;
	}
	virtio_driver_ok(&net);
	/* Every rx buffer goes on the ring at once, with one kick. */
	flags = local_irq_save();
	for (i = 0; i < RX_BUFS; i++)
		post_rx(i);
	virtqueue_kick(&net.vqs[VQ_RX]);
	local_irq_restore(flags);
	present = 1;
	return 0;
}
