/*
 * TLB misses the Host has already answered, answered again without Python.
 *
 * Every miss in the emulator's TLB asks the Host's page tables, and a Python
 * callback costs several microseconds: most misses are for pages the current
 * shadow already holds, after the emulator's TLB was flushed (a context
 * switch, a FLUSH_TLB, a SET_PTE of a page it held).  The page tables keep
 * here, per shadow, per page and per kind of access (read, write, fetch;
 * kernel or user), the answer they gave, and drop them exactly where the
 * shadow's entry changes (lguest/host/fills.py).  The rules stay in Python: this hook never decides,
 * it repeats.  Anything not in the table, the Switcher's own pages,
 * virtual-8086 mode, and every miss while the Host has news this hook cannot
 * see (an exit pending, a failed hook, a debugger) go to the Switcher's
 * Python hook, exactly as if this one were not here.  While the CPU delivers a
 * trap itself (interrupts.c) this hook answers alone (`delivery_fill`).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TABLES 5			/* one per shadow, and linear mode's */
#define SLOTS 4096			/* pages remembered; a collision only forgets */
#define CLASSES 7			/* read, write, fetch; +3 from ring 3; where (below) */
#define UC_MEM_READ 16
#define UC_MEM_WRITE 17
#define UC_PROT_READ 1
#define UC_PROT_WRITE 2
#define X86_EFLAGS_VM 0x20000

struct tlb_entry {			/* Unicorn's uc_tlb_entry */
	uint64_t paddr;
	uint32_t perms;
};

typedef bool (*fill_hook)(void *uc, uint64_t vaddr, int type, struct tlb_entry *result, void *data);

struct answer_slot {
	uint64_t generation;		/* valid only in the table's current one */
	uint32_t page;
	uint32_t known;			/* bit per class */
	uint32_t paddr[CLASSES];
	uint32_t perms[CLASSES];
};

struct fill_table {
	volatile int32_t python_decides;	/* the Host has state this hook cannot see */
	int32_t keep;				/* set by the Python hook: its answer may be repeated */
	int (*reg_read)(void *uc, int reg, void *value);	/* uc_reg_read */
	int32_t cs, eflags;			/* UC_X86_REG_CS, UC_X86_REG_EFLAGS */
	uint32_t switcher;			/* the Switcher's pages start here */
	uint32_t state_page;			/* its GDT, TSS and IDT: what the CPU reads while delivering */
	volatile int32_t delivering;		/* interrupts.c has the CPU deliver a trap */
	fill_hook python;			/* the Switcher's own hook */
	uint64_t served;			/* misses answered here */
	uint32_t current;			/* the current shadow's table */
	uint64_t generation[TABLES];		/* bumped: a table forgets every answer */
	struct answer_slot slot[TABLES][SLOTS];
};

/* For the Python side to check its copy of the layout. */
size_t lguest_fills_table_size(void)
{
	return sizeof(struct fill_table);
}

static struct answer_slot *slot_of(struct fill_table *table, uint32_t which, uint32_t page)
{
	return &table->slot[which][(page >> 12) & (SLOTS - 1)];
}

static void learn(struct fill_table *table, uint32_t page, int class, const struct tlb_entry *answer)
{
	uint32_t which = table->current;
	struct answer_slot *slot = slot_of(table, which, page);

	if (slot->generation != table->generation[which] || slot->page != page) {
		slot->generation = table->generation[which];
		slot->page = page;
		slot->known = 0;
	}
	slot->paddr[class] = (uint32_t)answer->paddr;
	slot->perms[class] = answer->perms;
	slot->known |= 1u << class;
}

void lguest_fills_learn(struct fill_table *table, uint32_t page, int class, uint32_t paddr, uint32_t perms)
{
	struct tlb_entry answer = { .paddr = paddr, .perms = perms };

	learn(table, page, class, &answer);
}

void lguest_fills_forget(struct fill_table *table, uint32_t which, uint32_t page)
{
	struct answer_slot *slot = slot_of(table, which, page);

	if (slot->page == page)
		slot->known = 0;
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
 * While the CPU delivers a trap (interrupts.c) its accesses are the kernel's
 * own (QEMU's cpu_ld/st*_kernel), though CS may still say ring 3: it reads the
 * Switcher's GDT, TSS and IDT and writes the frame on the Guest's kernel stack.
 * interrupts.c delivers only when every page it will write is answered here,
 * so nothing may go to Python now (the Python hook would class the access by
 * CS); a refusal would stop the emulator, and cannot happen.
 */
static bool delivery_fill(struct fill_table *table, uint32_t page, int type, struct tlb_entry *result)
{
	struct answer_slot *slot = slot_of(table, table->current, page);
	int class = type - UC_MEM_READ;

	if (page == table->state_page && type == UC_MEM_READ) {
		result->paddr = page;
		result->perms = UC_PROT_READ;
		return true;
	}
	if (slot->generation != table->generation[table->current] || slot->page != page ||
	    !(slot->known & (1u << class)))
		return false;
	table->served++;
	result->paddr = slot->paddr[class];
	result->perms = slot->perms[class];
	return true;
}

/* The Guest-physical page a kernel write to `vaddr` was answered with, if one was. */
bool lguest_fills_kernel_write(struct fill_table *table, uint32_t vaddr, uint32_t *paddr)
{
	uint32_t page = vaddr & ~0xFFFu;
	struct answer_slot *slot = slot_of(table, table->current, page);
	int class = UC_MEM_WRITE - UC_MEM_READ;

	if (slot->generation != table->generation[table->current] || slot->page != page ||
	    !(slot->known & (1u << class)) || !(slot->perms[class] & UC_PROT_WRITE))
		return false;
	*paddr = slot->paddr[class];
	return true;
}

/* The Guest-physical page any access to `vaddr` was answered with, if one was. */
bool lguest_fills_known(struct fill_table *table, uint32_t vaddr, uint32_t *paddr)
{
	uint32_t page = vaddr & ~0xFFFu;
	struct answer_slot *slot = slot_of(table, table->current, page);

	if (slot->generation != table->generation[table->current] || slot->page != page || !slot->known)
		return false;
	*paddr = slot->paddr[__builtin_ctz(slot->known)];
	return true;
}

void lguest_fills_delivering(struct fill_table *table, bool delivering)
{
	table->delivering = delivering;
}

bool lguest_tlb_fill_hook(void *uc, uint64_t vaddr, int type, struct tlb_entry *result, void *data)
{
	struct fill_table *table = data;
	uint32_t page = (uint32_t)vaddr & ~0xFFFu;
	uint32_t which = table->current;
	struct answer_slot *slot = slot_of(table, which, page);
	int class = -2;		/* not asked yet */
	bool answered;

	if (type < UC_MEM_READ || type >= UC_MEM_READ + 3)
		return table->python(uc, vaddr, type, result, NULL);
	if (table->delivering)
		return delivery_fill(table, page, type, result);
	if (slot->generation == table->generation[which] && slot->page == page) {
		class = access_class(table, uc, vaddr, type);
		if (class >= 0 && slot->known & (1u << class)) {
			table->served++;
			result->paddr = slot->paddr[class];
			result->perms = slot->perms[class];
			return true;
		}
	}
	/* The page tables say, while answering, whether this answer may be repeated:
	 * then it is kept here, for the same kind of access from the same ring. */
	table->keep = 0;
	answered = table->python(uc, vaddr, type, result, NULL);
	if (answered && table->keep) {
		if (class == -2)
			class = access_class(table, uc, vaddr, type);
		if (class >= 0)
			learn(table, page, class, result);
	}
	return answered;
}
