/*
 * pci.h - PCI as an lguest 4.x Guest sees it: bus 0, type-1 config access,
 * and virtio devices described by vendor capabilities.
 */
#ifndef PUPPY_PCI_H
#define PUPPY_PCI_H

#include "lguest.h"

#define PCI_SLOTS		32
#define PCI_VENDOR_VIRTIO	0x1AF4
#define PCI_DEVICE_VIRTIO_BASE	0x1040	/* + the virtio device id */

/* Config-space registers we read. */
#define PCI_VENDOR_ID		0x00
#define PCI_DEVICE_ID		0x02
#define PCI_BAR0		0x10
#define PCI_CAPABILITY_LIST	0x34
#define PCI_INTERRUPT_LINE	0x3C

/* struct virtio_pci_cap: vndr, next, len, cfg_type, bar, pad[3], offset, length */
#define PCI_CAP_ID_VNDR		0x09
#define CAP_VNDR		0
#define CAP_NEXT		1
#define CAP_CFG_TYPE		3
#define CAP_BAR			4
#define CAP_OFFSET		8
#define CAP_LENGTH		12
#define CAP_NOTIFY_MULT		16	/* only in the NOTIFY capability */
#define CAP_PCI_CFG_DATA	16	/* only in the PCI_CFG capability */

#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG	3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG	5

/* Where each virtio structure lives inside BAR0 (offset, length). */
struct virtio_caps {
	u32 found;			/* bit n: capability type n seen (in BAR0) */
	u32 offset[6], length[6];	/* indexed by cfg_type */
	u32 notify_mult;
	unsigned int pci_cfg_pos;	/* config offset of the PCI_CFG capability */
};

/* One virtio function on bus 0. */
struct pci_device {
	unsigned int slot;
	u16 vendor, device;
	u8 irq;				/* INTERRUPT_LINE: irq n comes on vector 0x20 + n */
	u32 bar0;			/* guest-physical address of the MMIO window */
	struct virtio_caps caps;
};

u8 pci_read8(unsigned int slot, unsigned int reg);
u16 pci_read16(unsigned int slot, unsigned int reg);
u32 pci_read32(unsigned int slot, unsigned int reg);
void pci_write8(unsigned int slot, unsigned int reg, u8 v);
void pci_write32(unsigned int slot, unsigned int reg, u32 v);

int pci_virtio_caps(unsigned int slot, struct virtio_caps *caps);
int pci_scan(struct pci_device *devs, int max);

#endif /* PUPPY_PCI_H */
