/*
 * segments.c - the GDT a Guest may not load: user segments by hypercall.
 *
 * lgdt is privileged, and the real GDT is the Host's.  The Host keeps a
 * 32-entry copy for us and starts it with just the kernel's code and data
 * (entries 12 and 13, 0x61 and 0x69 at ring 1).  A Guest that wants to run
 * anything at ring 3 must add user code and data segments itself, one
 * LOAD_GDT_ENTRY hypercall each.  The Host checks little: it only turns
 * DPL 0 into 1 and refuses system descriptors (TSS, gates).
 */
#include "puppy.h"

/*
 * Flat 4 GiB segments, DPL 3, in descriptor format: base 0, limit 0xFFFFF
 * in 4 KiB units, 32-bit.  Type 0xA = code (execute/read), 0x2 = data
 * (read/write).  Flat is safe: what a user may touch is decided by the
 * USER bit in the page tables, not by the segment limits.
 */
#define DESC_LO_FLAT		0x0000FFFFu
#define DESC_HI_USER_CODE	0x00CFFA00u
#define DESC_HI_USER_DATA	0x00CFF200u

void user_segments_init(void)
{
	hcall(LHCALL_LOAD_GDT_ENTRY, GDT_ENTRY_USER_CS, DESC_LO_FLAT, DESC_HI_USER_CODE, 0);
	hcall(LHCALL_LOAD_GDT_ENTRY, GDT_ENTRY_USER_DS, DESC_LO_FLAT, DESC_HI_USER_DATA, 0);
}
