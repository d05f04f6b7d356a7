/*
 * mm.h - memory in an lguest Guest: physical pages, page tables, and the
 * paravirtualized MMU operations that keep the Host's shadows honest.
 *
 * The Guest owns ordinary i386 page tables in its own RAM (two-level, or PAE's
 * three levels in the `make PAE=1` build), but the CPU never walks them: it runs on the Host's shadow copies.  So every change
 * a Guest makes to a live page table must be reported (SET_PTE, SET_PGD,
 * SET_PMD, FLUSH_TLB), and every switch of address space is a hypercall
 * (NEW_PGTABLE).
 *
 * Both formats look the same to the rest of puppy: a user address space is an
 * array of "table entries" (pmd below), indexed by vaddr >> PMD_SHIFT, each
 * naming one page table of pte_t.  Without PAE that array is the page
 * directory itself (4 MiB per entry); with PAE it is the three page middle
 * directories of the user gigabytes, side by side (2 MiB per entry), hung
 * from a four-entry page-directory-pointer table whose last entry is the
 * kernel's PMD, shared by every address space as Linux shares it.
 */
#ifndef PUPPY_MM_H
#define PUPPY_MM_H

#include "lguest.h"

#define PAGE_SHIFT		12
#define PAGE_MASK		(~(PAGE_SIZE - 1))
#define PAGE_ALIGN(x)		(((x) + PAGE_SIZE - 1) & PAGE_MASK)
#ifdef CONFIG_PAE
typedef u64 pte_t;
#define PGDIR_SHIFT		30	/* one PDPT entry maps 1 GiB */
#define PMD_SHIFT		21	/* one page table maps 2 MiB */
#define PTRS_PER_PTE		512
#define PDPT_KERNEL		3	/* the PDPT entry of PAGE_OFFSET.. */
#define _PAGE_NX		(1ULL << 63)	/* no fetches: the Host honours it */
#else
#define _PAGE_NX		0		/* two levels have no NX bit */
typedef u32 pte_t;
#define PGDIR_SHIFT		22
#define PMD_SHIFT		PGDIR_SHIFT	/* the directory is the pmd: 4 MiB */
#define PTRS_PER_PTE		1024
/* The Switcher's slot (reserve_mem = 4 MiB): never ours to map. */
#define SWITCHER_PGD		1023
#endif
#define KERNEL_PGD_START	(PAGE_OFFSET >> PGDIR_SHIFT)	/* 768, PAE: 3 */
#define KERNEL_PMD_START	(PAGE_OFFSET >> PMD_SHIFT)	/* user tables below */

/* The PTE and PDE bits puppy uses (the same in both formats). */
#define _PAGE_PRESENT		0x001
#define _PAGE_RW		0x002
#define _PAGE_USER		0x004
#define _PAGE_ACCESSED		0x020
#define _PAGE_DIRTY		0x040
/* A directory entry may carry nothing else, or the Host kills us. */
#define _PAGE_TABLE		(_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)

/*
 * User PTEs are born ACCESSED (and writable ones DIRTY): the page is about
 * to be used, and a PTE with A/D set lets the Host install its shadow at
 * SET_PTE time instead of taking a fault for it later (spec 6.6).
 */
#define PTE_USER_RO	(_PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
#define PTE_USER_RW	(PTE_USER_RO | _PAGE_RW | _PAGE_DIRTY)
/* Stack and heap: data, never code (where the format can say so). */
#define PTE_USER_DATA	(PTE_USER_RW | _PAGE_NX)

/* The user half of every address space. */
#define USER_TOP		PAGE_OFFSET	/* 0xC0000000: the kernel's */
#define USER_STACK_TOP		USER_TOP
#define USER_STACK_PAGES	4
#define USER_HEAP_LIMIT		0xB0000000u	/* brk may not go past this */

/* page_alloc.c: the physical page allocator. */
void page_alloc_init(u32 first_free_pa, u32 limit_pa);
u32 alloc_pages(unsigned int n);	/* physical address, 0 if none */
void free_pages(u32 pa, unsigned int n);
void *get_zeroed_page(void);		/* kernel (virtual) address, or NULL */
void free_page(void *va);
unsigned int nr_free_pages(void);
extern u32 lowmem_limit;		/* what PAGE_OFFSET maps: min(RAM, 64 MiB) */

/* pgtable.c: the paravirtualized MMU. */
struct mm {
	pte_t *pgd;		/* what cr3 names: the directory (PAE: the PDPT) */
	pte_t *pmd;		/* the user table entries (== pgd without PAE) */
	u32 start_brk, brk;	/* the heap: [start_brk, brk) */
};

extern pte_t boot_pgdir[];	/* head.S: the kernel-only "swapper" directory */
#ifdef CONFIG_PAE
extern pte_t boot_pmd[];	/* head.S: the kernel's PMD, shared by all */
#define kernel_pmd(vaddr)	(&boot_pmd[((vaddr) - PAGE_OFFSET) >> PMD_SHIFT])
#else
#define kernel_pmd(vaddr)	(&boot_pgdir[(vaddr) >> PMD_SHIFT])
#endif
extern struct mm init_mm;

void set_pte_at(struct mm *mm, u32 vaddr, pte_t *ptep, pte_t pte);
void set_pgd(pte_t *pgd, unsigned int index, pte_t pde);
void set_pmd(pte_t *pmdp, pte_t entry);
void flush_tlb_user(void);
void flush_tlb_kernel(void);
void write_cr3(pte_t *pgd);
u32 read_cr3(void);
void load_sp0(u32 sp0);
void lazy_mmu_enter(void);
void lazy_mmu_leave(void);
void lazy_cpu_enter(void);
void lazy_cpu_leave(void);

/* mm.c: address spaces. */
void mm_init(u64 ram);
int mm_create(struct mm *mm);
void mm_release_user(struct mm *mm);
void mm_free(struct mm *mm);
void *map_user_page(struct mm *mm, u32 vaddr, pte_t flags);
pte_t *lookup_user_pte(struct mm *mm, u32 vaddr);
int user_access_ok(struct mm *mm, u32 addr, u32 len);
int user_write_ok(struct mm *mm, u32 addr, u32 len);
int copy_from_user(struct mm *mm, void *dst, u32 src, u32 len);
int copy_to_user(struct mm *mm, u32 dst, const void *src, u32 len);
void *ioremap(u32 pa);			/* a device page's kernel address */
u32 mm_brk(struct mm *mm, u32 new_brk);

#endif /* PUPPY_MM_H */
