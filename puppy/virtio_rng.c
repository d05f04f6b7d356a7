/*
 * virtio_rng.c - the virtio entropy device: the simplest virtio device.
 *
 * One queue ("input") and no configuration: the driver offers an empty,
 * device-writable buffer, and the device gives it back full of random
 * bytes (the Launcher reads them from the host's urandom).  The used
 * length says how many.
 */
#include "puppy.h"
#include "irq.h"
#include "sched.h"
#include "virtio.h"

struct rng_request {
	volatile int done;
	u32 len;
};

static struct virtio_device rng;
static int present;

int rng_present(void)
{
	return present;
}

static void rng_done(struct virtqueue *vq)
{
	struct rng_request *req;
	u32 len;

	while ((req = virtqueue_get_buf(vq, &len))) {
		req->len = len;
		req->done = 1;
		wake_up(req);
	}
	wake_up(vq);
}

/* Fill @buf (kernel memory) with up to @len random bytes; how many. */
int rng_read(void *buf, u32 len)
{
	struct virtqueue *vq = &rng.vqs[0];
	struct rng_request req = { 0, 0 };
	struct vbuf b = { buf, len };
	u32 flags;

	if (!present)
		return -19;		/* ENODEV */
	if (!len)
		return 0;
	flags = local_irq_save();
	while (virtqueue_add(vq, &b, 0, 1, &req))
		sleep_on(vq, 0);
	virtqueue_kick(vq);
	while (!req.done)
		sleep_on(&req, 0);
	local_irq_restore(flags);
	return req.len < len ? req.len : len;
}

int virtio_rng_probe(const struct pci_device *pci)
{
	if (present)
		return 1;
	if (virtio_start(&rng, pci, "rng", 0))
		return -1;
	if (virtio_setup_vq(&rng, 0, 16, rng_done)) {
		virtio_fail(&rng);
		return -1;
	}
	virtio_driver_ok(&rng);
	present = 1;
	return 0;
}
