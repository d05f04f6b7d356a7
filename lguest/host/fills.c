/*
 * TLB misses the Host has already answered, answered again without Python.
 *
 * Every miss in the emulator's TLB asks the Host's page tables, and a Python
 * callback costs several microseconds: most misses are for pages the current
 * shadow already holds, after the emulator's TLB was flushed (a context
 * switch, a FLUSH_TLB, a SET_PTE of a page it held).  The page tables keep
 * here, per shadow, per page and per kind of access (read, write, fetch;
 * kernel or user), the answer they gave, and drop them exactly where the
 * shadow's entry changes (lguest/host/fills.py).  The rules stay in Python but one: this
 * hook repeats, and after a table forgot everything it repeats only answers whose Guest
 * entries it re-reads unchanged (`still_holds`); a page another shadow's table answered
 * it repeats where the current directory leads to the same entries (`adopt`).  The one
 * rule it applies itself is the plain case of demand_page (`walk`): a page with a
 * present, plain, allowed entry in a two-level Guest's tables is answered here, and
 * the page tables record it afterwards, as they record adoptions.
 * Anything else (a refusal, a kill, a device window, PAE), the Switcher's own pages,
 * virtual-8086 mode, and every miss while the Host has news this hook cannot
 * see (an exit pending, a failed hook, a debugger) go to the Switcher's
 * Python hook, exactly as if this one were not here.  While the CPU delivers a
 * trap itself (interrupts.c) this hook answers alone (`delivery_fill`).  One
 * refusal it turns into something else, when the Python hook asks: the Guest's
 * own page fault, raised in the CPU (`raise_page_fault`).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TABLES 5			/* one per shadow, and linear mode's */
#define SLOT_BITS 13
#define SLOTS (1 << SLOT_BITS)		/* pages remembered; a collision only forgets */
#define CLASSES 7			/* read, write, fetch; +3 from ring 3; where (below) */
#define UC_MEM_READ 16
#define UC_MEM_WRITE 17
#define UC_MEM_FETCH 18
#define UC_PROT_READ 1
#define UC_PROT_WRITE 2
#define X86_EFLAGS_VM 0x20000

#define UC_PROT_EXEC 4
#define PTE_PRESENT 0x001
#define PTE_RW 0x002
#define PTE_USER 0x004
#define PTE_ACCESSED 0x020
#define PTE_DIRTY 0x040
#define PTE_PSE 0x080			/* in a PTE: the PAT bit; never allowed either way */
#define PAGE_TABLE_FLAGS 0x067		/* all a directory entry may carry */
#define PF_PRESENT 1			/* #PF error code bits */
#define PF_WRITE 2
#define PF_USER 4
#define RECORD_BYTES ((1u << 20) / 8)	/* a bit per page of the address space */
#define CHUNK_PAGES 512			/* and a bit per 64 bytes of those that may be set */
#define RECORD_WORDS ((1u << 20) / CHUNK_PAGES / 64)

#define RECORDS 1024			/* entries the page tables have yet to record */

struct new_record {			/* for fills.py: an entry walked or adopted here, which the page
					 * tables record in the shadow as their own walk would have */
	uint32_t logged;		/* made after this many of hypercalls.c's logged changes */
	uint32_t which, page, pte;
};

struct tlb_entry {			/* Unicorn's uc_tlb_entry */
	uint64_t paddr;
	uint32_t perms;
};

typedef bool (*fill_hook)(void *uc, uint64_t vaddr, int type, struct tlb_entry *result, void *data);

struct answer_slot {
	uint64_t generation;		/* valid only in the table's current one */
	uint64_t tlb_epoch;		/* answered to the emulator's TLB since this flush of it */
	uint32_t page;
	uint32_t known;			/* bit per class */
	uint32_t paddr[CLASSES];
	uint32_t perms[CLASSES];
	uint32_t pte;			/* the shadow's record for the page (0: unknown), the PTE */
	uint32_t pde;			/* ... and the directory entry a walk checked with it (0: none) */
};

