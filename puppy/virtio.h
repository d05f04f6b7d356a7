/*
 * virtio.h - the virtio 1.0 driver core: devices, split virtqueues, and
 * the small drivers built on them (console, block, rng, net).
 */
#ifndef PUPPY_VIRTIO_H
#define PUPPY_VIRTIO_H

#include "lguest.h"
#include "pci.h"

/* Virtio device ids (device id 0x1040 + id on PCI). */
#define VIRTIO_ID_NET		1
#define VIRTIO_ID_BLOCK		2
#define VIRTIO_ID_CONSOLE	3
#define VIRTIO_ID_RNG		4

/* Device status bits, set one step at a time. */
#define VIRTIO_STATUS_ACKNOWLEDGE	1
#define VIRTIO_STATUS_DRIVER		2
#define VIRTIO_STATUS_DRIVER_OK		4
#define VIRTIO_STATUS_FEATURES_OK	8

/* Feature bits we know of (VERSION_1 is bit 32: bit 0 of the high word). */
#define VIRTIO_F_VERSION_1_HI		(1u << 0)
#define VIRTIO_CONSOLE_F_EMERG_WRITE	(1u << 2)
#define VIRTIO_BLK_F_SEG_MAX		(1u << 2)
#define VIRTIO_BLK_F_RO			(1u << 5)
#define VIRTIO_NET_F_MAC		(1u << 5)

/* The split virtqueue (virtio 1.0 section 2.4), as it lies in our RAM. */
#define VRING_DESC_F_NEXT	1
#define VRING_DESC_F_WRITE	2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY	1

struct vring_desc {
	u64 addr;		/* guest-physical */
	u32 len;
	u16 flags;
	u16 next;
};

struct vring_avail {
	u16 flags;
	u16 idx;
	u16 ring[];
};

struct vring_used_elem {
	u32 id;			/* head of the chain */
	u32 len;		/* bytes the device wrote into it */
};

struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[];
};

#define VQ_MAX_SIZE	256
#define VIRTIO_MAX_VQS	2

struct virtio_device;
struct virtqueue;
typedef void (*vq_callback_t)(struct virtqueue *vq);

struct virtqueue {
	struct virtio_device *vdev;
	unsigned int index;
	unsigned int size;			/* a power of two */
	struct vring_desc *desc;		/* the three rings, in one block ... */
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	u32 ring_pa;				/* ... of contiguous pages at this address */
	unsigned int ring_pages;
	volatile u16 *notify;			/* where a kick is written */
	unsigned int num_free, free_head;	/* free descriptors, linked by next */
	u16 avail_idx;				/* our copy of avail->idx */
	u16 last_used;				/* the used entries we have taken */
	vq_callback_t callback;			/* in irq context, when used grows */
	void *token[VQ_MAX_SIZE];		/* the caller's cookie, per chain head */
};

struct virtio_device {
	const char *name;
	struct pci_device pci;
	volatile u8 *common, *isr, *config;	/* in the BAR0 page (ioremap) */
	volatile u8 *notify_base;
	u32 config_len;
	u32 features;				/* accepted, low word */
	unsigned int nvqs;
	struct virtqueue vqs[VIRTIO_MAX_VQS];
};

/* One buffer of a chain: a kernel address (in the PAGE_OFFSET mapping). */
struct vbuf {
	void *addr;
	u32 len;
};

int virtio_start(struct virtio_device *vd, const struct pci_device *pci, const char *name,
		 u32 wanted_features);
int virtio_setup_vq(struct virtio_device *vd, unsigned int index, unsigned int max_size,
		    vq_callback_t callback);
void virtio_driver_ok(struct virtio_device *vd);
void virtio_fail(struct virtio_device *vd);
u8 virtio_config_read8(struct virtio_device *vd, unsigned int offset);
u32 virtio_config_read32(struct virtio_device *vd, unsigned int offset);

int virtqueue_add(struct virtqueue *vq, const struct vbuf *bufs, unsigned int out,
		  unsigned int in, void *token);
void virtqueue_kick(struct virtqueue *vq);
void *virtqueue_get_buf(struct virtqueue *vq, u32 *len);
void virtqueue_no_interrupts(struct virtqueue *vq, int off);

/* Bring up every device on the bus (virtio_probe.c); prints one line each. */
void virtio_probe_all(void);

/* Whether the caller may sleep for a device (else it must poll). */
int may_sleep(u32 irq_flags);

/* The drivers' interfaces, for the system calls. */
int console_read(char *buf, u32 len);			/* blocks for >= 1 byte */
int console_input_ready(void);

int blk_present(void);
u64 blk_capacity(void);					/* in 512-byte sectors */
int blk_read_only(void);
int blk_rw(int write, u32 sector, void *buf, u32 count);	/* 0 or -errno */
int blk_flush(void);

int rng_present(void);
int rng_read(void *buf, u32 len);			/* bytes, or -errno */

int net_present(void);
void net_mac(u8 mac[6]);
int net_send(const void *frame, u32 len);		/* 0 or -errno */
int net_recv(void *frame, u32 max, u32 timeout_ms);	/* length, 0 on timeout */

/* Driver entry points for virtio_probe.c. */
int virtio_console_probe(const struct pci_device *pci);
int virtio_blk_probe(const struct pci_device *pci);
int virtio_rng_probe(const struct pci_device *pci);
int virtio_net_probe(const struct pci_device *pci);

#endif /* PUPPY_VIRTIO_H */
