/*
 * The common hypercalls, served inside the emulator's interrupt hook
 * (trap_hook.c) without an exit and without Python.
 *
 * A fork is a storm of SET_PTE hypercalls, each of which used to stop the
 * emulator, run a Python handler and start it again.  Here the hook serves
 * FLUSH_ASYNC and SET_PTE, sync or queued in the async ring, SEND_INTERRUPTS
 * when no interrupt waits, SET_PGD of a directory no shadow holds, and
 * NEW_PGTABLE to a directory a shadow holds, SET_STACK to a stack it holds and
 * LOAD_TLS (a context switch), TS (lazy FPU switching), from a
 * table the Host keeps (native_hypercalls.py): where the ring is, the Host's
 * cursor into it (one copy, shared with Python), and what SET_PTE's rule needs
 * to know of the shadow page tables (which directory each shadow holds, where
 * the kernel starts, where RAM and the device windows end, the entry format).
 *
 * SET_PTE's effect on the emulator happens here at once: the fill answers of
 * that page are forgotten in every shadow it touches, the fill hook learns the
 * entry those shadows record now (fills.c, which answers from it), and the page
 * leaves the emulator's TLB (QEMU's own tlb_flush_page).  Its effect on the
 * Python shadows is logged, and the page tables replay the log before they
 * next read or change a shadow; so is a NEW_PGTABLE's switch, in its place
 * among them, after the emulator's whole TLB went and the fill hook turned to
 * the new shadow's answers.  A SET_PTE that touches no shadow needs
 * neither: most of a fork's are for the child's directory, not yet shadowed.
 *
 * Everything unusual goes to the Switcher's Python hook exactly as if this
 * one were not there, and nothing here has changed anything for the call it
 * passes on: a call not served here, a ring slot outside RAM, a vaddr in the
 * Switcher's pages, a PTE whose prefill would kill the Guest, a full log, a
 * hypercall from another ring or from virtual-8086 mode, and every hypercall
 * while the Host's hint says an interrupt waits (a hypercall is where the Host
 * delivers it).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define SHADOWS 4			/* page_tables.SHADOW_SLOTS */
#define LOG_ENTRIES 1024
#define CALLS 32			/* counts by call number below this */
#define REGS 7
#define X86_EFLAGS_VM 0x20000
#define TLS_ENTRIES 3
#define DESC_S (1u << 12)		/* a code or data segment, not a system descriptor */
#define DESC_DPL_SHIFT 13
#define DESC_ACCESSED (1u << 8)
#define CR0_TS (1u << 3)

enum { EAX, EBX, ECX, EDX, ESI, CS, EFLAGS };

enum { LOGGED_SET_PTE, LOGGED_SWITCH, LOGGED_SET_PGD, LOGGED_FLUSH_USER, LOGGED_FLUSH_ALL };

struct logged_change {			/* one change the shadows have yet to see, in order */
	uint32_t what;			/* LOGGED_SET_PTE; LOGGED_SWITCH to pgdir's shadow; LOGGED_SET_PGD
					 * of pgdir's entry `vaddr`; LOGGED_FLUSH_USER (FLUSH_TLB 0);
					 * LOGGED_FLUSH_ALL (FLUSH_TLB 1) */
	uint32_t pgdir;
	uint32_t vaddr;
	uint32_t unused;
	uint64_t pte;
};

struct fill_table;			/* fills.c */
void lguest_fills_set_pte(struct fill_table *table, uint32_t which, uint32_t page, uint32_t record);
bool lguest_fills_stack_pinned(struct fill_table *table, uint32_t which, uint32_t top, uint32_t pages);
void lguest_fills_tlb_flushed(struct fill_table *table, uint32_t which);
void lguest_fills_forget_all(struct fill_table *table, uint32_t which);
bool lguest_fills_can_pin(struct fill_table *table, uint32_t which, uint32_t top, uint32_t pages);
void lguest_fills_pin(struct fill_table *table, uint32_t which, uint32_t top, uint32_t pages);
void lguest_fills_unrecorded(struct fill_table *table, uint32_t which, uint64_t start, uint64_t end);

