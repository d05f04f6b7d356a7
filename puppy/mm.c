/*
 * mm.c - address spaces: one page directory per process, kernel shared.
 *
 * The Host assumes that everything above kernel_address (PAGE_OFFSET) is
 * mapped the same in every page directory the Guest gives it: it keeps that
 * part of its shadows when it switches, and applies a kernel SET_PTE to all
 * of them.  So a new directory starts as a copy of the boot directory's
 * kernel entries -- the very same page tables, shared -- and only its user
 * half is its own.  puppy never adds kernel page tables after boot (the
 * PAGE_OFFSET mapping covers all the RAM it uses), so the copies never go
 * stale.
 *
 * Changes to a user half go through set_pte_at/set_pgd (pgtable.c), and
 * tearing one down is done like a big munmap: in lazy MMU mode, so that
 * the SET_PTE/SET_PGD calls reach the Host in batches.
 */
#include "puppy.h"
#include "mm.h"

extern char _end[];

#define MAX_LOWMEM	0x4000000u	/* head.S maps at most 64 MiB */

/*
 * Device windows (virtio BAR0 pages) are not RAM, so PAGE_OFFSET does not
 * reach them: they get kernel addresses of their own here, in one page
 * table made at boot.  It must exist before the first process does, since
 * each new directory copies the kernel's directory entries once.
 */
#define IOREMAP_BASE	0xFF000000u	/* 4 MiB, just under the Switcher's */
#define PTE_KERNEL	(_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)
#define _PAGE_PWT	0x008
#define _PAGE_PCD	0x010		/* a device: not cacheable */

static pte_t *ioremap_table;
static unsigned int ioremap_used;

/*
 * Take over the memory head.S left us.  Its identity mapping of low memory
 * (needed only while head.S ran at physical addresses) goes, so that the
 * boot directory is a pure kernel directory, like Linux's swapper_pg_dir,
 * and a stray NULL pointer in the kernel faults instead of reading RAM.
 */
void mm_init(u64 ram)
{
	unsigned int i;

	page_alloc_init(__pa(_end), ram < MAX_LOWMEM ? (u32)ram : MAX_LOWMEM);

	lazy_mmu_enter();
	for (i = 0; i < KERNEL_PGD_START; i++)
		if (boot_pgdir[i] & _PAGE_PRESENT)
			set_pgd(boot_pgdir, i, 0);
	ioremap_table = get_zeroed_page();
	if (ioremap_table)
		set_pmd(kernel_pmd(IOREMAP_BASE), __pa(ioremap_table) | PTE_KERNEL);
	lazy_mmu_leave();
}

/* tour:G.200 Reaching a device: ioremap, and MMIO that is never RAM
 * A device's registers live in its BAR0 page, a guest-physical address
 * above the end of RAM, which the PAGE_OFFSET mapping does not cover.
 * ioremap gives such a page a kernel address of its own, like Linux's,
 * with a kernel SET_PTE (which the Host applies to every shadow it keeps).
 * A PTE pointing outside RAM is allowed only for a device window, and the
 * Host never backs it with memory: every load or store through it leaves
 * the Guest and goes to the Launcher's device model as MMIO.  In the
 * original the shadow PTE stays empty, the access page-faults and the
 * Launcher decodes the instruction; here the emulator calls out for each
 * access to an MMIO region (§7.3).  That is why io.h spells out each
 * access as a single mov of exactly the register's width.
 */
void *ioremap(u32 pa)
{
	u32 va;

	if (!ioremap_table || ioremap_used == PTRS_PER_PTE)
		return NULL;
	va = IOREMAP_BASE + ioremap_used * PAGE_SIZE;
	set_pte_at(&init_mm, va, &ioremap_table[ioremap_used],
		   (pa & PAGE_MASK) | PTE_KERNEL | _PAGE_PCD | _PAGE_PWT);
	ioremap_used++;
	return (void *)(va + (pa & ~PAGE_MASK));
}

/* A new address space: an empty user half and the shared kernel half. */
int mm_create(struct mm *mm)
{
	mm->pgd = get_zeroed_page();
	if (!mm->pgd)
		return -1;
#ifdef CONFIG_PAE
	{
		/* The user gigabytes' PMDs, together, and the kernel's shared one. */
		u32 pa = alloc_pages(KERNEL_PGD_START);
		unsigned int i;

		if (!pa) {
			free_page(mm->pgd);
			return -1;
		}
		mm->pmd = __va(pa);
		memset(mm->pmd, 0, KERNEL_PGD_START * PAGE_SIZE);
		for (i = 0; i < KERNEL_PGD_START; i++)
			mm->pgd[i] = (pa + i * PAGE_SIZE) | _PAGE_PRESENT;
		mm->pgd[PDPT_KERNEL] = boot_pgdir[PDPT_KERNEL];
	}
#else
	mm->pmd = mm->pgd;
	/* Not the Switcher's slot: the Host fills that in itself. */
	memcpy(mm->pgd + KERNEL_PGD_START, boot_pgdir + KERNEL_PGD_START,
	       (SWITCHER_PGD - KERNEL_PGD_START) * sizeof(pte_t));
#endif
	mm->start_brk = mm->brk = 0;
	return 0;
}