struct fill_table {
	volatile int32_t python_decides;	/* the Host has state this hook cannot see */
	int32_t keep;				/* set by the Python hook: its answer may be repeated */
	uint32_t keep_pde, keep_pte;		/* ... and the Guest entries it rests on (0: none) */
	uint8_t *ram;				/* the Guest's RAM: its entries, read and walked */
	uint32_t ram_size;
	uint32_t pgdir[TABLES];			/* each shadow's Guest page directory (0: never re-read) */
	int (*reg_read)(void *uc, int reg, void *value);	/* uc_reg_read */
	int32_t cs, eflags;			/* UC_X86_REG_CS, UC_X86_REG_EFLAGS */
	uint32_t switcher;			/* the Switcher's pages start here */
	uint32_t state_page;			/* its GDT, TSS and IDT: what the CPU reads while delivering */
	volatile int32_t delivering;		/* interrupts.c has the CPU deliver a trap */
	fill_hook python;			/* the Switcher's own hook */
	uint64_t served;			/* misses answered here */
	uint64_t reread;			/* slots made current by re-reading the Guest's entries */
	uint64_t tlb_epoch;			/* counts the emulator's full TLB flushes */
	int32_t lost_track;			/* a slot held since the flush was reused */
	uint32_t current;			/* the current shadow's table */
	uint64_t generation[TABLES];		/* bumped: a table forgets every answer */
	struct answer_slot (*slot)[SLOTS];	/* [TABLES]: Python's, freed when the engine closes */
	/* A refusal the CPU raises as the Guest's #PF itself (set by the Python hook) */
	int32_t raise_fault;
	uint32_t fault_errcode;
	void *env;				/* the engine's CPUX86State */
	void (*raise_err)(void *env, int vector, int errcode);	/* QEMU's raise_exception_err */
	uint64_t adopted;			/* slots copied from another shadow's table */
	const uint32_t *hcalls_logged;		/* hypercalls.c's log length, to order ours (NULL: none) */
	uint32_t pfn_limit;			/* RAM's pages: a walk here answers nothing beyond */
	uint64_t walked;			/* misses answered by walking the Guest's tables here */
	uint8_t (*recorded)[RECORD_BYTES];	/* [TABLES]: a page the shadow may hold an entry for */
	uint64_t recorded_chunks[TABLES][RECORD_WORDS];	/* where `recorded` may have a bit set */
	uint32_t records;
	struct new_record record[RECORDS];
	/* Refusals this hook raises as the Guest's #PF itself (`refuse`) */
	uint32_t cr2_at;			/* lguest_data.cr2, Guest-physical (0: Python decides) */
	uint32_t old_exception_at;		/* QEMU's "exception in flight", in env */
	int32_t exact;				/* exact_fill.c notes each miss's address */
	int32_t raised;				/* a #PF raised here, not yet delivered: ... */
	uint32_t raised_page, raised_errcode, raised_cr2;
	int32_t raised_fetch;
	uint64_t refused;			/* refusals raised here */
};

/* For the Python side to check its copy of the layout. */
size_t lguest_fills_table_size(void)
{
	return sizeof(struct fill_table);
}

static struct answer_slot *slot_of(struct fill_table *table, uint32_t which, uint32_t page)
{
	/* A multiplicative hash of the page number, in 64 bits: user code at 0x08048000 and
	 * the kernel's at 0xC1048000 must not share a slot, nor (a 32-bit product made them)
	 * a user page and the kernel page about 0xB9000 pages above it. */
	return &table->slot[which][((page >> 12) * 0x9E3779B97F4A7C15ull) >> (64 - SLOT_BITS)];
}

static void learn(struct fill_table *table, uint32_t page, int class, const struct tlb_entry *answer)
{
	uint32_t which = table->current;
	struct answer_slot *slot = slot_of(table, which, page);
	bool same_page = slot->page == page;

	if (slot->generation != table->generation[which] || slot->page != page) {
		if (slot->page != page && slot->tlb_epoch == table->tlb_epoch)
			table->lost_track = 1;	/* the page it held may still be in the TLB */
		slot->generation = table->generation[which];
		slot->page = page;
		slot->known = 0;
	}
	slot->paddr[class] = (uint32_t)answer->paddr;
	slot->perms[class] = answer->perms;
	slot->known |= 1u << class;
	/* An answer from the shadow's record (keep_pde 0) rests on the directory entry an
	 * earlier walk checked only if the PTE is that one; else on none known here. */
	if (table->keep_pde || !same_page || slot->pte != table->keep_pte) {
		slot->pde = table->keep_pde;
		slot->pte = table->keep_pte;
	}
	slot->tlb_epoch = table->tlb_epoch;
}

/* A Guest entry, if it lies in RAM. */
static bool guest_entry(const struct fill_table *table, uint32_t gpa, uint32_t *entry)
{
	if (gpa > table->ram_size - 4)
		return false;
	memcpy(entry, table->ram + gpa, 4);
	return true;
}