struct hcall_table {
	/* The machine, set once. */
	void *uc;
	int (*reg_read_batch)(void *uc, int *regs, void **values, int count);	/* uc_reg_read_batch */
	int (*reg_read)(void *uc, int reg, void *value);			/* uc_reg_read */
	int (*reg_write)(void *uc, int reg, const void *value);		/* uc_reg_write */
	int32_t cr0;			/* UC_X86_REG_CR0 */
	int32_t regs[REGS];		/* UC_X86_REG_ ids of eax, ebx, ecx, edx, esi, cs, eflags */
	int32_t guest_pl;		/* the ring hypercalls come from */
	void (*tlb_flush_page)(void *cpu, uint64_t page);	/* QEMU's, on the engine's CPU */
	void (*tlb_flush)(void *cpu);				/* QEMU's, the whole TLB */
	void *cpu;
	struct fill_table *fills;
	uint8_t *ram;
	uint64_t ram_size;
	/* The ABI, set once. */
	uint32_t flush_async, set_pte, set_pgd, send_interrupts, new_pgtable, set_stack, load_tls, flush_tlb, ts;
	uint8_t *gdt;			/* the GDT the CPU reads (in the Switcher's STATE_PAGE) */
	uint32_t tls_min;		/* LOAD_TLS's three entries start here */
	uint32_t max_stack_pages;	/* SET_STACK's limit */
	uint8_t *tss;			/* the TSS the CPU reads (in the Switcher's STATE_PAGE) */
	uint32_t tss_esp1, tss_ss1;	/* where in it a trap from ring 3 finds the ring-1 stack */
	uint32_t top_entries;		/* SET_PGD's index must be below this */
	uint32_t irq_pending_offset;	/* the Host's hint in lguest_data: an irq waits */
	uint32_t blocked_offset;	/* lguest_data's blocked_interrupts */
	const uint32_t *irqs_pending;	/* the pending irqs, where C keeps them (irqs.c; NULL: only the hint) */
	uint32_t status_offset, slots_offset, slot_size, ring_size;
	uint32_t free;			/* a free slot's status byte */
	uint32_t switcher;		/* the Switcher's pages start here */
	uint64_t present, accessed, dirty, pse;
	/* What the Host says now. */
	int32_t ready;			/* after INIT, no tracer */
	uint32_t lguest_data;
	uint32_t next_hcall;		/* the Host's cursor into the ring: the only copy */
	uint32_t kernel_address;
	uint64_t pfn_mask, nx_mask;	/* the entry format; nx_mask 0: no high half */
	uint64_t pfn_limit, device_limit;
	uint32_t shadows;		/* shadows 0..shadows-1 are in use */
	uint32_t current;		/* the current shadow */
	uint32_t pgdir[SHADOWS];
	uint32_t filled;		/* shadows known to hold entries, one bit each */
	uint32_t ss1, esp1;		/* SET_STACK's stack: the only copy, Python's too */
	uint32_t stack_top, stack_pages;	/* and its pages, which must stay mapped */
	uint32_t task_switched;		/* TS's flag: the only copy, Python's too */
	/* What this file did. */
	uint32_t tls_loaded;		/* a LOAD_TLS the Host's copy of the GDT has yet to see */
	uint32_t tls[TLS_ENTRIES][2];	/* its three descriptors, as the Host keeps them */
	uint64_t served[CALLS];		/* by call number */
	uint64_t total;			/* all of them */
	uint32_t logged;
	struct logged_change log[LOG_ENTRIES];
};

/* For the Python side to check its copy of the layout. */
size_t lguest_hcall_table_size(void)
{
	return sizeof(struct hcall_table);
}

static bool in_ram(const struct hcall_table *t, uint64_t gpa, uint64_t size)
{
	return gpa + size <= t->ram_size;
}

