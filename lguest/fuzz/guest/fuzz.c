/*
 * The fuzz Guest: a hostile but long-lived lguest Guest.
 *
 * It boots like any 4.x Guest (INIT, its own page tables, NEW_PGTABLE), puts
 * a handler on every IDT vector, and then performs `ops=<n>` random
 * operations drawn from a PRNG seeded by `seed=<n>` on its command line:
 * hypercalls (sync and through the async ring), `int n`, trips to ring 3 and
 * back through iret with odd EFLAGS and selectors, page-table writes followed
 * by touches, port I/O, PCI configuration, MMIO to the virtio windows, virtio
 * handshakes and random descriptor chains.  Any trap or interrupt lands in the
 * common handler (entry.S), which counts it and calls fuzz_loop() again, so one
 * boot carries thousands of operations.  When they are done it powers off.
 *
 * The Guest is allowed to die (a fatal hypercall, a bad driver write...): that
 * is an outcome.  What it must never do is corrupt itself into a loop that
 * looks like a Host hang, so a few rules hold throughout: nothing ever writes
 * (by CPU or by device DMA) below the sacrificial region at 8 MiB except the
 * Guest's own bookkeeping; no PTE it makes writable points below 8 MiB; no
 * iret lands anywhere but on code made for it; HALT only with a timer armed.
 *
 * `fuzz_ops` (the operations started so far) sits at a fixed symbol so the
 * harness can read it from Guest RAM however the run ended.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define RAM_SIZE	0x1000000u	/* the harness boots us with 16 MiB */
#define SACRIFICE	0x800000u	/* 8..16 MiB: never our code or data */
#define RINGS		0x900000u	/* virtqueue rings: device d, queue q */
#define BUFFERS		0xA00000u	/* 10..16 MiB: anything may be written here */
#define MMIO_BASE	(RAM_SIZE + 0x100000u)	/* BAR0 windows, a page each */
#define DEVICES		3		/* console, rng, block (the harness's order) */
#define SCRATCH_VA	0x2000000u	/* pgd slot 8: random PTEs live here */
#define SCRATCH_SLOT	8
#define KERNEL_DS	0x69
#define USER_CS		0x73
#define USER_DS		0x7b

enum { HC_FLUSH_ASYNC, HC_INIT, HC_SHUTDOWN, HC_NEW_PGTABLE = 4, HC_FLUSH_TLB, HC_LOAD_IDT_ENTRY,
	HC_SET_STACK, HC_TS, HC_SET_CLOCKEVENT, HC_HALT, HC_SET_PTE = 14, HC_SET_PGD, HC_LOAD_TLS,
	HC_LOAD_GDT_ENTRY = 18, HC_SEND_INTERRUPTS };

/* lguest_data field offsets (spec §2). */
#define LD_IRQ_ENABLED	0
#define LD_BLOCKED	4
#define LD_IRQ_PENDING	20
#define LD_HCALL_STATUS	24
#define LD_HCALLS	88

extern u8 lguest_data[], trap_stubs[], int_table[], kstack_top[], ustack_top[];
extern u8 lguest_iret[], plain_iret[], ring1_landing[];
extern u32 user_snippets[], user_snippet_count;
extern u8 etext[];	/* the linker's end of .text */

/* Read by the harness: keep these names. */
volatile u32 fuzz_ops, fuzz_limit;
const char *volatile fuzz_last_op;	/* the name of the operation under way */
volatile u32 fuzz_traps[257];	/* per vector; [256] = came back without a trap */

static u64 prng;
static u32 cur_pd, next_async, eflags_mask;
static u16 queue_size[DEVICES][3];
static u32 queue_count[DEVICES];

static u32 pd[2][1024] __attribute__((aligned(4096)));
static u32 low_pt[1024] __attribute__((aligned(4096)));
static u32 sacrifice_pt[2][1024] __attribute__((aligned(4096)));
static u32 mmio_pt[1024] __attribute__((aligned(4096)));
static u32 scratch_pt[1024] __attribute__((aligned(4096)));
static u32 empty_pd[1024] __attribute__((aligned(4096)));	/* never written */
static u32 tls_buf[6];

/* --- small tools ------------------------------------------------------------------------ */

static u32 rnd(void)
{
	/* xorshift64*: good enough, and the whole state is one word of memory. */
	prng ^= prng >> 12;
	prng ^= prng << 25;
	prng ^= prng >> 27;
	return (u32)((prng * 0x2545F4914F6CDD1DULL) >> 32);
}

static u32 below(u32 n)
{
	return rnd() % n;
}

static int chance(u32 n)
{
	return below(n) == 0;
}