/* The PTE slot for a user @vaddr, or NULL if it has no page table. */
pte_t *lookup_user_pte(struct mm *mm, u32 vaddr)
{
	pte_t pde;

	if (vaddr >= USER_TOP)
		return NULL;
	pde = mm->pmd[vaddr >> PMD_SHIFT];
	if (!(pde & _PAGE_PRESENT))
		return NULL;
	return (pte_t *)__va(pde & PAGE_MASK) + ((vaddr >> PAGE_SHIFT) & (PTRS_PER_PTE - 1));
}

/* The same, making the page table if there is none yet (SET_PGD/SET_PMD). */
static pte_t *alloc_user_pte(struct mm *mm, u32 vaddr)
{
	pte_t *pmdp = &mm->pmd[vaddr >> PMD_SHIFT];

	if (!(*pmdp & _PAGE_PRESENT)) {
		pte_t *table = get_zeroed_page();

		if (!table)
			return NULL;
		set_pmd(pmdp, __pa(table) | _PAGE_TABLE);
	}
	return lookup_user_pte(mm, vaddr);
}

/*
 * Give user page @vaddr a zeroed page with PTE @flags and return the
 * kernel's address for it (NULL: out of memory).  A page that is already
 * mapped (two ELF segments sharing one) is kept, made writable if either
 * segment is writable and executable if either is code.
 */
void *map_user_page(struct mm *mm, u32 vaddr, pte_t flags)
{
	pte_t *ptep = alloc_user_pte(mm, vaddr);
	void *page;

	if (!ptep)
		return NULL;
	if (*ptep & _PAGE_PRESENT) {
		pte_t merged = (*ptep | (flags & (_PAGE_RW | _PAGE_DIRTY))) & (flags | ~_PAGE_NX);

		if (merged != *ptep)
			set_pte_at(mm, vaddr & PAGE_MASK, ptep, merged);
		return __va(*ptep & PAGE_MASK);
	}
	page = get_zeroed_page();
	if (!page)
		return NULL;
	set_pte_at(mm, vaddr & PAGE_MASK, ptep, __pa(page) | flags);
	return page;
}

/*
 * Unmap and free the user pages in [start, end).  The caller is in lazy
 * MMU mode; a freed page cannot be handed out again before the queued
 * SET_PTEs reach the Host, because nothing else runs until the caller
 * leaves the window (the kernel is not preemptible and interrupt handlers
 * do not allocate).
 */
static void unmap_user_range(struct mm *mm, u32 start, u32 end)
{
	u32 va;

	for (va = start; va < end; va += PAGE_SIZE) {
		pte_t *ptep = lookup_user_pte(mm, va);

		if (ptep && (*ptep & _PAGE_PRESENT)) {
			u32 pa = *ptep & PAGE_MASK;

			set_pte_at(mm, va, ptep, 0);
			free_pages(pa, 1);
		}
	}
}

/*
 * Empty the user half: every page (SET_PTE to 0), then every page table
 * (SET_PGD).  Afterwards no shadow the Host keeps for this directory holds
 * a user mapping, so the directory's page can safely be reused -- even as
 * another directory, which the Host would find in its cache by address.
 */
void mm_release_user(struct mm *mm)
{
	unsigned int i, j;

	lazy_mmu_enter();
	for (i = 0; i < KERNEL_PMD_START; i++) {
		pte_t pde = mm->pmd[i], *table;

		if (!(pde & _PAGE_PRESENT))
			continue;
		table = __va(pde & PAGE_MASK);
		for (j = 0; j < PTRS_PER_PTE; j++) {
			if (table[j] & _PAGE_PRESENT) {
				u32 pa = table[j] & PAGE_MASK;

				set_pte_at(mm, (i << PMD_SHIFT) | (j << PAGE_SHIFT), &table[j], 0);
				free_pages(pa, 1);
			}
		}
		set_pmd(&mm->pmd[i], 0);
		free_page(table);
	}
	lazy_mmu_leave();
	mm->start_brk = mm->brk = 0;
}