/* The shadows of this directory, one bit each. */
static uint32_t shadows_of(const struct hcall_table *t, uint32_t pgdir)
{
	uint32_t held = 0;

	for (uint32_t i = 0; i < t->shadows && i < SHADOWS; i++)
		if (t->pgdir[i] == pgdir)
			held |= 1u << i;
	return held;
}

/* The shadows a SET_PTE of this vaddr in this directory touches: every shadow for a
 * kernel address (the kernel half is shared), else that directory's. */
static uint32_t shadows_touched(const struct hcall_table *t, uint32_t pgdir, uint32_t vaddr)
{
	uint32_t in_use = t->shadows < SHADOWS ? (1u << t->shadows) - 1 : (1u << SHADOWS) - 1;

	return vaddr >= t->kernel_address ? in_use : shadows_of(t, pgdir);
}

/*
 * Would installing this PTE at once kill the Guest?  A prefill of a 4 MiB page
 * or of a page beyond RAM does (the Host's Python says so, with the message);
 * a device window's page is only dropped.
 */
static bool prefill_would_kill(const struct hcall_table *t, uint64_t pte)
{
	uint64_t pfn = (pte & t->pfn_mask) >> 12;

	if (!(pte & t->present) || !(pte & (t->accessed | t->dirty)))
		return false;
	if (pte & t->pse)
		return true;
	return pfn >= t->pfn_limit && pfn >= t->device_limit;
}

/* A change the page tables replay, in its place among the others. */
static void log_change(struct hcall_table *t, uint32_t what, uint32_t pgdir, uint32_t vaddr, uint64_t pte)
{
	struct logged_change *entry = &t->log[t->logged++];

	entry->what = what;
	entry->pgdir = pgdir;
	entry->vaddr = vaddr;
	entry->pte = pte;
}

/* The emulator's whole TLB goes; the fill hook answers from the current shadow. */
static void flush_whole_tlb(struct hcall_table *t)
{
	lguest_fills_tlb_flushed(t->fills, t->current);
	t->tlb_flush(t->cpu);
}

/* SET_PTE (the rule of page_tables.PageTables.set_pte); false: Python must do it. */
static bool set_pte(struct hcall_table *t, uint32_t pgdir, uint32_t vaddr, uint32_t lo, uint32_t hi)
{
	uint64_t pte = lo | (t->nx_mask ? (uint64_t)hi << 32 : 0);
	uint32_t page = vaddr & ~0xFFFu;
	uint32_t touched;
	bool prefilled;

	if (vaddr >= t->switcher)
		return false;
	touched = shadows_touched(t, pgdir, vaddr);
	if (!touched)
		return true;	/* no shadow holds it: none of the Host's business */
	if (prefill_would_kill(t, pte) || t->logged >= LOG_ENTRIES)
		return false;
	/* What the shadows record now: the PTE if prefilled (neither a kill, checked above,
	 * nor a device window's), else nothing.  A shadow that may have lost its last entry
	 * is no longer known to hold any. */
	prefilled = pte & t->present && pte & (t->accessed | t->dirty) &&
		    ((pte & t->pfn_mask) >> 12) < t->pfn_limit;
	if (prefilled)
		t->filled |= touched;
	else
		t->filled &= ~touched;
	log_change(t, LOGGED_SET_PTE, pgdir, vaddr, pte);
	for (uint32_t i = 0; i < SHADOWS; i++)
		if (touched & (1u << i))
			lguest_fills_set_pte(t->fills, i, page, prefilled ? (uint32_t)pte : 0);
	if (touched & (1u << t->current))
		t->tlb_flush_page(t->cpu, page);
	return true;
}

/*
 * NEW_PGTABLE of a directory a shadow already holds (its format was checked when
 * that shadow was made): the emulator's whole TLB goes, the fill hook answers from
 * that shadow, and the switch is logged in order with the SET_PTEs around it.  The
 * page tables pin the stack again only in an empty shadow: C serves a shadow known
 * to hold entries, or one where the stack is pinned already.  A directory no shadow
 * holds (a new shadow, linear mode's end) is Python's.
 */