static void hcall(u32 nr, u32 a1, u32 a2, u32 a3, u32 a4)
{
	asm volatile("int $0x1f" : : "a"(nr), "b"(a1), "c"(a2), "d"(a3), "S"(a4) : "memory");
}

static void wr32(u32 addr, u32 v) { *(volatile u32 *)addr = v; }
static void wr16(u32 addr, u16 v) { *(volatile u16 *)addr = v; }
static void wr8(u32 addr, u8 v) { *(volatile u8 *)addr = v; }
static u32 rd32(u32 addr) { return *(volatile u32 *)addr; }
static u16 rd16(u32 addr) { return *(volatile u16 *)addr; }
static u8 rd8(u32 addr) { return *(volatile u8 *)addr; }

static void sized_write(u32 addr, u32 size, u32 v)
{
	if (size == 1)
		wr8(addr, v);
	else if (size == 2)
		wr16(addr, v);
	else
		wr32(addr, v);
}

static u32 sized_read(u32 addr, u32 size)
{
	return size == 1 ? rd8(addr) : size == 2 ? rd16(addr) : rd32(addr);
}

static u32 random_size(void)
{
	return 1u << below(3);
}

static void port_out(u16 port, u32 size, u32 v)
{
	if (size == 1)
		asm volatile("outb %b0, %w1" : : "a"(v), "Nd"(port) : "memory");
	else if (size == 2)
		asm volatile("outw %w0, %w1" : : "a"(v), "Nd"(port) : "memory");
	else
		asm volatile("outl %0, %w1" : : "a"(v), "Nd"(port) : "memory");
}

