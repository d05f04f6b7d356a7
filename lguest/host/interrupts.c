/*
 * Traps the emulated CPU delivers itself, through the real IDT in the
 * Switcher's STATE_PAGE, from inside the emulator's interrupt hook
 * (trap_hook.c): lguest's direct traps, and the system calls it reflected
 * through an interrupt gate.
 *
 * The rules stay in Python (interrupts.py): it marks, per vector, whether the
 * CPU may deliver it (`kind`) and writes the gate it should use into the real
 * IDT, exactly where the Guest's IDT changes.  What this file decides is only
 * whether this one delivery is safe: every access QEMU's delivery makes must be
 * answered without Python (the Switcher's GDT, TSS and IDT, and the frame's
 * pages on the Guest's kernel stack, which the C fill hook knows), the segments
 * it loads must be the Guest kernel's flat ones, and the frame must land where
 * the Python path would write it.  Anything else goes to Python, which then
 * does what it always did.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define IDT_ENTRIES 256
#define GDT_ENTRIES 32
#define GUEST_PL 1
#define X86_EFLAGS_IF 0x200
#define HF_CPL_MASK 3
#define HF_VM_MASK (1u << 17)		/* QEMU's hflags copy of EFLAGS.VM */
#define DESC_B_MASK (1u << 22)		/* a 32-bit segment */
#define DESC_PRESENT 0x8000
#define SEG_CS 1			/* QEMU's env->segs[] */
#define SEG_SS 2
#define PAGE_MASK 0xFFFu

enum gate_kind {
	ASK_PYTHON,
	DIRECT,		/* a trap gate lguest sent straight to the Guest */
	REFLECT_INT,	/* an interrupt gate, reflected when an `int n` raised it */
	REFLECT_FAULT,	/* a page fault, reflected through the Guest's trap gate */
	REFLECT_FAULT_IRQS_OFF,	/* ... through its interrupt gate */
};

struct fill_table;	/* fills.c */
bool lguest_fills_kernel_write(struct fill_table *table, uint32_t vaddr, uint32_t *paddr);
bool lguest_fills_known(struct fill_table *table, uint32_t vaddr, uint32_t *paddr);
void lguest_fills_delivering(struct fill_table *table, bool delivering);
void lguest_fills_fault_delivered(struct fill_table *table);

struct segment_cache {			/* QEMU's SegmentCache */
	uint32_t selector;
	uint64_t base;
	uint32_t limit;
	uint32_t flags;
};

struct gate_table {
	uint8_t kind[IDT_ENTRIES];		/* enum gate_kind, per vector */
	void *cpu;				/* the engine's CPUState */
	uint8_t *env;				/* its CPUX86State */
	void (*do_interrupt)(void *cpu);	/* x86_cpu_do_interrupt */
	int (*reg_read)(void *uc, int reg, void *value);	/* uc_reg_read */
	int32_t reg_eip, reg_esp;		/* UC_X86_REG_EIP, UC_X86_REG_ESP */
	uint32_t hflags_at, is_int_at, segs_at;	/* offsets in env */
	struct fill_table *fills;
	uint8_t *ram;				/* Guest-physical 0, in our process */
	uint32_t ram_size;
	const uint8_t *state_page;		/* the Switcher's GDT, TSS and IDT */
	uint32_t gdt_at, tss_at, idt_at;	/* their offsets in it */
	uint32_t kernel_cs;			/* every gate's selector */
	uint32_t switcher;			/* the Guest's EIP is always below */
	uint32_t irq_enabled;			/* lguest_data.irq_enabled, Guest-physical */
	uint64_t direct, reflected;		/* delivered here (--stats) */
};

static uint32_t load32(const uint8_t *at)
{
	uint32_t value;

	memcpy(&value, at, sizeof(value));
	return value;
}

static void store32(uint8_t *at, uint32_t value)
{
	memcpy(at, &value, sizeof(value));
}