/*
 * A slot from before the table forgot everything (FLUSH_TLB, SET_PGD, a new address
 * space in this shadow) still says which two Guest entries its answers rest on.  If
 * the Guest's directory and table hold exactly those entries now, the page tables
 * would walk them to the same answers: the slot is current again.  Anything else
 * goes to Python, which walks and checks.
 */
/* Where the two-level entries for `page` lie: the directory entry under shadow `which`'s
 * directory, and the PTE in the table a directory entry names. */
static uint32_t pde_at(const struct fill_table *table, uint32_t which, uint32_t page)
{
	return table->pgdir[which] + (page >> 22) * 4;
}

static uint32_t pte_at(uint32_t pde, uint32_t page)
{
	return (pde & ~0xFFFu) + ((page >> 12) & 0x3FF) * 4;
}

/* The Guest's directory entry and PTE for `page` under shadow `which`'s directory. */
static bool read_entries(const struct fill_table *table, uint32_t which, uint32_t page, uint32_t *pde,
			 uint32_t *pte)
{
	if (!table->pgdir[which] || !guest_entry(table, pde_at(table, which, page), pde))
		return false;
	return guest_entry(table, pte_at(*pde, page), pte);
}

static bool still_holds(struct fill_table *table, uint32_t which, struct answer_slot *slot)
{
	uint32_t pde, pte;

	if (!slot->pte || !slot->pde || !read_entries(table, which, slot->page, &pde, &pte) ||
	    pde != slot->pde || pte != slot->pte)
		return false;
	slot->generation = table->generation[which];
	table->reread++;
	return true;
}

/*
 * Which pages may shadow `which` hold an entry for in the page tables' record?  A
 * walk or an adoption here must not answer a page the record holds: `translate`
 * answers from the record, which a Guest changing its tables without telling may
 * have left behind its RAM.  A bit per page, kept exact where the record changes:
 * here for a walk or an adoption (`log_record`), a SET_PTE (`lguest_fills_set_pte`,
 * from hypercalls.c or the page tables) and a SET_PGD or FLUSH_TLB hypercalls.c serves
 * (`lguest_fills_unrecorded`); by the page tables where they drop records themselves.
 * (`lguest_fills_forget` marks its page too: a change the caller records next.)
 */
static bool may_be_recorded(const struct fill_table *table, uint32_t which, uint32_t page)
{
	uint32_t pfn = page >> 12;

	return table->recorded[which][pfn / 8] & (1u << (pfn % 8));
}

static void mark_recorded(struct fill_table *table, uint32_t which, uint32_t page)
{
	uint32_t pfn = page >> 12, chunk = pfn / CHUNK_PAGES;

	if (!table->recorded)
		return;
	table->recorded[which][pfn / 8] |= 1u << (pfn % 8);
	table->recorded_chunks[which][chunk / 64] |= 1ull << (chunk % 64);
}

/* Shadow `which` holds no entry for the pages in [start, end) any more (a full flush
 * drops every shadow's: only the chunks that may have a bit set are cleared). */
void lguest_fills_unrecorded(struct fill_table *table, uint32_t which, uint64_t start, uint64_t end)
{
	uint64_t last = end >> 12 < (1u << 20) ? end >> 12 : (1u << 20);

	if (!table->recorded)
		return;
	for (uint64_t pfn = start >> 12; pfn < last;) {
		uint64_t chunk = pfn / CHUNK_PAGES, next = (chunk + 1) * CHUNK_PAGES;
		uint64_t *word = &table->recorded_chunks[which][chunk / 64];

		if (!*word) {
			pfn = (chunk / 64 + 1) * 64 * CHUNK_PAGES;
		} else if (!(*word & (1ull << (chunk % 64)))) {
			pfn = next;
		} else if (pfn == chunk * CHUNK_PAGES && next <= last) {
			memset(&table->recorded[which][pfn / 8], 0, CHUNK_PAGES / 8);
			*word &= ~(1ull << (chunk % 64));
			pfn = next;
		} else {
			table->recorded[which][pfn / 8] &= ~(1u << (pfn % 8));
			pfn++;
		}
	}
}

/* An entry the page tables have yet to record in shadow `which`, in order with the
 * changes hypercalls.c logs; false (nothing logged) if the log is full. */
