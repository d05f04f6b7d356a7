/*
 * virtio_blk.c - the virtio block device: a disk as a queue of requests.
 *
 * One queue ("request").  Each request is a chain: a device-readable
 * header {type, ioprio, sector}, the data (readable by the device for a
 * write, writable for a read), and one writable status byte that the
 * device fills in last: 0 OK, 1 I/O error, 2 unsupported.  The capacity
 * (in 512-byte sectors) is in the device config; a read-only disk offers
 * the RO feature.  Behind it the Launcher does pread/pwrite/fdatasync on
 * a file.
 *
 * Our requests are synchronous: the caller sleeps until the device's irq
 * says the chain is back, then looks at the status byte.  The header and
 * status live on the caller's kernel stack, which is ordinary RAM in the
 * PAGE_OFFSET mapping, so the device can be given their physical address.
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"
#include "virtio.h"

#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1
#define VIRTIO_BLK_T_FLUSH	4
#define VIRTIO_BLK_S_OK		0
#define VIRTIO_BLK_S_UNSUPP	2
#define SECTOR_SIZE		512

/* Config: u64 capacity at 0, u32 size_max at 8, u32 seg_max at 12. */
#define BLK_CFG_CAPACITY	0

struct blk_header {
	u32 type;
	u32 ioprio;
	u64 sector;
};

struct blk_request {
	struct blk_header hdr;
	volatile int done;
	volatile u8 status;
};

static struct virtio_device blk;
static int present;
static u64 capacity;

int blk_present(void)
{
	return present;
}

u64 blk_capacity(void)
{
	return capacity;
}

int blk_read_only(void)
{
	return present && (blk.features & VIRTIO_BLK_F_RO);
}

/* irq: mark each finished request done and wake whoever waits for it. */
static void request_done(struct virtqueue *vq)
{
	struct blk_request *req;

	while ((req = virtqueue_get_buf(vq, NULL))) {
		req->done = 1;
		wake_up(req);
	}
	wake_up(vq);		/* descriptors are free again */
}

/* One request, start to finish.  The device's status byte, or -errno. */
static int do_request(u32 type, u64 sector, void *data, u32 len)
{
	struct virtqueue *vq = &blk.vqs[0];
	struct blk_request req;
	struct vbuf bufs[3];
	unsigned int out = 1, in = 0;
	u32 flags;

	req.hdr.type = type;
	req.hdr.ioprio = 0;
	req.hdr.sector = sector;
	req.done = 0;
	req.status = 0xFF;
	bufs[0].addr = &req.hdr;
	bufs[0].len = sizeof(req.hdr);
	if (len) {
		bufs[1].addr = data;
		bufs[1].len = len;
		if (type == VIRTIO_BLK_T_OUT)
			out++;
		else
			in++;
	}
	bufs[out + in].addr = (void *)&req.status;
	bufs[out + in].len = 1;
	in++;

	flags = local_irq_save();
	while (virtqueue_add(vq, bufs, out, in, &req))
		sleep_on(vq, 0);
	virtqueue_kick(vq);
	while (!req.done)
		sleep_on(&req, 0);
	local_irq_restore(flags);
	return req.status;
}

/*
 * Read or write @count sectors from @sector, to or from the kernel buffer
 * @buf.  The range is checked here: the Launcher treats a write past the
 * end of the disk as a broken driver and ends the Guest.
 */
int blk_rw(int write, u32 sector, void *buf, u32 count)
{
	int status;

	if (!present)
		return -19;			/* ENODEV */
	if (write && blk_read_only())
		return -30;			/* EROFS */
	if (!count || (u64)sector + count > capacity)
		return -22;			/* EINVAL */
	status = do_request(write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, sector, buf,
			    count * SECTOR_SIZE);
	return status == VIRTIO_BLK_S_OK ? 0 : -5;	/* EIO */
}

/* Make what we wrote durable: the Launcher fdatasyncs the file. */
int blk_flush(void)
{
	int status;

	if (!present)
		return -19;
	status = do_request(VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
	if (status == VIRTIO_BLK_S_UNSUPP)
		return -95;			/* EOPNOTSUPP */
	return status == VIRTIO_BLK_S_OK ? 0 : -5;
}

int virtio_blk_probe(const struct pci_device *pci)
{
	if (present)
		return 1;
	if (virtio_start(&blk, pci, "block", VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO))
		return -1;
	/* Two 32-bit halves: lguest's config_generation never changes. */
	capacity = virtio_config_read32(&blk, BLK_CFG_CAPACITY) |
		   (u64)virtio_config_read32(&blk, BLK_CFG_CAPACITY + 4) << 32;
	if (virtio_setup_vq(&blk, 0, 64, request_done)) {
		virtio_fail(&blk);
		return -1;
	}
	virtio_driver_ok(&blk);
	present = 1;
	return 0;
}
