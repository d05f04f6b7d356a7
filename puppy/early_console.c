/*
 * early_console.c - lguest 4.x's emergency console, the Guest's first
 * words, and printk on top of it.
 */
#include "puppy.h"
#include "pci.h"
#include "format.h"

#define CONSOLE_SLOT	1
#define VIRTIO_CONSOLE_PCI_ID	0x10431AF4	/* device 0x1043, vendor 0x1AF4 */

/* struct virtio_console_config: cols, rows, max_nr_ports, then emerg_wr. */
#define VIRTIO_CONSOLE_EMERG_WR	8
#define VIRTIO_CONSOLE_CFG_MIN	12

static unsigned int pci_cfg_cap;	/* 0 = no console: output is dropped */
static u32 device_cfg_offset;		/* where the console config is in BAR0 */

/* tour:G.50 The first words: emerg_wr, through the PCI configuration window
 * Right after NEW_PGTABLE, puppy_main wants to print, long before any
 * virtio driver could set up queues.  lguest 4.x devices are virtio 1.0
 * devices on an emulated PCI bus, the console always in slot 1, and the
 * console's config space has an "emerg_wr" register (offset 8): every byte
 * written there goes straight to the Launcher's stdout.  We reach it the
 * slow, simple way, through the virtio PCI_CFG capability, a window onto
 * BAR0 that lives in PCI configuration space: point the window at
 * emerg_wr, then write the character through it (§7.2).  Each
 * configuration access is two port I/Os (address to 0xCF8, data at 0xCFC)
 * and each port I/O is privileged at ring 1: it traps to the Host (a #GP
 * on real hardware, the emulator's port hook here, §4.3), which hands it
 * to the Launcher to emulate.  That is 8 exits per character.  Linux
 * 4.9 does exactly this for its early console, which is why its first
 * 84 lines are slow to print; when its virtio console driver binds, it
 * moves to the output queue, and so does puppy (virtio_console.c),
 * keeping emerg_wr for oopses.
 */

/*
 * Find the console and the two capabilities we need (pci.c walks
 * the list).  0 on success; on failure printing silently does nothing,
 * as in Linux.
 */
int early_console_init(void)
{
	struct virtio_caps caps;

	if (pci_read32(CONSOLE_SLOT, 0) != VIRTIO_CONSOLE_PCI_ID)
		return -1;
	pci_virtio_caps(CONSOLE_SLOT, &caps);

	/* emerg_wr is the u32 at offset 8 of the console config. */
	if (!(caps.found & (1u << VIRTIO_PCI_CAP_DEVICE_CFG)) || !caps.pci_cfg_pos ||
	    caps.length[VIRTIO_PCI_CAP_DEVICE_CFG] < VIRTIO_CONSOLE_CFG_MIN)
		return -1;

	device_cfg_offset = caps.offset[VIRTIO_PCI_CAP_DEVICE_CFG];
	pci_cfg_cap = caps.pci_cfg_pos;
	return 0;
}

/*
 * One character: aim the PCI_CFG window at BAR0's emerg_wr (bar 0, 4 bytes,
 * at the device config's offset + 8), then write through it.  The window is
 * set up again for every character, as the original does.
 */
static void emerg_wr(unsigned char c)
{
	pci_write8(CONSOLE_SLOT, pci_cfg_cap + CAP_BAR, 0);
	pci_write32(CONSOLE_SLOT, pci_cfg_cap + CAP_LENGTH, 4);
	pci_write32(CONSOLE_SLOT, pci_cfg_cap + CAP_OFFSET,
		    device_cfg_offset + VIRTIO_CONSOLE_EMERG_WR);
	pci_write32(CONSOLE_SLOT, pci_cfg_cap + CAP_PCI_CFG_DATA, c);
}

void early_console_write(const char *s, unsigned int len)
{
	if (!pci_cfg_cap)
		return;
	while (len--)
		emerg_wr((unsigned char)*s++);
}

/*
 * Where printk's bytes go: the virtio console's output queue once its
 * driver is up (virtio_console.c), emerg_wr before that -- and again after
 * an oops, when the queue and the interrupts it needs can no longer be
 * trusted.
 */
static int emergency;

void console_emergency(void)
{
	if (!emergency && virtio_console_ready())
		virtio_console_flush();	/* what was queued comes out first */
	emergency = 1;
}

/* "\n" goes out as it is: the Launcher's terminal does the rest. */
void console_write(const char *s, unsigned int len)
{
	if (!emergency && virtio_console_ready())
		virtio_console_write(s, len);
	else
		early_console_write(s, len);
}

int puts(const char *s)
{
	unsigned int len = strlen(s);

	console_write(s, len);
	console_write("\n", 1);
	return len + 1;
}

/* --- printk: the shared formatter (format.c), aimed at the console --- */

/*
 * Each call formats into a buffer on its own stack, so an oops printed from
 * a trap handler does not reuse the buffer of a printk it interrupted.
 */
int vprintk(const char *fmt, va_list ap)
{
	char buf[128];
	struct sink out = { buf, sizeof(buf), 0, console_write };
	int count = vformat(&out, fmt, ap);

	console_write(out.buf, out.len);
	return count;
}

int printk(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vprintk(fmt, ap);
	va_end(ap);
	return n;
}

/* Format into @buf (always NUL-terminated if @size > 0), like snprintf. */
int snprintk(char *buf, size_t size, const char *fmt, ...)
{
	struct sink out = { buf, size ? size - 1 : 0, 0, NULL };
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vformat(&out, fmt, ap);
	va_end(ap);
	if (size)
		buf[out.len] = '\0';
	return n;
}