static bool log_record(struct fill_table *table, uint32_t which, uint32_t page, uint32_t pte)
{
	if (table->records == RECORDS)
		return false;
	table->record[table->records++] = (struct new_record){
		.logged = table->hcalls_logged ? *table->hcalls_logged : 0,
		.which = which, .page = page, .pte = pte,
	};
	mark_recorded(table, which, page);
	return true;
}

/*
 * Every address space maps the kernel through the same Guest tables, so a page
 * one shadow's table knows is often missed in another's.  If another table's slot
 * says which directory entry and PTE its answers rest on, and the current shadow's
 * directory leads to exactly those, a walk here would check the same entries and
 * give the same answers: the slot is copied into the current table, where the
 * shadow's record holds nothing for the page.  The walk would also have put the PTE
 * in the shadow's record, so the copy is logged for the page tables to record it
 * too, in order with the changes hypercalls.c logs; with the log full, Python walks.
 */
static struct answer_slot *adopt(struct fill_table *table, uint32_t which, uint32_t page)
{
	struct answer_slot *slot = slot_of(table, which, page);
	uint32_t pde = 0, pte = 0;
	bool read = false;

	if (table->records == RECORDS || may_be_recorded(table, which, page))
		return NULL;
	for (uint32_t other = 0; other < TABLES; other++) {
		struct answer_slot *from = slot_of(table, other, page);
		bool held = slot->tlb_epoch == table->tlb_epoch;

		if (other == which || from->page != page || !from->pde || !from->pte || !from->known)
			continue;
		if (!read && !(read = true, read_entries(table, which, page, &pde, &pte)))
			return NULL;
		if (from->pde != pde || from->pte != pte)
			continue;
		if (held && slot->page != page)
			table->lost_track = 1;	/* the page it held may still be in the TLB */
		*slot = *from;
		slot->generation = table->generation[which];
		slot->tlb_epoch = held ? table->tlb_epoch : 0;
		table->adopted++;
		log_record(table, which, page, pte);
		return slot;
	}
	return NULL;
}

/* The slot holding current answers for `page` in shadow `which`, or NULL. */
static struct answer_slot *current_slot(struct fill_table *table, uint32_t which, uint32_t page)
{
	struct answer_slot *slot = slot_of(table, which, page);

	if (slot->page != page)
		return NULL;
	if (slot->generation != table->generation[which] && !still_holds(table, which, slot))
		return NULL;
	return slot;
}

/* An answer the page tables give without a miss (interrupts.py's frames), from the
 * shadow's record `pte` (0: not said); it rests on no directory entry checked here. */
void lguest_fills_learn(struct fill_table *table, uint32_t page, int class, uint32_t paddr, uint32_t perms,
			uint32_t pte)
{
	struct tlb_entry answer = { .paddr = paddr, .perms = perms };

	if (!table->slot)
		return;
	table->keep_pde = 0;
	table->keep_pte = pte;
	learn(table, page, class, &answer);
}

/* Shadow `which`'s entry for `page` changed (and its record may hold one now). */
void lguest_fills_forget(struct fill_table *table, uint32_t which, uint32_t page)
{
	if (!table->slot)
		return;
	struct answer_slot *slot = slot_of(table, which, page);

	if (slot->page == page) {
		slot->known = 0;
		slot->pte = slot->pde = 0;
	}
	mark_recorded(table, which, page);
}

/*
 * A SET_PTE (served in hypercalls.c, or by the page tables): shadow `which`'s record
 * for `page` is `record` now (0: none).  The slot keeps it, so that the Guest's next
 * access is answered from it here, as `translate` would (`walk`).  (A PAE shadow's
 * slot keeps the low half, which nothing here reads: it is never walked.)
 */
void lguest_fills_set_pte(struct fill_table *table, uint32_t which, uint32_t page, uint32_t record)
{
	struct answer_slot *slot;

	if (!table->slot)
		return;
	lguest_fills_forget(table, which, page);
	if (!record) {
		lguest_fills_unrecorded(table, which, page, page + 0x1000ull);
		return;
	}
	slot = slot_of(table, which, page);
	if (slot->page != page && slot->tlb_epoch == table->tlb_epoch)
		table->lost_track = 1;	/* as an answer would: the page it held may be in the TLB */
	if (slot->page != page)
		slot->tlb_epoch = 0;
	slot->page = page;
	slot->generation = table->generation[which];
	slot->known = 0;
	slot->pte = record;
	slot->pde = 0;		/* no walk checked a directory entry with it */
}