static uint64_t reg(const struct gate_table *table, void *uc, int which)
{
	uint64_t value = 0;

	table->reg_read(uc, which, &value);
	return value;
}

static const struct segment_cache *segment(const struct gate_table *table, int which)
{
	return (const struct segment_cache *)(table->env + table->segs_at) + which;
}

/*
 * A GDT selector of the Guest kernel's own kind: ring 1, present, flat (base
 * 0, 4 GiB, 32-bit), of the type asked.  QEMU loads it from the GDT while it
 * delivers; anything it could refuse, or map elsewhere than the Python path
 * does, is left to Python.
 */
static bool flat_kernel_segment(const struct gate_table *table, uint32_t selector, uint32_t type_mask,
				uint32_t type)
{
	const uint8_t *descriptor;
	uint32_t lo, hi;

	if (selector & 4 || (selector & 3) != GUEST_PL || selector >> 3 >= GDT_ENTRIES)
		return false;
	descriptor = table->state_page + table->gdt_at + 8 * (selector >> 3);
	lo = load32(descriptor);
	hi = load32(descriptor + 4);
	return lo == 0x0000FFFF && (hi & 0xFFCF00FF) == 0x00CF0000 && hi & DESC_PRESENT &&
	       ((hi >> 13) & 3) == GUEST_PL && (hi & type_mask) == type;
}

#define CODE_SEGMENT 0x1C00, 0x1800	/* S, code, not conforming */
#define STACK_SEGMENT 0x1E00, 0x1200	/* S, data, writable, not expand-down */

/* A segment the CPU holds now that is flat from 0 and 32-bit, as the Python path assumes. */
static bool flat_now(const struct segment_cache *cache)
{
	return cache->base == 0 && cache->limit == 0xFFFFFFFF && cache->flags & DESC_B_MASK;
}

/*
 * Where the frame of `bytes` below `esp` goes, in our process; NULL if the
 * fill hook could not answer the CPU's writes there, or the Python path would
 * write it elsewhere: it translates `esp` once and writes the frame
 * Guest-physically below it, so the pages must be contiguous and in RAM.
 */
static uint8_t *frame_in_ram(struct gate_table *table, uint32_t esp, uint32_t bytes)
{
	uint32_t low = esp - bytes, high = esp - 1, at_low, at_high, at_esp;

	if (esp < bytes || !lguest_fills_kernel_write(table->fills, low, &at_low) ||
	    !lguest_fills_kernel_write(table->fills, high, &at_high))
		return NULL;
	at_low += low & PAGE_MASK;
	at_high += high & PAGE_MASK;
	if (at_high - at_low != bytes - 1 || (uint64_t)at_low + bytes > table->ram_size)
		return NULL;
	if (!(esp & PAGE_MASK) &&
	    (!lguest_fills_known(table->fills, esp, &at_esp) || at_esp != at_high + 1))
		return NULL;
	return table->ram + at_low;
}

/* Is this an exception that pushes an error code (QEMU's list, and the spec's)? */
static bool has_error_code(uint32_t vector)
{
	return vector == 8 || (vector >= 10 && vector <= 14) || vector == 17;
}

/*
 * Clear the "the CPU is delivering" note: a fault inside QEMU's delivery
 * unwinds past us (siglongjmp) and comes back through the interrupt hook,
 * which calls this first.
 */
void lguest_native_trap_over(struct gate_table *table)
{
	lguest_fills_delivering(table->fills, false);
}

/*
 * Where the frame goes, in our process, if the CPU may deliver through `gate` now
 * without Python: the Guest at ring 1 or 3 (never virtual-8086 mode, never in the
 * Switcher's pages), the kernel's flat code segment, the stack the CPU will switch
 * to flat, and every page the frame touches one the fill hook answers.  NULL: ask
 * Python.  `words`: the frame's size, in 32-bit words.
 */
