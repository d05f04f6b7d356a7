/*
 * segments.c - the GDT a Guest may not load: user segments by hypercall.
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

/* tour:G.150 Segments and TLS: the GDT by hypercall
 * lgdt is privileged, and the real GDT is the Host's.  The Host keeps a
 * 32-entry copy for the Guest and starts it with just the kernel's code
 * and data (entries 12 and 13: selectors 0x61 and 0x69, at ring 1).  A
 * Guest that wants to run anything at ring 3 adds user code and data
 * segments itself, one LOAD_GDT_ENTRY hypercall each.  The Host checks
 * little: it turns DPL 0 into 1 (nothing of the Guest's runs at ring 0)
 * and refuses system descriptors such as a TSS or a gate (§5.2).  Linux
 * 4.9 loads its whole GDT this way at boot (one call per entry), and at
 * every context switch it sends the three thread-local-storage entries
 * with LOAD_TLS, queued on the async ring (§5.3).  puppy's processes use
 * no TLS, so it never does.
 */
void user_segments_init(void)
{
	hcall(LHCALL_LOAD_GDT_ENTRY, GDT_ENTRY_USER_CS, DESC_LO_FLAT, DESC_HI_USER_CODE, 0);
	hcall(LHCALL_LOAD_GDT_ENTRY, GDT_ENTRY_USER_DS, DESC_LO_FLAT, DESC_HI_USER_DATA, 0);
}