/* May the emulator's TLB hold a translation this table gave, since its last full
 * flush, for a page in [start, end)? */
bool lguest_fills_may_hold(struct fill_table *table, uint32_t which, uint32_t start, uint32_t end)
{
	if (!table->slot)
		return false;
	if (table->lost_track)
		return true;
	if (end - start == 0x1000) {
		struct answer_slot *slot = slot_of(table, which, start);

		return slot->page == start && slot->tlb_epoch == table->tlb_epoch;
	}
	for (uint32_t i = 0; i < SLOTS; i++) {
		struct answer_slot *slot = &table->slot[which][i];

		if (slot->tlb_epoch == table->tlb_epoch && slot->page >= start && slot->page < end)
			return true;
	}
	return false;
}

/* The class of this access, or -1 where only Python may answer. */
static int access_class(struct fill_table *table, void *uc, uint64_t vaddr, int type)
{
	uint64_t cs = 0, eflags = 0;

	if (table->python_decides || vaddr >= table->switcher)
		return -1;
	if (table->reg_read(uc, table->cs, &cs) || table->reg_read(uc, table->eflags, &eflags))
		return -1;
	if (eflags & X86_EFLAGS_VM)
		return -1;
	return (type - UC_MEM_READ) + 3 * ((cs & 3) == 3);
}

/*
 * The plain case of the page tables' `translate` and `demand_page` (two-level
 * format), for a miss no answer here covers.  lguest's demand_page ran on every
 * shadow miss, and a Python callback costs microseconds: a fork's new address
 * space, or a table that forgot its answers, misses on thousands of pages whose
 * Guest entries are present and plain.  So this hook walks them itself, but only
 * where the outcome is an answer: the Guest's directory entry present and plain
 * (no 4 MiB page, its table in RAM), its PTE present, allowing the access (RW for
 * a write, USER from ring 3), in RAM (no device window) and without the PSE/PAT
 * bit.  Everything else (a refusal, whose #PF and cr2 Python decides; a kill; a
 * device window) goes to Python, which walks again, exactly as if this walk had
 * not happened: nothing changed before the answer is certain.  The pure-Python
 * Host keeps its own copy of these rules (`PageTables.demand_page`), and
 * tests/test_native_walk.py runs the same Guests both ways.
 *
 * Like `translate`, it answers from the shadow's record where that holds an entry
 * allowing the access (a current slot knows the record, `known_record`: the entry a
 * walk or a SET_PTE gave it), and walks the Guest's tables only where the record
 * holds none; where the record may hold an entry this hook does not know (a page's
 * `recorded` bit), Python decides.  A Guest that changes an entry without telling
 * (SET_PTE) so sees the same stale entry on both paths.
 * An answer sets ACCESSED (and DIRTY for a write) in the Guest's PTE as the walk
 * does, forgets the page's other answers (the walk's `_forget`), grants only the
 * class that missed (`_permissions`), is kept with the two entries it rests on, and
 * is logged for the page tables to record, like an adoption.  With the log full,
 * Python walks.
 */
/* The Guest's directory entry and PTE for `page` (and where the PTE is), if both are
 * present and plain, in RAM, and the PTE grants `grant` (RW, USER): what a walk here
 * may answer from. */
/* A present directory entry a walk here may follow: no flag a page table's entry may not
 * carry (a 4 MiB page, say), and its table in RAM. */
static bool plain_pde(const struct fill_table *table, uint32_t pde)
{
	return !(pde & 0xFFF & ~PAGE_TABLE_FLAGS) && pde >> 12 < table->pfn_limit;
}

static bool plain_entries(const struct fill_table *table, uint32_t which, uint32_t page, uint32_t grant,
			  uint32_t *pde, uint32_t *pte_gpa, uint32_t *pte)
{
	if (!guest_entry(table, pde_at(table, which, page), pde) || !(*pde & PTE_PRESENT) ||
	    !plain_pde(table, *pde))
		return false;
	*pte_gpa = pte_at(*pde, page);
	return guest_entry(table, *pte_gpa, pte) && *pte & PTE_PRESENT && (*pte & grant) == grant &&
	       !(*pte & PTE_PSE) && *pte >> 12 < table->pfn_limit;
}