uint8_t *lguest_delivery_frame(struct gate_table *table, void *uc, uint32_t hflags, uint32_t words)
{
	uint32_t cpl = hflags & HF_CPL_MASK, esp;

	if (hflags & HF_VM_MASK || (cpl != GUEST_PL && cpl != 3) ||
	    reg(table, uc, table->reg_eip) >= table->switcher ||
	    !flat_kernel_segment(table, table->kernel_cs, CODE_SEGMENT))
		return NULL;
	if (cpl == 3) {
		/* To ring 1: onto SET_STACK's stack, from the TSS as the CPU reads it. */
		const uint8_t *tss = table->state_page + table->tss_at;

		if (!flat_kernel_segment(table, load32(tss + 16) & 0xFFFF, STACK_SEGMENT))
			return NULL;
		esp = load32(tss + 12);
	} else {
		if (segment(table, SEG_CS)->selector != table->kernel_cs ||
		    !flat_now(segment(table, SEG_CS)) || !flat_now(segment(table, SEG_SS)))
			return NULL;
		esp = (uint32_t)reg(table, uc, table->reg_esp);
	}
	return frame_in_ram(table, esp, 4 * words);
}

/* The frame's size in words: from ring 3 the old SS:ESP too, and an error code. */
uint32_t lguest_frame_words(uint32_t hflags, bool error_code)
{
	return 3 + 2 * ((hflags & HF_CPL_MASK) == 3) + error_code;
}

uint32_t lguest_cpu_hflags(const struct gate_table *table)
{
	return load32(table->env + table->hflags_at);
}

bool lguest_native_trap(void *uc, uint32_t vector, struct gate_table *table)
{
	uint32_t hflags, irq_enabled = 0;
	const uint8_t *gate;
	bool software, error_code;
	uint8_t *frame;
	int kind;

	if (vector >= IDT_ENTRIES || (kind = table->kind[vector]) == ASK_PYTHON)
		return false;
	hflags = lguest_cpu_hflags(table);
	software = load32(table->env + table->is_int_at) != 0;
	error_code = !software && has_error_code(vector);
	gate = table->state_page + table->idt_at + 8 * vector;
	/* An `int n` the gate forbids is Python's #GP, with EIP at the `int`; QEMU's
	 * would point past it.  And QEMU pushes no error code for an `int n`. */
	if ((kind == REFLECT_INT && !software) || (kind >= REFLECT_FAULT && software) ||
	    (software && ((hflags & HF_CPL_MASK) > ((load32(gate + 4) >> 13) & 3) || has_error_code(vector))))
		return false;
	frame = lguest_delivery_frame(table, uc, hflags, lguest_frame_words(hflags, error_code));
	if (frame == NULL)
		return false;
	if (kind != DIRECT) {
		if ((uint64_t)table->irq_enabled + 4 > table->ram_size)
			return false;
		irq_enabled = load32(table->ram + table->irq_enabled);
	}

	lguest_fills_delivering(table->fills, true);
	table->do_interrupt(table->cpu);
	lguest_fills_delivering(table->fills, false);
	if (kind >= REFLECT_FAULT)
		lguest_fills_fault_delivered(table->fills);

	if (kind == DIRECT) {
		table->direct++;
	} else {
		/*
		 * lguest's reflection: the real gate is a trap gate, so the CPU's IF
		 * stays set; the pushed EFLAGS (above eip and cs, and the error code
		 * if one was pushed) says what irq_enabled said, and an interrupt
		 * gate turns the Guest's virtual IF off.
		 */
		uint8_t *eflags = frame + 4 * (2 + error_code);

		if (!(irq_enabled & X86_EFLAGS_IF))
			store32(eflags, load32(eflags) & ~X86_EFLAGS_IF);
		if (kind != REFLECT_FAULT)
			store32(table->ram + table->irq_enabled, 0);
		table->reflected++;
	}
	return true;
}

/* For the Python side to check its copy of the layout. */
size_t lguest_gate_table_size(void)
{
	return sizeof(struct gate_table);
}