static bool new_pgtable(struct hcall_table *t, uint32_t pgdir)
{
	uint32_t which;

	for (which = 0; which < t->shadows && which < SHADOWS; which++)
		if (t->pgdir[which] == pgdir)
			break;
	if (which == t->shadows || which == SHADOWS || t->logged >= LOG_ENTRIES)
		return false;
	if (!(t->filled & (1u << which)) &&
	    !lguest_fills_stack_pinned(t->fills, which, t->stack_top, t->stack_pages))
		return false;
	log_change(t, LOGGED_SWITCH, pgdir, 0, 0);
	t->current = which;
	flush_whole_tlb(t);
	return true;
}

/*
 * SET_PGD (§6.7): every shadow of that directory forgets its entries under the top-level
 * entry (all of its fill answers go: a generation; the fill hook learns it records none
 * there), and if the current one did, the emulator's whole TLB goes too.  An index
 * beyond the top level (a kill): Python.
 */
static bool set_pgd(struct hcall_table *t, uint32_t pgdir, uint32_t index)
{
	uint64_t span;		/* what one top-level entry maps */
	uint32_t touched;

	if (index >= t->top_entries)
		return false;
	span = (1ull << 32) / t->top_entries;
	touched = shadows_of(t, pgdir);
	if (!touched)
		return true;	/* no shadow holds it: nothing to do */
	if (t->logged >= LOG_ENTRIES)
		return false;
	log_change(t, LOGGED_SET_PGD, pgdir, index, 0);
	for (uint32_t i = 0; i < SHADOWS; i++) {
		if (touched & (1u << i)) {
			lguest_fills_forget_all(t->fills, i);
			lguest_fills_unrecorded(t->fills, i, index * span, (index + 1) * span);
		}
	}
	t->filled &= ~touched;
	if (touched & (1u << t->current))
		flush_whole_tlb(t);
	return true;
}

/*
 * FLUSH_TLB (§6.5) of everything: every shadow forgets every entry (the fill hook learns
 * they record none), the emulator's whole TLB goes, and the stack is pinned again in the
 * current shadow, as the page tables' `clear_all` does: the fill hook walks its pages for
 * a kernel write, and logs them after the flush.  A stack page a walk could not answer
 * (the page tables would kill, or PAE tables): Python, before anything changed.
 */
static bool flush_everything(struct hcall_table *t)
{
	if (!lguest_fills_can_pin(t->fills, t->current, t->stack_top, t->stack_pages))
		return false;
	log_change(t, LOGGED_FLUSH_ALL, 0, 0, 0);
	for (uint32_t i = 0; i < SHADOWS; i++) {
		lguest_fills_forget_all(t->fills, i);
		lguest_fills_unrecorded(t->fills, i, 0, 1ull << 32);
	}
	t->filled = 0;
	flush_whole_tlb(t);
	lguest_fills_pin(t->fills, t->current, t->stack_top, t->stack_pages);
	if (t->stack_pages)
		t->filled = 1u << t->current;
	return true;
}

/* FLUSH_TLB (§6.5) of the current space's user part (the fill hook learns it records
 * none there), or of everything. */
static bool flush_tlb(struct hcall_table *t, uint32_t everything)
{
	if (t->logged >= LOG_ENTRIES)
		return false;
	if (everything)
		return flush_everything(t);
	log_change(t, LOGGED_FLUSH_USER, 0, 0, 0);
	lguest_fills_forget_all(t->fills, t->current);
	lguest_fills_unrecorded(t->fills, t->current, 0, t->kernel_address);
	t->filled &= ~(1u << t->current);
	flush_whole_tlb(t);
	return true;
}

/*
 * SET_STACK (§6.8) whose pages the current shadow already holds for a kernel write:
 * the Host's copy and the TSS change, and the page tables' pinning would find nothing
 * to do.  A bad segment or page count (a kill) and a stack not yet pinned: Python.
 */