static bool walk(struct fill_table *table, uint32_t which, uint32_t page, int class, uint32_t record,
		 bool sure, struct tlb_entry *result)
{
	struct answer_slot *slot = slot_of(table, which, page);
	bool write = class % 3 == UC_MEM_WRITE - UC_MEM_READ, user = class >= 3;
	bool fetch = class % 3 == UC_MEM_FETCH - UC_MEM_READ;
	uint32_t pde = slot->pde, pte = record, pte_gpa = 0, grant = (write ? PTE_RW : 0) | (user ? PTE_USER : 0);
	bool from_record = pte && (pte & grant) == grant && (!write || pte & PTE_DIRTY);

	if (!from_record || !sure) {
		if (table->records == RECORDS || !plain_entries(table, which, page, grant, &pde, &pte_gpa, &pte))
			return false;
		/* Unsure whether the record still holds `record` or nothing: both must answer
		 * alike, the record as it is and a walk with nothing to set. */
		if (from_record && (pte != record || !(pte & PTE_ACCESSED)))
			return false;
		record = pte | PTE_ACCESSED | (write ? PTE_DIRTY : 0);
		if (record != pte)
			memcpy(table->ram + pte_gpa, &record, 4);
		lguest_fills_forget(table, which, page);
		log_record(table, which, page, record);
	}
	result->paddr = record & ~0xFFFu;
	result->perms = fetch ? UC_PROT_READ | UC_PROT_EXEC :
			write || (record & PTE_DIRTY && record & PTE_RW) ? UC_PROT_READ | UC_PROT_WRITE :
			UC_PROT_READ;
	table->keep_pde = pde;
	table->keep_pte = record;
	learn(table, page, class, result);
	table->walked += pte_gpa != 0;
	table->served++;
	return true;
}

/*
 * While the CPU delivers a trap (interrupts.c) its accesses are the kernel's
 * own (QEMU's cpu_ld/st*_kernel), though CS may still say ring 3: it reads the
 * Switcher's GDT, TSS and IDT and writes the frame on the Guest's kernel stack.
 * interrupts.c delivers only when every page it will write is answered here,
 * so nothing may go to Python now (the Python hook would class the access by
 * CS); a refusal would stop the emulator, and cannot happen.
 */
static bool delivery_fill(struct fill_table *table, uint32_t page, int type, struct tlb_entry *result)
{
	struct answer_slot *slot = current_slot(table, table->current, page);
	int class = type - UC_MEM_READ;

	if (page == table->state_page && type == UC_MEM_READ) {
		result->paddr = page;
		result->perms = UC_PROT_READ;
		return true;
	}
	if (!slot || !(slot->known & (1u << class)))
		return false;
	table->served++;
	slot->tlb_epoch = table->tlb_epoch;
	result->paddr = slot->paddr[class];
	result->perms = slot->perms[class];
	return true;
}

#define KERNEL_WRITE (UC_MEM_WRITE - UC_MEM_READ)

/* Does this slot grant a kernel write? */
static bool writes_kernel(const struct answer_slot *slot)
{
	return slot->known & (1u << KERNEL_WRITE) && slot->perms[KERNEL_WRITE] & UC_PROT_WRITE;
}

/* The Guest-physical page a kernel write to `vaddr` was answered with, if one was. */
bool lguest_fills_kernel_write(struct fill_table *table, uint32_t vaddr, uint32_t *paddr)
{
	struct answer_slot *slot = current_slot(table, table->current, vaddr & ~0xFFFu);

	if (!slot || !writes_kernel(slot))
		return false;
	*paddr = slot->paddr[KERNEL_WRITE];
	return true;
}

/* The Guest-physical page any access to `vaddr` was answered with, if one was. */
bool lguest_fills_known(struct fill_table *table, uint32_t vaddr, uint32_t *paddr)
{
	struct answer_slot *slot = current_slot(table, table->current, vaddr & ~0xFFFu);

	if (!slot || !slot->known)
		return false;
	*paddr = slot->paddr[__builtin_ctz(slot->known)];
	return true;
}

void lguest_fills_delivering(struct fill_table *table, bool delivering)
{
	table->delivering = delivering;
}

/*
 * The Python hook refused this access and decided the Guest handles the fault
 * with the CPU delivering it (it wrote cr2 already).  Unicorn put EIP back at the
 * faulting instruction before asking; QEMU's raise_exception_err records #PF
 * with its error code and unwinds to the CPU loop (no Python frame lies between
 * here and it), which hands the exception to the interrupt hook (trap_hook.c)
 * instead of stopping the emulator.  It does not return.  (Unicorn's guard
 * around the hook call is empty on Linux; on Apple's JIT it would not be.)
 */
