/*
 * pci.c - finding virtio devices: a scan of PCI bus 0 over ports 0xCF8/0xCFC.
 */
#include "puppy.h"
#include "io.h"
#include "pci.h"

#define PCI_CONF_ADDR	0xCF8
#define PCI_CONF_DATA	0xCFC

/* Bus 0, function 0: enable bit, slot in bits 15:11, dword register. */
static void pci_select(unsigned int slot, unsigned int reg)
{
	outl(0x80000000u | (slot << 11) | (reg & ~3u), PCI_CONF_ADDR);
}

/* Narrow accesses pick their byte lane with the data port's offset. */
u8 pci_read8(unsigned int slot, unsigned int reg)
{
	pci_select(slot, reg);
	return inb(PCI_CONF_DATA + (reg & 3));
}

u16 pci_read16(unsigned int slot, unsigned int reg)
{
	pci_select(slot, reg);
	return inw(PCI_CONF_DATA + (reg & 2));
}

u32 pci_read32(unsigned int slot, unsigned int reg)
{
	pci_select(slot, reg);
	return inl(PCI_CONF_DATA);
}

void pci_write8(unsigned int slot, unsigned int reg, u8 v)
{
	pci_select(slot, reg);
	outb(v, PCI_CONF_DATA + (reg & 3));
}

void pci_write32(unsigned int slot, unsigned int reg, u32 v)
{
	pci_select(slot, reg);
	outl(v, PCI_CONF_DATA);
}

/*
 * Walk a device's capability list and note each virtio structure that lives
 * in BAR0 (the only BAR lguest gives a device), plus the PCI_CFG window.
 * The walk is bounded: a broken list must not hang us.  Returns 0 if the
 * common, notify and ISR structures were all found.
 */
int pci_virtio_caps(unsigned int slot, struct virtio_caps *caps)
{
	unsigned int pos, limit;
	const u32 needed = (1u << VIRTIO_PCI_CAP_COMMON_CFG) |
			   (1u << VIRTIO_PCI_CAP_NOTIFY_CFG) | (1u << VIRTIO_PCI_CAP_ISR_CFG);

	memset(caps, 0, sizeof(*caps));
	pos = pci_read8(slot, PCI_CAPABILITY_LIST);
	for (limit = 48; pos && limit; limit--) {
		pos &= ~3u;
		if (pci_read8(slot, pos + CAP_VNDR) == PCI_CAP_ID_VNDR) {
			u8 type = pci_read8(slot, pos + CAP_CFG_TYPE);
			u8 bar = pci_read8(slot, pos + CAP_BAR);

			if (type == VIRTIO_PCI_CAP_PCI_CFG && !caps->pci_cfg_pos) {
				caps->pci_cfg_pos = pos;
			} else if (type >= VIRTIO_PCI_CAP_COMMON_CFG && type <= VIRTIO_PCI_CAP_DEVICE_CFG &&
				   bar == 0 && !(caps->found & (1u << type))) {
				/* The first of each type is the one to use. */
				caps->found |= 1u << type;
				caps->offset[type] = pci_read32(slot, pos + CAP_OFFSET);
				caps->length[type] = pci_read32(slot, pos + CAP_LENGTH);
				if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
					caps->notify_mult = pci_read32(slot, pos + CAP_NOTIFY_MULT);
			}
		}
		pos = pci_read8(slot, pos + CAP_NEXT);
	}
	return (caps->found & needed) == needed ? 0 : -1;
}

/* tour:G.190 Finding the devices: a PCI scan over trapping port I/O
 * An lguest 4.x Guest has no firmware to tell it what hardware it has.  It
 * finds its devices as a PC kernel does: it writes a configuration address
 * (enable bit, bus, slot, register) to port 0xCF8 and reads the register
 * at 0xCFC.  Every one of those port I/Os leaves the Guest, and the
 * Launcher emulates it (§7.2): one virtio 1.0 device per slot, in the
 * order of its command line, each with vendor 0x1AF4, device 0x1040 + the
 * virtio id, its irq in INTERRUPT_LINE, one memory BAR (BAR0) and a chain
 * of vendor capabilities saying where in BAR0 the virtio structures
 * (common config, notify, ISR, device config) are.  Linux 4.9 scans the
 * bus the same way (type-1 configuration access) and its virtio-pci
 * driver walks the same capabilities; so did our early console.
 */

/*
 * Every virtio function on bus 0, in slot order (the console first).  An
 * empty slot reads as all ones; slot 0's host bridge has vendor 0.
 * Returns how many were found.
 */
int pci_scan(struct pci_device *devs, int max)
{
	unsigned int slot;
	int n = 0;

	for (slot = 0; slot < PCI_SLOTS && n < max; slot++) {
		u32 id = pci_read32(slot, PCI_VENDOR_ID);
		u16 vendor = id & 0xFFFF, device = id >> 16;
		struct pci_device *d = &devs[n];

		if (vendor != PCI_VENDOR_VIRTIO || device < PCI_DEVICE_VIRTIO_BASE ||
		    device > PCI_DEVICE_VIRTIO_BASE + 0x3F)
			continue;
		d->slot = slot;
		d->vendor = vendor;
		d->device = device;
		d->irq = pci_read8(slot, PCI_INTERRUPT_LINE);
		/* A 32-bit memory BAR: the low four bits are flags. */
		d->bar0 = pci_read32(slot, PCI_BAR0) & ~0xFu;
		if (pci_virtio_caps(slot, &d->caps))
			continue;	/* not a virtio 1.0 device we can drive */
		n++;
	}
	return n;
}