static u32 port_in(u16 port, u32 size)
{
	u32 v = 0;

	if (size == 1)
		asm volatile("inb %w1, %b0" : "+a"(v) : "Nd"(port) : "memory");
	else if (size == 2)
		asm volatile("inw %w1, %w0" : "+a"(v) : "Nd"(port) : "memory");
	else
		asm volatile("inl %w1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static u32 stub(u32 vector)
{
	return (u32)trap_stubs + 16 * (vector & 0xff);
}

static void gate(u32 vector, u32 type, u32 dpl, u32 present)
{
	u32 handler = stub(vector);
	u32 lo = (0x61u << 16) | (handler & 0xffff);
	u32 hi = (handler & 0xffff0000) | (present << 15) | (dpl << 13) | (type << 8);

	hcall(HC_LOAD_IDT_ENTRY, vector, lo, hi, 0);
}

/* A u32 that is usually an interesting boundary. */
static u32 wild(void)
{
	static const u32 edges[] = { 0, 1, 0x7f, 0x80, 0xff, 0xfff, 0x1000, 0xffff, 0x10000, 0x7fffffff,
		0x80000000, 0xfffffffe, 0xffffffff, RAM_SIZE, RAM_SIZE - 4, MMIO_BASE, 0xc0000000, 0xffc00000 };

	return chance(2) ? edges[below(sizeof(edges) / sizeof(edges[0]))] : rnd();
}

/* A guest-physical address the Host or a device may write: never below the buffers. */
static u32 writable_gpa(void)
{
	u32 gpa = chance(16) ? RAM_SIZE - 8 + below(64) + (chance(2) ? 0 : wild()) : BUFFERS + below(0x5ff000);

	return gpa < BUFFERS ? BUFFERS : gpa;
}

/* --- the console, for the final word ---------------------------------------------------- */

static void cfg_write(u32 reg, u32 size, u32 v)
{
	port_out(0xcf8, 4, 0x80000000u | (1 << 11) | reg);
	port_out(0xcfc, size, v);
}

/* Through the console's PCI_CFG window to emerg_wr, as puppy's early console does. */
static void putc(char c)
{
	cfg_write(0x84, 1, 0);		/* cap.bar */
	cfg_write(0x90, 4, 4);		/* cap.length */
	cfg_write(0x8c, 4, 60 + 8);	/* cap.offset: emerg_wr */
	cfg_write(0x94, 4, (u8)c);
}

static void print(const char *s)
{
	while (*s)
		putc(*s++);
}

static void print_number(u32 n)
{
	char buf[11];
	int i = 10;

	buf[i] = 0;
	do {
		buf[--i] = '0' + n % 10;
		n /= 10;
	} while (n);
	print(buf + i);
}

static void power_off(void)
{
	static int once;

	/* A trap while saying goodbye (a gate we broke) brings us back here: just go. */
	if (!once++) {
		print("fuzz: ");
		print_number(fuzz_ops);
		print(" ops\n");
	}
	hcall(HC_SHUTDOWN, (u32)"Power down", 1, 0, 0);
	for (;;)
		;	/* not reached: the Host never runs us again */
}

/* --- hypercalls --------------------------------------------------------------------------- */

/* A PTE for the scratch window: writable only when it cannot reach our own image. */
static u32 scratch_pte(void)
{
	u32 pfn = chance(8) ? below(0x800) : (BUFFERS >> 12) + below(0x600);
	u32 flags = chance(64) ? rnd() & 0xfff : 0x67 & ~(chance(3) ? 0x6 : 0);

	/* A device's window, or beyond RAM: most touches of those are fatal. */
	if (chance(64))
		pfn = (MMIO_BASE >> 12) + below(DEVICES);
	if (chance(128))
		pfn = chance(2) ? (RAM_SIZE >> 12) + below(0x400) : rnd() >> 12;

	if (pfn < (SACRIFICE >> 12))
		flags &= ~2u;
	return (pfn << 12) | flags;
}

static u32 scratch_va(void)
{
	return SCRATCH_VA + (below(1024) << 12) + below(4096);
}

/*
 * Segment descriptors of any type, DPL, limit and granularity, but always base 0
 * and 32-bit: an iret may load them into %cs, and our landing code must then
 * still be the code that runs.
 */
static u32 segment_lo(void)
{
	return chance(2) ? 0xffff : rnd() & 0xffff;
}

static u32 segment_hi(void)
{
	return (chance(2) ? 0x00cf0000 | (rnd() & 0xff00) : rnd() & 0x00ffff00) | 0x00400000;
}

/* Arguments for hypercall `nr` that are mostly plausible and keep the rules above. */
static void random_args(u32 nr, u32 *a)
{
	a[0] = wild();
	a[1] = wild();
	a[2] = wild();
	a[3] = wild();
	switch (nr) {
	case HC_NEW_PGTABLE:
		a[0] = (u32)pd[below(2)];
		if (chance(64))
			a[0] = chance(2) ? (u32)empty_pd : RAM_SIZE + below(0x200000);
		break;
	case HC_LOAD_IDT_ENTRY: {
		u32 v = chance(64) ? wild() : below(256), h = stub(v);

		a[0] = v;
		a[1] = (0x61u << 16) | (h & 0xffff);
		a[2] = (h & 0xffff0000) | (!chance(16) << 15) | (below(4) << 13)
			| ((chance(32) ? below(16) : 0xe + below(2)) << 8);
		break;
	}
	case HC_SET_STACK:
		if (!chance(64)) {
			a[0] = KERNEL_DS;
			a[1] = (u32)kstack_top;
			a[2] = below(3);
		}
		break;
	case HC_TS:
		a[0] = below(2);
		break;
	case HC_SET_CLOCKEVENT:
		a[0] = chance(2) ? 100 + below(200000) : wild();
		break;
	case HC_SET_PTE:
		a[0] = chance(16) ? wild() : (u32)pd[below(2)];
		if (chance(8)) {
			/* Any address, but then the Guest's true entry: announcing is harmless. */
			a[1] = chance(2) ? rnd() : 0xc0000000u + rnd() % 0x40000000u;
			a[2] = (a[1] >> 22) == SCRATCH_SLOT ? scratch_pt[(a[1] >> 12) & 1023] : 0;
			if ((a[1] >> 22) != SCRATCH_SLOT && a[1] < 0xc0000000u)
				a[1] = 0xc0000000u | a[1];
		} else {
			u32 va = scratch_va();

			a[1] = va;
			a[2] = scratch_pte();
			scratch_pt[(va >> 12) & 1023] = a[2];
		}
		a[3] = 0;
		break;
	case HC_SET_PGD:
		a[0] = chance(16) ? wild() : (u32)pd[below(2)];
		a[1] = chance(128) ? wild() : below(1024);
		break;
	case HC_LOAD_TLS:
		for (int i = 0; i < 3; i++) {
			tls_buf[2 * i] = segment_lo();
			tls_buf[2 * i + 1] = segment_hi();
		}
		a[0] = chance(64) ? wild() : (u32)tls_buf;
		break;
	case HC_LOAD_GDT_ENTRY:
		a[0] = chance(64) ? wild() : below(32);
		if (a[0] >= 12 && a[0] <= 15)
			a[0] = 6 + below(3);	/* our own segments stay ours */
		a[1] = segment_lo();
		a[2] = segment_hi();
		break;
	}
}

/* A call number: mostly ones a Guest makes, sometimes fatal, never HALT (see HALT op). */
static u32 random_nr(void)
{
	static const u32 usual[] = { HC_FLUSH_ASYNC, HC_NEW_PGTABLE, HC_FLUSH_TLB, HC_LOAD_IDT_ENTRY,
		HC_SET_STACK, HC_TS, HC_SET_CLOCKEVENT, HC_SET_PTE, HC_SET_PTE, HC_SET_PGD, HC_LOAD_TLS,
		HC_LOAD_GDT_ENTRY, HC_SEND_INTERRUPTS };
	u32 nr;

	if (!chance(512))
		return usual[below(sizeof(usual) / sizeof(usual[0]))];
	nr = chance(2) ? below(24) : wild();
	return nr == HC_HALT ? HC_FLUSH_ASYNC : nr;
}

static void op_hypercall(void)
{
	u32 a[4], nr = random_nr();

	random_args(nr, a);
	if (nr == HC_SHUTDOWN)
		a[0] = chance(2) ? (u32)"fuzz" : wild();
	hcall(nr, a[0], a[1], a[2], a[3]);
}

/* Queue a few calls on the async ring, then let a synchronous one drain them. */
static void op_async(void)
{
	u32 n = 1 + below(chance(32) ? 70 : 4);

	for (u32 i = 0; i < n; i++) {
		u32 slot = chance(16) ? below(64) : next_async, a[4], nr = random_nr();
		u32 *call = (u32 *)(lguest_data + LD_HCALLS + 20 * slot);

		random_args(nr, a);
		call[0] = nr;
		call[1] = a[0];
		call[2] = a[1];
		call[3] = a[2];
		call[4] = a[3];
		lguest_data[LD_HCALL_STATUS + slot] = chance(32) ? rnd() : 0;
		next_async = (slot + 1) % 64;
	}
	hcall(chance(4) ? random_nr() : HC_FLUSH_ASYNC, 0, 0, 0, 0);
}

/* --- traps and rings ---------------------------------------------------------------------- */

static void jump(u32 target)
{
	asm volatile("movl $0, %%eax\n\tjmp *%0" : : "r"(target) : "eax", "memory");
}

static void op_int(void)
{
	jump((u32)int_table + 2 * below(256));
}

static u32 random_eflags(void)
{
	/* IF and the reserved bit, plus each interesting bit now and then. */
	static const u32 bits[] = { 0x100 /* TF */, 0x400 /* DF */, 0x800 /* OF */, 0x3000 /* IOPL */,
		0x4000 /* NT */, 0x10000 /* RF */, 0x20000 /* VM */, 0x40000 /* AC */,
		0x80000 /* VIF */, 0x100000 /* VIP */, 0x200000 /* ID */ };
	u32 f = chance(16) ? rnd() : 0x202;

	for (u32 i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
		if (chance(10))
			f ^= bits[i];
	return f & eflags_mask;
}

static u32 random_selector(u32 usual)
{
	static const u32 odd[] = { 0, 3, 0x61, 0x60, 0x63, 0x69, 0x6b, 0x73, 0x7b, 0x50, 0x58, 0x80,
		0x30, 0x33, 0x3b, 0x43, 0xf8, 0xfb };

	if (!chance(4))
		return usual;
	return chance(4) ? rnd() & 0xffff : odd[below(sizeof(odd) / sizeof(odd[0]))];
}

/* iret with a frame; %ebx and %ecx carry random values for the landing code. */
static void iret_with(u32 eip, u32 cs, u32 eflags, u32 esp, u32 ss)
{
	u32 frame[5] = { eip, cs, eflags, esp, ss };
	u32 exit = chance(2) ? (u32)lguest_iret : (u32)plain_iret;

	asm volatile("jmp iret_from_frame" : : "a"(frame), "d"(exit), "b"(rnd() & eflags_mask), "c"(rnd()),
		     "S"(random_selector(USER_DS)) : "memory");
}

static u32 landing(void)
{
	if (chance(4))
		return (u32)ring1_landing;
	if (chance(8))
		return (u32)int_table + 2 * below(256);
	return user_snippets[below(user_snippet_count)];
}

/* To ring 3 and back (through int $0x80 or a trap), with odd EFLAGS now and then. */
static void op_user(void)
{
	iret_with(user_snippets[below(user_snippet_count)], USER_CS, random_eflags(),
		  (u32)ustack_top - 4 * below(4), USER_DS);
}

/* An iret with a frame anyone could write: odd selectors, any EFLAGS. */
static void op_wild_iret(void)
{
	u32 ring1 = chance(3);

	iret_with(landing(), random_selector(ring1 ? 0x61 : USER_CS),
		  chance(2) ? rnd() & eflags_mask : random_eflags(),
		  chance(8) ? rnd() : (u32)ustack_top, random_selector(ring1 ? KERNEL_DS : USER_DS));
}

/* popf at ring 1: TF, NT, AC and friends set by the kernel itself. */
static void op_popf(void)
{
	asm volatile("pushl %0\n\tpopfl\n\tnop\n\tnop\n\tpushl $0x202\n\tpopfl"
		     : : "r"(random_eflags()) : "memory", "cc");
}

static void op_gate(void)
{
	u32 v = below(256);

	gate(v, chance(32) ? below(16) : 0xe + below(2), v == 0x80 && !chance(8) ? 3 : below(4), !chance(32));
}

static void op_segment(void)
{
	u32 a[4], sel, nr = chance(2) ? HC_LOAD_GDT_ENTRY : HC_LOAD_TLS;

	random_args(nr, a);
	hcall(nr, a[0], a[1], a[2], 0);
	sel = chance(4) ? rnd() & 0xffff : (below(32) << 3) | below(4);
	switch (below(4)) {
	case 0:
		asm volatile("movw %w0, %%ds\n\tmovl (%1), %%eax\n\tmovw %w2, %%ds"
			     : : "r"(sel), "r"(lguest_data), "r"(KERNEL_DS) : "eax", "memory");
		break;
	case 1:
		asm volatile("movw %w0, %%es\n\tmovw %w1, %%es" : : "r"(sel), "r"(KERNEL_DS) : "memory");
		break;
	case 2:
		asm volatile("movw %w0, %%fs\n\tmovl %%fs:0, %%eax" : : "r"(sel) : "eax", "memory");
		break;
	default:
		asm volatile("movw %w0, %%gs\n\tmovl %%gs:0, %%eax" : : "r"(sel) : "eax", "memory");
	}
}

static void op_fpu(void)
{
	hcall(HC_TS, below(2), 0, 0, 0);
	asm volatile("fninit\n\tfld1\n\tfstp %%st(0)" : : : "memory");
}

static void op_privileged(void)
{
	switch (below(4)) {
	case 0:
		asm volatile("cli" : : : "memory");	/* the Host skips it for us */
		break;
	case 1:
		asm volatile("hlt" : : : "memory");
		break;
	case 2:
		asm volatile("sti" : : : "memory");
		break;
	default:
		asm volatile("movl %%cr3, %%eax" : : : "eax", "memory");
	}
}

/* The virtual interrupt flag and mask, as a Guest with bugs would write them. */
static void op_irq_flags(void)
{
	wr32((u32)lguest_data + LD_IRQ_ENABLED, chance(2) ? 0x200 * below(2) : wild());
	if (chance(2))
		wr32((u32)lguest_data + LD_BLOCKED, chance(2) ? 1 : wild());
	if (chance(4))
		wr32((u32)lguest_data + LD_IRQ_PENDING, wild());
	if (chance(2))
		hcall(HC_SEND_INTERRUPTS, 0, 0, 0, 0);
}

/* HALT, but only with the timer armed and unmasked: a Guest that never wakes is no Host bug. */
static void op_halt(void)
{
	wr32((u32)lguest_data + LD_BLOCKED, rd32((u32)lguest_data + LD_BLOCKED) & ~1u);
	wr32((u32)lguest_data + LD_IRQ_ENABLED, 0x200);
	hcall(HC_SET_CLOCKEVENT, 1000 + below(200000), 0, 0, 0);
	hcall(HC_HALT, 0, 0, 0, 0);
}

/* --- memory -------------------------------------------------------------------------------- */

static void op_pte(void)
{
	u32 va = scratch_va(), pte = scratch_pte();

	scratch_pt[(va >> 12) & 1023] = pte;
	if (!chance(8))
		hcall(HC_SET_PTE, chance(16) ? (u32)pd[!cur_pd] : (u32)pd[cur_pd], va, pte, 0);
	if (chance(8))
		hcall(HC_FLUSH_TLB, below(2), 0, 0, 0);
	if ((pte >> 12) >= (BUFFERS >> 12) && (pte >> 12) < (RAM_SIZE >> 12) && chance(2))
		sized_write(va & ~3u, random_size(), rnd());
	else
		sized_read(va & ~3u, random_size());
}

static void op_pgd(void)
{
	u32 slot = 9 + below(758);	/* below the kernel half; never our own slots */
	u32 entry = chance(2) ? (u32)scratch_pt : BUFFERS + (below(0x600) << 12);

	entry |= chance(64) ? rnd() & 0xfff : 0x67;
	if (chance(128))
		entry = wild();
	pd[cur_pd][slot] = entry;
	hcall(HC_SET_PGD, (u32)pd[cur_pd], chance(128) ? wild() : slot, 0, 0);
	sized_read((slot << 22) + below(0x400000), random_size());
}

static void op_switch(void)
{
	u32 a[4];

	random_args(HC_NEW_PGTABLE, a);
	cur_pd = a[0] == (u32)pd[1];
	hcall(HC_NEW_PGTABLE, a[0], 0, 0, 0);
}

/* Reads anywhere; writes only where nothing of ours lives. */
static void op_touch(void)
{
	static const u32 bases[] = { 0, SACRIFICE, RAM_SIZE, MMIO_BASE, SCRATCH_VA, 0x400000,
		0xc0000000, 0xffc00000, 0xfffff000 };
	u32 addr = bases[below(sizeof(bases) / sizeof(bases[0]))] + below(0x10000);

	if (chance(4))
		addr = rnd();
	if (addr >= BUFFERS && addr < RAM_SIZE - 4 && chance(2))
		sized_write(addr, random_size(), rnd());
	else
		sized_read(addr, random_size());
}

/* --- devices ------------------------------------------------------------------------------- */

static void op_port(void)
{
	static const u16 ports[] = { 0xcf8, 0xcfc, 0xcfd, 0xcfe, 0xcff, 0xcf9, 0x20, 0x21, 0x40, 0x43,
		0x60, 0x64, 0x70, 0x71, 0x80, 0x3f8, 0x3fd, 0x1f0, 0xa0, 0xffff };
	u16 port = chance(4) ? rnd() : ports[below(sizeof(ports) / sizeof(ports[0]))];
	u32 size = random_size();

	if (chance(2))
		port_out(port, size, wild());
	else
		port_in(port, size);
}

static void op_pci(void)
{
	static const u32 regs[] = { 0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x2c, 0x34, 0x3c, 0x40, 0x50,
		0x60, 0x70, 0x80, 0x84, 0x88, 0x8c, 0x90, 0x94, 0x98, 0xfc };
	u32 reg = chance(4) ? below(256) : regs[below(sizeof(regs) / sizeof(regs[0]))];
	u32 addr = 0x80000000u | (below(chance(4) ? 32 : DEVICES + 2) << 11) | reg;
	u32 size = random_size(), off = below(4);

	if (chance(16))
		addr = wild();
	port_out(0xcf8, chance(16) ? random_size() : 4, addr);
	if (chance(2))
		port_out(0xcfc + off, size, wild());
	else
		port_in(0xcfc + off, size);
}

static u32 window(u32 d)
{
	return MMIO_BASE + 0x1000 * d;
}

/* BAR0's registers (common configuration, notify, ISR, device config) and their widths. */
static const u8 reg_offsets[] = { 0, 4, 8, 12, 16, 18, 20, 21, 22, 24, 26, 28, 30, 32, 36, 40, 44,
	48, 52, 56, 58, 60, 64, 68 };
static const u8 reg_widths[] = { 4, 4, 4, 4, 2, 2, 1, 1, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 2, 1, 4, 4, 4 };

static u32 reg_width(u32 off)
{
	for (u32 i = 0; i < sizeof(reg_offsets); i++)
		if (reg_offsets[i] == off)
			return reg_widths[i];
	return 4;
}

/*
 * Mostly reads a driver may make at any time; now and then any register at its
 * own width, or anything at all (most of which the device must refuse, fatally).
 */
static void op_mmio(void)
{
	static const u8 harmless[] = { 18, 20, 21, 22, 24, 28, 30, 32, 40, 48, 58 };
	u32 w = window(chance(64) ? DEVICES : below(DEVICES)), off, size;

	if (!chance(16)) {
		off = harmless[below(sizeof(harmless))];
		sized_read(w + off, reg_width(off));
		return;
	}
	off = reg_offsets[below(sizeof(reg_offsets))];
	size = reg_width(off);
	if (chance(4)) {
		off = chance(2) ? below(72) : below(4096);
		size = random_size();
	}
	if (chance(2))
		sized_write(w + off, size, off == 20 ? below(16) : wild());
	else
		sized_read(w + off, size);
}

/* One register write of the handshake, or (once in a while) a random one instead. */
static void vwrite(u32 w, u32 off, u32 size, u32 v)
{
	if (chance(256)) {
		off = below(64);
		size = random_size();
		v = wild();
	}
	sized_write(w + off, size, v);
}

static u32 ring_addr(u32 d, u32 q)
{
	return RINGS + 0x10000 * d + 0x4000 * q;
}

/* The virtio 1.0 handshake and queue set-up, as a driver does it (§7.3). */
static void op_virtio_setup(void)
{
	u32 d = below(DEVICES), w = window(d), features, nq;

	vwrite(w, 20, 1, 0);
	vwrite(w, 20, 1, 1);
	vwrite(w, 20, 1, 3);
	for (u32 sel = 0; sel < 2; sel++) {
		vwrite(w, 0, 4, sel);
		features = rd32(w + 4);
		vwrite(w, 8, 4, sel);
		vwrite(w, 12, 4, features & (chance(4) ? rnd() : 0xffffffff));
	}
	vwrite(w, 20, 1, 11);
	rd8(w + 20);
	nq = rd16(w + 18);
	queue_count[d] = nq;
	for (u32 q = 0; q < nq && q < 3; q++) {
		u32 base = ring_addr(d, q), size = 1u << below(9);

		vwrite(w, 22, 2, q);
		vwrite(w, 24, 2, size);
		queue_size[d][q] = size;
		vwrite(w, 32, 4, base);
		vwrite(w, 36, 4, 0);
		vwrite(w, 40, 4, base + 0x1000);
		vwrite(w, 44, 4, 0);
		vwrite(w, 48, 4, base + 0x2000);
		vwrite(w, 52, 4, 0);
		wr16(base + 0x1000, 0);		/* avail flags and idx start at 0 */
		wr16(base + 0x1002, 0);
		wr32(base + 0x2000, 0);
		vwrite(w, 28, 2, 1);
	}
	vwrite(w, 20, 1, 15);
}

/* A descriptor pointing at writable memory, with a request header for the disk. */
static void descriptor(u32 table, u32 i, u32 size, int nested)
{
	u32 addr = writable_gpa(), len = chance(16) ? wild() : 1 + below(chance(2) ? 32 : 4096);
	u16 flags = chance(32) ? rnd() : (below(2) | (below(2) << 1) | (chance(16) << 2));
	u32 *desc = (u32 *)(table + 16 * i);

	int in_ram = addr >= BUFFERS && addr + 128 <= RAM_SIZE;

	if (in_ram) {
		wr32(addr, chance(8) ? rnd() : below(9));	/* type: IN, OUT, FLUSH, GET_ID... */
		wr32(addr + 4, 0);
		wr32(addr + 8, chance(4) ? rnd() : below(160));	/* sector: the disk has 128 */
		wr32(addr + 12, chance(8) ? rnd() : 0);
	}
	if (flags & 4) {			/* an indirect table, itself random */
		u32 n = 1 + below(8);

		for (u32 j = 0; j < n && in_ram && !nested; j++)
			descriptor(addr & ~0xfu, j, n, 1);
		addr &= ~0xfu;
		len = chance(4) ? wild() : 16 * n;
	}
	desc[0] = addr;
	desc[1] = chance(64) ? rnd() : 0;
	desc[2] = len;
	desc[3] = flags | (chance(16) ? rnd() << 16 : (i + 1) % size << 16);
}

/* Offer a few random chains on a queue and notify it. */
static void op_virtqueue(void)
{
	u32 d = below(DEVICES), q = chance(32) ? below(3) : below(queue_count[d] ? queue_count[d] : 1);
	u32 base = ring_addr(d, q);
	u32 size = queue_size[d][q] ? queue_size[d][q] : 16, n = 1 + below(4);

	for (u32 c = 0; c < n; c++) {
		u32 head = below(size), len = 1 + below(4);
		u16 idx = rd16(base + 0x1002);

		for (u32 k = 0; k < len; k++)
			descriptor(base, (head + k) % size, size, 0);
		wr16(base + 0x1004 + 2 * (idx % size), chance(16) ? rnd() : head);
		if (chance(16))
			wr16(base + 0x1000, rnd());	/* avail flags */
		wr16(base + 0x1002, chance(32) ? rnd() : (u32)idx + 1);
	}
	vwrite(window(d), 56, 2, q);
}

/* --- the loop ----------------------------------------------------------------------------- */

struct op {
	void (*run)(void);
	u32 weight;
	const char *name;
};

#define OP(fn, weight) { op_##fn, weight, #fn }

static const struct op ops[] = {
	OP(hypercall, 14), OP(async, 5), OP(int, 8), OP(user, 12), OP(wild_iret, 5),
	OP(popf, 2), OP(gate, 3), OP(segment, 4), OP(fpu, 2), OP(privileged, 2),
	OP(irq_flags, 3), OP(halt, 1), OP(pte, 10), OP(pgd, 4), OP(switch, 3),
	OP(touch, 5), OP(port, 6), OP(pci, 7), OP(mmio, 3), OP(virtio_setup, 4),
	OP(virtqueue, 8),
};
#define NOPS (sizeof(ops) / sizeof(ops[0]))

static u32 pick(void)
{
	u32 total = 0, r;

	for (u32 i = 0; i < NOPS; i++)
		total += ops[i].weight;
	r = below(total);
	for (u32 i = 0; i < NOPS; i++) {
		if (r < ops[i].weight)
			return i;
		r -= ops[i].weight;
	}
	return 0;
}

void fuzz_loop(void) __attribute__((noreturn));
void fuzz_loop(void)
{
	for (;;) {
		u32 kind;

		if (fuzz_ops >= fuzz_limit)
			power_off();
		fuzz_ops = fuzz_ops + 1;
		kind = pick();
		fuzz_last_op = ops[kind].name;
		ops[kind].run();
	}
}

/* Called by the common handler with the vector (-1: an iret came back to ring 1). */
void fuzz_trapped(int vector) __attribute__((noreturn));
void fuzz_trapped(int vector)
{
	u32 v = vector < 0 ? 256 : (u32)vector & 0xff;

	fuzz_traps[v] = fuzz_traps[v] + 1;
	fuzz_loop();
}

/* --- boot --------------------------------------------------------------------------------- */

/* The decimal value of `word=` on the command line, or `otherwise`. */
static u32 cmdline_number(const char *cmdline, const char *word, u32 otherwise)
{
	for (const char *p = cmdline; *p; p++) {
		const char *w = word, *q = p;
		u32 v = 0;

		if (p != cmdline && p[-1] != ' ')
			continue;
		while (*w && *q == *w)
			w++, q++;
		if (*w)
			continue;
		while (*q >= '0' && *q <= '9')
			v = v * 10 + (u32)(*q++ - '0');
		return v;
	}
	return otherwise;
}

static void build_page_tables(void)
{
	for (u32 i = 0; i < 1024; i++) {
		/* Ring 3 may read our code (its snippets live there) but write nothing of ours. */
		int text = i >= 0x100 && i < (((u32)etext + 0xfff) >> 12);

		low_pt[i] = (i << 12) | (text ? 0x65 : 0x63);
		sacrifice_pt[0][i] = (SACRIFICE + (i << 12)) | 0x67;
		sacrifice_pt[1][i] = (SACRIFICE + 0x400000 + (i << 12)) | 0x67;
	}
	for (u32 d = 0; d <= DEVICES; d++)	/* one window past the devices, too */
		mmio_pt[(window(d) >> 12) & 1023] = window(d) | 0x63;
	for (u32 p = 0; p < 2; p++) {
		pd[p][0] = (u32)low_pt | 0x67;
		pd[p][2] = (u32)sacrifice_pt[0] | 0x67;
		pd[p][3] = (u32)sacrifice_pt[1] | 0x67;
		pd[p][RAM_SIZE >> 22] = (u32)mmio_pt | 0x67;
		pd[p][SCRATCH_SLOT] = (u32)scratch_pt | 0x67;
	}
}

void fuzz_boot(void)
{
	u32 *cmd_line_ptr = (u32 *)0x228;	/* boot_params.hdr.cmd_line_ptr */
	const char *cmdline;
	u32 seed;

	asm("" : "+r"(cmd_line_ptr));	/* a fixed address, not an empty array, whatever gcc thinks */
	cmdline = (const char *)*cmd_line_ptr;
	seed = cmdline_number(cmdline, "seed=", 1);

	prng = ((u64)seed << 32 | seed) ^ 0x9E3779B97F4A7C15ULL;
	if (!prng)
		prng = 1;
	fuzz_limit = cmdline_number(cmdline, "ops=", 1000);
	/* `maskflags=<n>`: EFLAGS bits never set by an iret or popf (to step around a known hole). */
	eflags_mask = ~cmdline_number(cmdline, "maskflags=", 0);
	hcall(HC_INIT, (u32)lguest_data, 0, 0, 0);
	for (u32 v = 0; v < 256; v++)
		gate(v, 0xe + below(2), v == 0x80 ? 3 : below(4), 1);
	build_page_tables();
	hcall(HC_NEW_PGTABLE, (u32)pd[0], 0, 0, 0);
	hcall(HC_LOAD_GDT_ENTRY, 14, 0x0000ffff, 0x00cffa00, 0);	/* flat user code */
	hcall(HC_LOAD_GDT_ENTRY, 15, 0x0000ffff, 0x00cff200, 0);	/* flat user data */
	hcall(HC_SET_STACK, KERNEL_DS, (u32)kstack_top, 2, 0);
	fuzz_loop();
}
