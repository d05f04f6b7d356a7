/*
 * lguest.h - the Guest's half of the lguest 4.x ABI.
 *
 * A paravirtualized Guest knows it is not alone: instead of privileged
 * instructions it makes hypercalls ("int $0x1f" with the call number in
 * %eax), and it shares one structure, lguest_data, with the Host.  Both the
 * numbers and the layout below are fixed by the ABI; the Host (in Python)
 * has the same values in lguest/abi.py.
 *
 * This header is included from C and from head.S, so anything that is not
 * a plain #define hides behind __ASSEMBLY__.
 */
#ifndef PUPPY_LGUEST_H
#define PUPPY_LGUEST_H

/* We are linked at 3 GiB + physical, like an i386 Linux kernel. */
#define PAGE_OFFSET		0xC0000000
#define PAGE_SIZE		4096
#define PHYS_LOAD		0x100000

/* The hypercall trap vector and the 4.x call numbers (spec section 1.2). */
#define LGUEST_TRAP_ENTRY	0x1f
#define LHCALL_FLUSH_ASYNC	0
#define LHCALL_LGUEST_INIT	1
#define LHCALL_SHUTDOWN		2
#define LHCALL_NEW_PGTABLE	4
#define LHCALL_FLUSH_TLB	5
#define LHCALL_LOAD_IDT_ENTRY	6
#define LHCALL_SET_STACK	7
#define LHCALL_TS		8
#define LHCALL_SET_CLOCKEVENT	9
#define LHCALL_HALT		10
#define LHCALL_SET_PMD		13	/* PAE Guests only */
#define LHCALL_SET_PTE		14
#define LHCALL_SET_PGD		15
#define LHCALL_LOAD_TLS		16
#define LHCALL_LOAD_GDT_ENTRY	18
#define LHCALL_SEND_INTERRUPTS	19

#define LGUEST_SHUTDOWN_POWEROFF 1
#define LGUEST_SHUTDOWN_RESTART	2

#define LHCALL_RING_SIZE	64
#define HCALL_STATUS_FREE	0xFF	/* slot empty, or the Host has done it */
#define HCALL_STATUS_READY	0x00	/* slot filled in by us, Host please run */

/* The few boot_params fields we read (offsets into the 4 KiB page). */
#define BP_CMD_LINE_PTR		0x228
#define BP_HARDWARE_SUBARCH	0x23C
#define BP_E820_MAP		0x2D0	/* { u64 addr; u64 size; u32 type; } */
#define X86_SUBARCH_LGUEST	1

/* Offsets into lguest_data for the assembly stubs (head.S, entry.S). */
#define LGUEST_DATA_irq_enabled	0
#define LGUEST_DATA_irq_pending	20

/* Our virtual EFLAGS.IF: the only "enabled" value we ever store. */
#define X86_EFLAGS_IF		0x200

/* Virtual irq n arrives through IDT vector FIRST_EXTERNAL_VECTOR + n. */
#define FIRST_EXTERNAL_VECTOR	0x20
#define PUPPY_NR_IRQS		16	/* vectors 0x20..0x2F */

/* The kernel code selector the Host forces into every IDT gate. */
#define KERNEL_CS		0x61
/* Kernel data and stack (GDT entry 13 at RPL 1, as SET_STACK requires). */
#define KERNEL_DS		0x69
/* User code and data: GDT entries 14 and 15 at RPL 3, which we install. */
#define GDT_ENTRY_USER_CS	14
#define GDT_ENTRY_USER_DS	15
#define USER_CS			0x73
#define USER_DS			0x7b

/* The system-call vector (lguest_data.syscall_vec tells the Host). */
#define SYSCALL_VECTOR		0x80

#ifndef __ASSEMBLY__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define __pa(x)	((u32)(x) - PAGE_OFFSET)
#define __va(x)	((void *)((u32)(x) + PAGE_OFFSET))

/* tour:G.20 A hypercall, and the structure the Guest shares with the Host
 * At ring 1 a kernel cannot do the privileged things it needs: load page
 * tables, an IDT or a GDT, touch CR0, halt.  So it asks the Host.  A
 * hypercall is a software interrupt: the call number in %eax, up to four
 * arguments in %ebx, %ecx, %edx and %esi, then "int $0x1f" (hcall(),
 * below; the numbers are §1.2).  Vector 0x1f never goes straight to the
 * Guest, so the CPU always leaves for the Host: the Host's run loop
 * (chapter H) sees trap 0x1f, takes the call from the registers it saved,
 * does it, and resumes us at the next instruction.  4.x calls return
 * nothing and change no register, but the Host may read and write any of
 * our memory meanwhile, hence the "memory" clobber.
 *
 * What changes often, or what the Host must see without a trap, lives in
 * struct lguest_data instead: one structure in our RAM whose address we
 * give at INIT (§2).  The virtual interrupt flag, the interrupt mask, the
 * address of the last page fault, the Host's clock and the queue of
 * asynchronous hypercalls are all here, and both sides read and write
 * them as plain memory.  Linux 4.9 has the same layout in
 * include/linux/lguest.h; the Host's copy is lguest/abi.py.
 */

/* One queued hypercall: exactly the registers a synchronous one would use. */
struct hcall_args {
	u32 arg0, arg1, arg2, arg3, arg4;
};

/*
 * The page the Guest and Host share.  The Guest owns most of it; the Host
 * fills in cr2, time, reserve_mem and tsc_khz, and clears hcall_status
 * slots as it runs queued calls.
 */
struct lguest_data {
	u32 irq_enabled;		/* our virtual EFLAGS.IF: 0 or 0x200 */
	u32 blocked_interrupts;		/* bitmap: bit n set = irq n masked */
	u32 cr2;			/* faulting address of the last #PF */
	struct { int tv_sec, tv_nsec; } time;	/* wall clock, Host-written */
	int irq_pending;		/* Host: "I have an irq for you" */
	u8 hcall_status[LHCALL_RING_SIZE];
	struct hcall_args hcalls[LHCALL_RING_SIZE];
	u32 reserve_mem;		/* top of address space the Host keeps */
	u32 tsc_khz;
	u32 noirq_iret;			/* address of the iret in lguest_iret */
	u32 kernel_address;		/* where the shared kernel mappings start */
	u32 syscall_vec;
};

_Static_assert(sizeof(struct lguest_data) == 1388, "lguest_data size");
_Static_assert(__builtin_offsetof(struct lguest_data, irq_pending) == LGUEST_DATA_irq_pending, "pending");
_Static_assert(__builtin_offsetof(struct lguest_data, hcall_status) == 24, "status");
_Static_assert(__builtin_offsetof(struct lguest_data, hcalls) == 88, "hcalls");
_Static_assert(__builtin_offsetof(struct lguest_data, reserve_mem) == 1368, "reserve");
_Static_assert(__builtin_offsetof(struct lguest_data, noirq_iret) == 1376, "noirq");

extern struct lguest_data lguest_data;

/*
 * A synchronous hypercall.  The Host never changes a register (4.x calls
 * return nothing), but it may read and write any of our memory, hence the
 * "memory" clobber.  The call number comes back unchanged in %eax.
 */
static inline u32 hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4)
{
	asm volatile("int $0x1f"
		     : "+a"(call)
		     : "b"(arg1), "c"(arg2), "d"(arg3), "S"(arg4)
		     : "memory");
	return call;
}

void async_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4);

#endif /* __ASSEMBLY__ */
#endif /* PUPPY_LGUEST_H */