/* The directory itself: only once nobody runs on it (finish_task_switch). */
void mm_free(struct mm *mm)
{
#ifdef CONFIG_PAE
	free_pages(__pa(mm->pmd), KERNEL_PGD_START);
#endif
	free_page(mm->pgd);
	mm->pgd = mm->pmd = NULL;
}

/*
 * May the process read [addr, addr + len)?  Every page must be in the user
 * half, present, and USER in its own page tables (and RW, to be written).
 */
static int user_pages_ok(struct mm *mm, u32 addr, u32 len, u32 need)
{
	u32 va;

	if (addr >= USER_TOP || len > USER_TOP - addr)
		return 0;
	for (va = addr & PAGE_MASK; va < addr + len; va += PAGE_SIZE) {
		pte_t *ptep = lookup_user_pte(mm, va);

		if (!ptep || (*ptep & need) != need)
			return 0;
	}
	return 1;
}

int user_access_ok(struct mm *mm, u32 addr, u32 len)
{
	return user_pages_ok(mm, addr, len, _PAGE_PRESENT | _PAGE_USER);
}

int user_write_ok(struct mm *mm, u32 addr, u32 len)
{
	return user_pages_ok(mm, addr, len, _PAGE_PRESENT | _PAGE_USER | _PAGE_RW);
}

/*
 * Copy @len bytes from user address @src.  We never touch the user address
 * itself (a kernel fault there would be an oops): each page is looked up in
 * the process's own page table and read through the kernel's PAGE_OFFSET
 * mapping.  0, or -1 (and nothing copied) if any byte is not the user's.
 */
int copy_from_user(struct mm *mm, void *dst, u32 src, u32 len)
{
	u8 *out = dst;

	if (!user_access_ok(mm, src, len))
		return -1;
	while (len) {
		pte_t pte = *lookup_user_pte(mm, src);
		u32 chunk = PAGE_SIZE - (src & ~PAGE_MASK);

		if (chunk > len)
			chunk = len;
		memcpy(out, (u8 *)__va(pte & PAGE_MASK) + (src & ~PAGE_MASK), chunk);
		out += chunk;
		src += chunk;
		len -= chunk;
	}
	return 0;
}

/*
 * The other way: @len bytes to user address @dst, which must be writable
 * by the process.  Again only through the kernel's mapping of each page.
 * The user PTEs are born DIRTY, so the Host needs no fault to see the write.
 */
int copy_to_user(struct mm *mm, u32 dst, const void *src, u32 len)
{
	const u8 *in = src;

	if (!user_write_ok(mm, dst, len))
		return -1;
	while (len) {
		pte_t pte = *lookup_user_pte(mm, dst);
		u32 chunk = PAGE_SIZE - (dst & ~PAGE_MASK);

		if (chunk > len)
			chunk = len;
		memcpy((u8 *)__va(pte & PAGE_MASK) + (dst & ~PAGE_MASK), in, chunk);
		in += chunk;
		dst += chunk;
		len -= chunk;
	}
	return 0;
}

/*
 * Move the end of the heap.  New pages are zeroed and writable; pages
 * beyond a lower break are unmapped and freed.  A request we cannot meet
 * changes nothing: it is refused up front if there are plainly not enough
 * free pages, and rolled back if memory runs out half way.
 * Returns the new break, or -ENOMEM.
 */
u32 mm_brk(struct mm *mm, u32 new_brk)
{
	u32 old_end = PAGE_ALIGN(mm->brk), new_end, va;

	if (!new_brk)
		return mm->brk;
	if (new_brk < mm->start_brk || new_brk > USER_HEAP_LIMIT)
		return (u32)-12;
	new_end = PAGE_ALIGN(new_brk);
	if (new_end > old_end) {
		u32 pages = (new_end - old_end) >> PAGE_SHIFT;

		/* The pages, plus a page table per 4 MiB, plus some slack. */
		if (pages + pages / PTRS_PER_PTE + 2 > nr_free_pages())
			return (u32)-12;
		lazy_mmu_enter();
		for (va = old_end; va < new_end; va += PAGE_SIZE) {
			if (!map_user_page(mm, va, PTE_USER_DATA)) {
				unmap_user_range(mm, old_end, va);
				lazy_mmu_leave();
				return (u32)-12;
			}
		}
		lazy_mmu_leave();
	} else if (new_end < old_end) {
		lazy_mmu_enter();
		unmap_user_range(mm, new_end, old_end);
		lazy_mmu_leave();
	}
	mm->brk = new_brk;
	return new_brk;
}