static bool set_stack(struct hcall_table *t, uint32_t ss, uint32_t esp, uint32_t pages)
{
	uint16_t ss16 = (uint16_t)ss;

	if ((ss & 3) != (uint32_t)t->guest_pl || pages > t->max_stack_pages ||
	    !lguest_fills_stack_pinned(t->fills, t->current, esp, pages))
		return false;
	t->stack_top = esp;
	t->stack_pages = pages;
	t->ss1 = ss16;		/* a selector: the upper half is not the TSS's */
	t->esp1 = esp;
	memcpy(t->tss + t->tss_esp1, &esp, 4);
	memcpy(t->tss + t->tss_ss1, &ss16, 2);
	return true;
}

/* The Guest's descriptor as the Host keeps it (segments.fix_descriptor): privilege 0
 * becomes the Guest kernel's ring, and it is marked accessed (the GDT is read-only). */
static uint32_t fixed_descriptor(const struct hcall_table *t, uint32_t hi)
{
	if (((hi >> DESC_DPL_SHIFT) & 3) == 0)
		hi |= (uint32_t)t->guest_pl << DESC_DPL_SHIFT;
	return hi | DESC_ACCESSED;
}

/* Can the Switcher's entry gate run in this descriptor, were it loaded into CS
 * (switcher._gate_runs_in)?  If not, the Switcher must note it: Python. */
static bool gate_runs_in(uint32_t lo, uint32_t hi)
{
	bool code = (hi & 0x1800) == 0x1800;

	return !code || (lo == 0x0000FFFF && (hi & 0xFFCF00FF) == 0x00CF0000);
}

/*
 * LOAD_TLS (§5.3): three descriptors from Guest memory into the real GDT, fixed up,
 * a system descriptor never installed (segments.installable); the Host's copy
 * takes them when it next looks (segments.py).  Memory outside RAM (a kill) and a
 * code segment the entry gate cannot run in: Python, nothing changed.
 */
static bool load_tls(struct hcall_table *t, uint32_t gpa)
{
	uint32_t theirs[TLS_ENTRIES][2], real[TLS_ENTRIES][2];

	if (!in_ram(t, gpa, sizeof(theirs)))
		return false;
	memcpy(theirs, t->ram + gpa, sizeof(theirs));
	for (int i = 0; i < TLS_ENTRIES; i++) {
		theirs[i][1] = fixed_descriptor(t, theirs[i][1]);
		real[i][0] = theirs[i][1] & DESC_S ? theirs[i][0] : 0;
		real[i][1] = theirs[i][1] & DESC_S ? theirs[i][1] : 0;
		if (!gate_runs_in(real[i][0], real[i][1]))
			return false;
	}
	memcpy(t->tls, theirs, sizeof(theirs));
	memcpy(t->gdt + 8 * t->tls_min, real, sizeof(real));
	t->tls_loaded = 1;
	return true;
}

/*
 * TS (§7.5): the Guest wants CR0.TS set (or clear), so that its next FPU instruction
 * raises #NM, which the Host reflects to it while this flag says it asked.  The flag
 * and the CPU's CR0 change together; a CPU that refuses either: Python.
 */
static bool task_switched(struct hcall_table *t, uint32_t ts)
{
	uint64_t cr0 = 0;

	if (t->reg_read(t->uc, t->cr0, &cr0))
		return false;
	cr0 = ts ? cr0 | CR0_TS : cr0 & ~(uint64_t)CR0_TS;
	if (t->reg_write(t->uc, t->cr0, &cr0))
		return false;
	t->task_switched = ts;
	return true;
}

/* Is this a call this file may serve (it still may pass it on)? */
static bool served_here(const struct hcall_table *t, uint32_t nr)
{
	return nr == t->flush_async || nr == t->set_pte || nr == t->set_pgd ||
	       nr == t->send_interrupts || nr == t->new_pgtable || nr == t->set_stack || nr == t->load_tls ||
	       nr == t->flush_tlb || nr == t->ts;
}