#define PAGE_FAULT 14

static void raise_page_fault(struct fill_table *table)
{
	table->raise_fault = 0;
	table->raise_err(table->env, PAGE_FAULT, (int)table->fault_errcode);
}

/*
 * The plain refusals of the page tables' `demand_page` (two-level), where the shadow's
 * record holds no entry that allows the access (`translate` answers from it first):
 * the directory entry not present; or plain, and the PTE not present; or present
 * without the RW or USER bit the access needs (then the error code says present).
 * The #PF error code, or -1 where Python decides (anything unusual, which it may
 * kill for).
 */
static int32_t refusal(struct fill_table *table, uint32_t which, uint32_t page, int class, uint32_t record,
		       bool sure)
{
	bool write = class % 3 == UC_MEM_WRITE - UC_MEM_READ, user = class >= 3;
	uint32_t grant = (write ? PTE_RW : 0) | (user ? PTE_USER : 0), pde, pte;
	int32_t error = (write ? PF_WRITE : 0) | (user ? PF_USER : 0);

	if (!sure || (record & PTE_PRESENT && (record & grant) == grant) ||
	    !guest_entry(table, pde_at(table, which, page), &pde))
		return -1;
	if (!(pde & PTE_PRESENT))
		return error;
	if (!plain_pde(table, pde) || !guest_entry(table, pte_at(pde, page), &pte))
		return -1;
	if (!(pte & PTE_PRESENT))
		return error;
	return (pte & grant) != grant ? error | PF_PRESENT : -1;
}

/*
 * A refusal the Guest handles, raised as its #PF without Python, as the Python hook
 * raises it (`_raise_in_cpu`): where the Host marked gate 14 for the CPU (`cr2_at`),
 * QEMU noted the access's exact address (exact_fill.c), and no exception is in flight
 * (QEMU would make it a double fault).  cr2 is told in lguest_data, the fault noted for
 * the Switcher's interrupt hook in case interrupts.c cannot deliver it; then the CPU
 * raises it.  False: Python decides, exactly as if this were not here.
 */
uint64_t lguest_exact_fill_address(void);

static bool refuse(struct fill_table *table, uint32_t which, uint32_t page, int class, uint32_t record,
		   bool sure)
{
	int32_t error;
	uint32_t cr2;

	if (!table->cr2_at || !table->exact || table->python_decides ||
	    (uint64_t)table->cr2_at + 4 > table->ram_size ||
	    *(const int32_t *)((const uint8_t *)table->env + table->old_exception_at) != -1)
		return false;
	cr2 = (uint32_t)lguest_exact_fill_address();
	if ((cr2 & ~0xFFFu) != page || (error = refusal(table, which, page, class, record, sure)) < 0)
		return false;
	memcpy(table->ram + table->cr2_at, &cr2, 4);
	table->raised_page = page;
	table->raised_errcode = (uint32_t)error;
	table->raised_cr2 = cr2;
	table->raised_fetch = class % 3 == UC_MEM_FETCH - UC_MEM_READ;
	table->raised = 1;
	table->refused++;
	table->fault_errcode = (uint32_t)error;
	raise_page_fault(table);
	return true;	/* not reached: QEMU unwinds to its CPU loop */
}

/* interrupts.c delivered the #PF this hook raised: nothing is left for Python. */
void lguest_fills_fault_delivered(struct fill_table *table)
{
	table->raised = 0;
}

/*
 * What the shadow's record holds for a page this table has no answer for, as far as
 * this hook knows: the entry its slot keeps (`sure`: the slot is current, so the
 * record holds exactly that; else the table forgot everything since, and the record
 * holds that entry or nothing), or nothing, where the page's bit says so.  False: it
 * may hold an entry this hook does not know.
 */
static bool known_record(struct fill_table *table, uint32_t which, uint32_t page, uint32_t *record,
			 bool *sure)
{
	const struct answer_slot *slot = slot_of(table, which, page);

	if (slot->page == page && slot->pte) {
		*record = slot->pte;
		*sure = slot->generation == table->generation[which];
		return true;
	}
	*record = 0;
	*sure = true;
	return !may_be_recorded(table, which, page);
}

