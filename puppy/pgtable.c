/*
 * pgtable.c - the paravirtualized MMU: telling the Host what changed.
 */
#include "puppy.h"
#include "mm.h"
#include "irq.h"

enum lazy_mode { LAZY_NONE, LAZY_MMU, LAZY_CPU };

static enum lazy_mode lazy_mode;
static u32 current_cr3;		/* the Host has no cr3 field for us to read */

/* The boot directory, seen as an address space (the idle task's). */
struct mm init_mm = { .pgd = boot_pgdir };

/* tour:G.70 The paravirtualized MMU: store, then tell; lazily when we can
 * Natively, a kernel writes a PTE and the hardware walker sees it (after a
 * TLB flush).  Under lguest the CPU walks the Host's shadow page tables,
 * and the Host cannot see our stores to our own tables.  So each operation
 * below is "do it in memory, then tell the Host" (§6.4-6.7):
 *
 *     set_pte_at       store + SET_PTE(directory, vaddr, pte)
 *     set_pgd          store + SET_PGD(directory, index)
 *     flush_tlb_user   FLUSH_TLB(0): forget the current user mappings
 *     flush_tlb_kernel FLUSH_TLB(1): forget everything, in every shadow
 *     write_cr3        NEW_PGTABLE(directory): we keep "cr3" ourselves
 *     load_sp0         SET_STACK: where traps from user mode land
 *
 * Telling each time would be one exit per PTE.  As Linux does, there are
 * two lazy windows, bulk page-table updates (lazy MMU mode) and the
 * context switch (lazy CPU mode), in which these calls only go on the
 * async ring; leaving the window makes one FLUSH_ASYNC, and the Host runs
 * them all, in order, in a single trip.  The first use comes at once:
 * mm_init drops the identity half of the boot directory (no longer needed
 * now that we run at PAGE_OFFSET): a SET_PGD per entry, all queued, and
 * one flush.  Linux 4.9 routes the same paravirt hooks (lguest_set_pte_at,
 * lguest_set_pmd, lguest_flush_tlb_user/kernel, lguest_write_cr3,
 * lguest_load_sp0) through the same lazy_hcall choice.
 */

/*
 * A hypercall that can wait: queued on the ring in a lazy window, made
 * right away otherwise.
 */
static void lazy_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4)
{
	if (lazy_mode == LAZY_NONE)
		hcall(call, arg1, arg2, arg3, arg4);
	else
		async_hcall(call, arg1, arg2, arg3, arg4);
}

/* A PAE PTE is 64 bits: its high half (NX, the pfn above 4 GiB) is arg 4. */
void set_pte_at(struct mm *mm, u32 vaddr, pte_t *ptep, pte_t pte)
{
	*ptep = pte;
	/* The Host finds its shadow by the directory's physical address. */
	lazy_hcall(LHCALL_SET_PTE, __pa(mm->pgd), vaddr, (u32)pte, (u32)((u64)pte >> 32));
}

/*
 * A top-level entry.  A PAE PDPT need only be 32-byte aligned, so the Host
 * is told its address to 32 bytes, and the index is 0..3.
 */
void set_pgd(pte_t *pgd, unsigned int index, pte_t pde)
{
	pgd[index] = pde;
#ifdef CONFIG_PAE
	lazy_hcall(LHCALL_SET_PGD, __pa(pgd) & ~0x1F, index, 0, 0);
#else
	lazy_hcall(LHCALL_SET_PGD, __pa(pgd) & PAGE_MASK, index, 0, 0);
#endif
}

/*
 * An entry naming a page table.  Without PAE that is a directory entry; with
 * PAE it is in a PMD, which the Host cannot trace back to a directory: SET_PMD
 * makes it drop every shadow (§6.7), which is why puppy, like Linux, changes
 * PMDs rarely (a page table, once made, stays until the process ends).
 */
#ifdef CONFIG_PAE
#define LHCALL_SET_TABLE	LHCALL_SET_PMD
#else
#define LHCALL_SET_TABLE	LHCALL_SET_PGD	/* the page holding it is the directory */
#endif

void set_pmd(pte_t *pmdp, pte_t entry)
{
	u32 pa = __pa(pmdp);

	*pmdp = entry;
	lazy_hcall(LHCALL_SET_TABLE, pa & PAGE_MASK, (pa & ~PAGE_MASK) / sizeof(pte_t), 0, 0);
}

void flush_tlb_user(void)
{
	lazy_hcall(LHCALL_FLUSH_TLB, 0, 0, 0, 0);
}

void flush_tlb_kernel(void)
{
	lazy_hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
}

void write_cr3(pte_t *pgd)
{
	current_cr3 = __pa(pgd);
	lazy_hcall(LHCALL_NEW_PGTABLE, current_cr3, 0, 0, 0);
}

u32 read_cr3(void)
{
	return current_cr3;
}

/*
 * The kernel stack for traps from ring 3 (the TSS's ss1/esp1, which only
 * the Host can write).  Two pages, which the Host checks are mapped and
 * writable in the current address space.
 */
void load_sp0(u32 sp0)
{
	lazy_hcall(LHCALL_SET_STACK, KERNEL_DS, sp0, 2, 0);
}

/*
 * Entering a lazy window: nothing to tell the Host.  Interrupts stay as
 * they are; a handler that made a synchronous hypercall in the middle would
 * just make the Host run the queue early, which keeps the order.
 */
void lazy_mmu_enter(void)
{
	lazy_mode = LAZY_MMU;
}

/* Leaving it: the Host must have seen everything before we go on. */
void lazy_mmu_leave(void)
{
	lazy_mode = LAZY_NONE;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}

/* The context switch's window (Linux's arch_start/end_context_switch). */
void lazy_cpu_enter(void)
{
	lazy_mode = LAZY_CPU;
}

void lazy_cpu_leave(void)
{
	lazy_mode = LAZY_NONE;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}