/* One call, from the registers or a ring slot; false: Python must do it. */
static bool serve(struct hcall_table *t, const uint32_t args[5])
{
	bool done;

	if (args[0] == t->flush_async || args[0] == t->send_interrupts)
		done = true;	/* draining the ring was all of it; no irq waits (the hint) */
	else if (args[0] == t->set_pgd)
		done = set_pgd(t, args[1], args[2]);
	else if (args[0] == t->set_pte)
		done = set_pte(t, args[1], args[2], args[3], args[4]);
	else if (args[0] == t->new_pgtable)
		done = new_pgtable(t, args[1]);
	else if (args[0] == t->set_stack)
		done = set_stack(t, args[1], args[2], args[3]);
	else if (args[0] == t->load_tls)
		done = load_tls(t, args[1]);
	else if (args[0] == t->flush_tlb)
		done = flush_tlb(t, args[1]);
	else if (args[0] == t->ts)
		done = task_switched(t, args[1]);
	else
		done = false;
	if (done) {
		t->served[args[0] % CALLS]++;	/* only the served calls, all below CALLS */
		t->total++;
	}
	return done;
}

/* The async ring from the Host's cursor on, in order, while every slot is served here. */
static bool drain_ring(struct hcall_table *t)
{
	uint64_t status = (uint64_t)t->lguest_data + t->status_offset;

	for (uint32_t done = 0; done < t->ring_size; done++) {
		uint32_t n = t->next_hcall;
		uint64_t slot = (uint64_t)t->lguest_data + t->slots_offset + (uint64_t)n * t->slot_size;
		uint32_t args[5];

		if (!in_ram(t, status + n, 1) || !in_ram(t, slot, sizeof(args)))
			return false;
		if (t->ram[status + n] == t->free)
			return true;
		for (int i = 0; i < 5; i++)
			args[i] = *(uint32_t *)(t->ram + slot + 4 * i);
		if (!serve(t, args))
			return false;
		t->next_hcall = (n + 1) % t->ring_size;
		t->ram[status + n] = (uint8_t)t->free;
	}
	return true;
}

/*
 * Does an irq wait that the Guest could take?  A hypercall is where the Host
 * delivers one (the Guest's SEND_INTERRUPTS after it unmasked an irq, above
 * all): then Python runs the call.  The Host's hint says so where interrupts
 * were off; where C keeps the pending irqs, an irq the Guest just unmasked
 * counts too.
 */
static bool irq_waits(const struct hcall_table *t)
{
	uint64_t hint = (uint64_t)t->lguest_data + t->irq_pending_offset;
	uint64_t blocked = (uint64_t)t->lguest_data + t->blocked_offset;

	if (!in_ram(t, hint, 4) || *(uint32_t *)(t->ram + hint))
		return true;
	if (t->irqs_pending == NULL)
		return false;
	if (!in_ram(t, blocked, 4))
		return true;
	return __atomic_load_n(t->irqs_pending, __ATOMIC_ACQUIRE) & ~*(uint32_t *)(t->ram + blocked);
}

bool lguest_native_hypercall(void *uc, struct hcall_table *t)
{
	uint64_t values[REGS] = {0};
	void *pointers[REGS];
	uint32_t args[5];

	if (!t->ready)
		return false;
	for (int i = 0; i < REGS; i++)
		pointers[i] = &values[i];
	if (t->reg_read_batch(uc, t->regs, pointers, REGS))
		return false;
	if ((values[CS] & 3) != (uint64_t)t->guest_pl || values[EFLAGS] & X86_EFLAGS_VM)
		return false;
	for (int i = 0; i < 5; i++)
		args[i] = (uint32_t)values[EAX + i];
	if (!served_here(t, args[0]))
		return false;	/* before the ring: Python drains it, then runs the call */
	if (irq_waits(t))
		return false;
	return drain_ring(t) && serve(t, args);
}