bool lguest_tlb_fill_hook(void *uc, uint64_t vaddr, int type, struct tlb_entry *result, void *data)
{
	struct fill_table *table = data;
	uint32_t page = (uint32_t)vaddr & ~0xFFFu;
	uint32_t which = table->current;
	struct answer_slot *slot = slot_of(table, which, page);
	int class = -2;		/* not asked yet */
	uint32_t record;
	bool answered, sure;

	if (type < UC_MEM_READ || type >= UC_MEM_READ + 3)
		return table->python(uc, vaddr, type, result, NULL);
	if (table->delivering)
		return delivery_fill(table, page, type, result);
	if (current_slot(table, which, page) ||
	    ((class = access_class(table, uc, vaddr, type)) >= 0 && adopt(table, which, page))) {
		if (class == -2)
			class = access_class(table, uc, vaddr, type);
		if (class >= 0 && slot->known & (1u << class)) {
			table->served++;
			slot->tlb_epoch = table->tlb_epoch;
			result->paddr = slot->paddr[class];
			result->perms = slot->perms[class];
			return true;
		}
	}
	/* (class is known here: a miss with no current slot asked it for the adoption) */
	if (class >= 0 && table->pgdir[which] && known_record(table, which, page, &record, &sure) &&
	    (walk(table, which, page, class, record, sure, result) ||
	     refuse(table, which, page, class, record, sure)))
		return true;
	/* The page tables say, while answering, whether this answer may be repeated:
	 * then it is kept here, for the same kind of access from the same ring. */
	table->keep = 0;
	answered = table->python(uc, vaddr, type, result, NULL);
	if (!answered && table->raise_fault)
		raise_page_fault(table);
	if (answered && table->keep && class >= 0)
		learn(table, page, class, result);
	return answered;
}

/* The i-th page of the stack SET_STACK named, from its top down (§6.8). */
static uint32_t stack_page(uint32_t top, uint32_t i)
{
	return (top - 1 - i * 0x1000u) & ~0xFFFu;
}

/*
 * For hypercalls.c (a FLUSH_TLB of everything it serves, after which the page tables pin
 * the stack again, §6.8): would a walk here, of a shadow that records nothing, answer a
 * kernel write to every page of the stack (no kill, no refusal, room to log them)?
 */
bool lguest_fills_can_pin(struct fill_table *table, uint32_t which, uint32_t top, uint32_t pages)
{
	uint32_t pde, pte_gpa, pte;

	if (!table->slot || !table->pgdir[which] || table->records + pages > RECORDS)
		return false;
	for (uint32_t i = 0; i < pages; i++)
		if (!plain_entries(table, which, stack_page(top, i), PTE_RW, &pde, &pte_gpa, &pte))
			return false;
	return true;
}

/* ... and then walk them, as the page tables' `pin_stack` would (its translates are no
 * misses: the counts stay). */
void lguest_fills_pin(struct fill_table *table, uint32_t which, uint32_t top, uint32_t pages)
{
	uint64_t served = table->served, walked = table->walked;
	struct tlb_entry answer;

	for (uint32_t i = 0; i < pages; i++)
		walk(table, which, stack_page(top, i), KERNEL_WRITE, 0, true, &answer);
	table->served = served;
	table->walked = walked;
}

/*
 * For hypercalls.c (a NEW_PGTABLE or SET_STACK it serves): is every page of the stack
 * answered for a kernel write in shadow `which` from what that shadow holds now (not
 * from a re-read: then the page tables' own record may lack the entry)?  Such an
 * answer comes from an entry the shadow holds, present, writable and dirty, so the
 * page tables' own pinning would find nothing to do and no reason to kill.
 */
bool lguest_fills_stack_pinned(struct fill_table *table, uint32_t which, uint32_t top, uint32_t pages)
{
	if (!table->slot)
		return false;
	for (uint32_t i = 0; i < pages; i++) {
		uint32_t page = stack_page(top, i);
		const struct answer_slot *slot = slot_of(table, which, page);

		if (slot->page != page || slot->generation != table->generation[which] || !writes_kernel(slot))
			return false;
	}
	return true;
}

/* Shadow `which` is current, and the emulator's whole TLB was flushed (hypercalls.c,
 * and fills.py after the Switcher's own flushes). */
void lguest_fills_tlb_flushed(struct fill_table *table, uint32_t which)
{
	table->current = which;
	table->tlb_epoch++;
	table->lost_track = 0;
}

/* Shadow `which` lost many entries (a SET_PGD or FLUSH_TLB hypercalls.c serves, and
 * fills.py for the page tables). */
void lguest_fills_forget_all(struct fill_table *table, uint32_t which)
{
	table->generation[which]++;
}
