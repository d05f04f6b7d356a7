/*
 * The exact address of a TLB miss (no lguest counterpart: a real CPU writes CR2).
 *
 * Unicorn's TLB-fill hook is told only the page that missed, but a Guest's
 * page-fault handler needs the byte (Linux grows a stack only close below its
 * stack pointer).  QEMU knows it: the CPU class's tlb_fill, which Unicorn
 * points at its own hook caller, receives the address of the access itself
 * (for an access that straddles into a second page, that page's first byte,
 * as a real CPU reports it).  calibration.py finds that function pointer in
 * the engine's CPU and proves it; this file puts `exact_tlb_fill` in its
 * place, which notes the address for the miss being filled and hands on to
 * the function it replaced.  The fill hooks run on the same thread, inside
 * that call, so a thread-local note is all it takes.
 */
#include <stdbool.h>
#include <stdint.h>

typedef bool (*tlb_fill_fn)(void *cpu, uint64_t address, int size, int access_type, int mmu_idx,
			    bool probe, uintptr_t retaddr);

static tlb_fill_fn unicorn_fill;	/* the same function in every engine: Unicorn's */
static __thread uint64_t exact_address;

static bool exact_tlb_fill(void *cpu, uint64_t address, int size, int access_type, int mmu_idx,
			   bool probe, uintptr_t retaddr)
{
	exact_address = address;
	return unicorn_fill(cpu, address, size, access_type, mmu_idx, probe, retaddr);
}

/* Put exact_tlb_fill in `slot` (the CPU class's tlb_fill), if it holds `original`. */
bool lguest_exact_fill_install(tlb_fill_fn *slot, tlb_fill_fn original)
{
	if (*slot != original || (unicorn_fill && unicorn_fill != original))
		return false;
	unicorn_fill = original;
	*slot = exact_tlb_fill;
	return true;
}

/* The address of the access whose miss this thread is filling (or last filled). */
uint64_t lguest_exact_fill_address(void)
{
	return exact_address;
}
