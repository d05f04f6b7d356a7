/*
 * virtio_blk.c - the virtio block device: a disk as a queue of requests.
 *
 * One queue ("request"), synchronous requests (see do_request).  The
 * capacity (in 512-byte sectors) is in the device config; a read-only
 * disk offers the RO feature.  Behind it the Launcher does
 * pread/pwrite/fdatasync on a file.
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

/* tour:G.230 The block request: header, data, status byte
 * A virtio-blk request is three buffers: a header the device reads
 * {type: IN (read) or OUT (write), ioprio, sector}, the data (read by the
 * device for a write, written by it for a read), and one status byte the
 * device writes last (0 OK, 1 I/O error, 2 unsupported).  Header and
 * status live on this kernel stack, ordinary RAM under the PAGE_OFFSET
 * mapping, so __pa() gives the device their addresses.  The chain goes on
 * the ring and the device is kicked (virtio.c); then the caller sleeps
 * (sleep_on, sched.c) until the irq handler marks the request done, and
 * with nothing else to run the idle task HALTs: a waiting Guest costs the
 * Host nothing.  Code that may not sleep polls the used ring instead.
 */

/*
 * One request, start to finish.  The device's status byte, or -errno.
 */
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

/* tour:G.260 Back to the process
 * The irq handler (virtio.c) calls this for the request queue: each chain
 * the device finished is taken off the used ring, its request marked done
 * and its waiter woken.  The woken task runs again when the scheduler
 * picks it: do_request returns the status byte, bounce() copies the
 * sector out to the process's buffer, do_syscall leaves the result in
 * the frame's eax, and ret_from_trap and lguest_iret return to ring 3.
 * Counting the Guest's exits for one 512-byte read: the system call
 * (through an interrupt gate), the kick, the HALT while we waited (the
 * Host delivers the irq as it wakes us) and the ISR read; more if other
 * tasks ran meanwhile.  The 512 bytes themselves never crossed the Host.
 */
static void request_done(struct virtqueue *vq)
{
	struct blk_request *req;

	while ((req = virtqueue_get_buf(vq, NULL))) {
		req->done = 1;
		wake_up(req);
	}
	wake_up(vq);		/* descriptors are free again */
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
