/*
 * page_alloc.c - the Guest's physical memory: a bitmap of 4 KiB pages.
 *
 * The Launcher gives us RAM from guest-physical 0 up to the size in
 * e820_map[0]; nothing else about memory is virtual for a Guest.  Everything
 * between the end of the kernel image and the end of the PAGE_OFFSET
 * mapping head.S built (RAM, but at most 64 MiB) is ours to hand out, and
 * since that mapping covers it, the kernel can reach any page it allocates
 * at __va(page) in every address space.  Page tables, kernel stacks and user
 * pages all come from here.
 *
 * One bit per page, set = in use.  First fit: simple, and with a few hundred
 * pages in use the scan is short.
 */
#include "puppy.h"
#include "mm.h"
#include "irq.h"

#define MAX_PAGES	(0x4000000 / PAGE_SIZE)		/* 64 MiB */

static u32 bitmap[MAX_PAGES / 32];
static u32 first_pfn, end_pfn;
static unsigned int free_count;
u32 lowmem_limit;

static int page_used(u32 pfn)
{
	return bitmap[pfn / 32] & (1u << (pfn % 32));
}

static void mark(u32 pfn, int used)
{
	if (used)
		bitmap[pfn / 32] |= 1u << (pfn % 32);
	else
		bitmap[pfn / 32] &= ~(1u << (pfn % 32));
}

/* Pages [first_free_pa, limit_pa) are free; everything else never is. */
void page_alloc_init(u32 first_free_pa, u32 limit_pa)
{
	lowmem_limit = limit_pa;
	first_pfn = PAGE_ALIGN(first_free_pa) >> PAGE_SHIFT;
	end_pfn = limit_pa >> PAGE_SHIFT;
	free_count = end_pfn > first_pfn ? end_pfn - first_pfn : 0;
}

/*
 * @n physically contiguous pages (kernel stacks want two), as a physical
 * address; 0 if there are none.  Interrupts are off while we look, so an
 * allocation can never be handed out twice.
 */
u32 alloc_pages(unsigned int n)
{
	u32 flags = local_irq_save();
	u32 pfn, run = 0, i;

	for (pfn = first_pfn; pfn < end_pfn; pfn++) {
		run = page_used(pfn) ? 0 : run + 1;
		if (run == n) {
			u32 start = pfn + 1 - n;

			for (i = start; i <= pfn; i++)
				mark(i, 1);
			free_count -= n;
			local_irq_restore(flags);
			return start << PAGE_SHIFT;
		}
	}
	local_irq_restore(flags);
	return 0;
}

void free_pages(u32 pa, unsigned int n)
{
	u32 flags = local_irq_save();
	u32 pfn = pa >> PAGE_SHIFT, i;

	for (i = pfn; i < pfn + n; i++) {
		/* Freeing what was never allocated would corrupt the count. */
		if (i < first_pfn || i >= end_pfn || !page_used(i))
			continue;
		mark(i, 0);
		free_count++;
	}
	local_irq_restore(flags);
}

void *get_zeroed_page(void)
{
	u32 pa = alloc_pages(1);

	if (!pa)
		return NULL;
	return memset(__va(pa), 0, PAGE_SIZE);
}

void free_page(void *va)
{
	free_pages(__pa(va), 1);
}

unsigned int nr_free_pages(void)
{
	return free_count;
}
