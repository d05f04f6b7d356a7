/*
 * exec.c - loading a user program: an ELF image into a fresh address space.
 *
 * The programs are ordinary static i386 ELF executables, built with the
 * kernel and carried inside its image (programs.S).  Loading one is all page
 * table work: every page of every PT_LOAD segment gets a fresh zeroed page
 * with the USER bit (read-only unless the segment is writable), and so does
 * the user stack under 0xC0000000.  That is dozens of SET_PTE calls, so we
 * do it in lazy MMU mode: they pile up on the async ring and reach the Host
 * in one trip at the end (about one in 64, if the ring fills).
 *
 * The kernel fills the pages through its own PAGE_OFFSET mapping of them,
 * never through the new user addresses, so it does not matter that the Host
 * has not yet heard of the mappings while we copy.
 */
#include "puppy.h"
#include "sched.h"

struct program {
	const char *name;
	const u8 *start, *end;
};
extern const struct program user_programs[];	/* programs.S */

#define ELF_MAGIC	0x464C457F	/* "\177ELF" */
#define ELFCLASS32	1
#define ELFDATA2LSB	1
#define ET_EXEC		2
#define EM_386		3
#define PT_LOAD		1
#define PF_X		1
#define PF_W		2
#define MAX_PHDRS	16

struct elf32_ehdr {
	u32 e_magic;
	u8 e_class, e_data, e_version, e_pad[9];
	u16 e_type, e_machine;
	u32 e_version2, e_entry, e_phoff, e_shoff, e_flags;
	u16 e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx;
};

struct elf32_phdr {
	u32 p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align;
};

static const struct program *find_program(const char *name)
{
	const struct program *p;

	for (p = user_programs; p->name; p++)
		if (!memcmp(p->name, name, strlen(name) + 1))
			return p;
	return NULL;
}

/* Is [start, start + len) inside the user half, without wrapping? */
static int user_range(u32 start, u32 len, u32 limit)
{
	return start < limit && len <= limit - start;
}

/* Map and fill one PT_LOAD segment. */
static int load_segment(struct mm *mm, const u8 *image, const struct elf32_phdr *ph)
{
	pte_t flags = (ph->p_flags & PF_W) ? PTE_USER_RW : PTE_USER_RO;

	if (!(ph->p_flags & PF_X))
		flags |= _PAGE_NX;
	u32 file_end = ph->p_vaddr + ph->p_filesz;
	u32 va;

	for (va = ph->p_vaddr & PAGE_MASK; va < ph->p_vaddr + ph->p_memsz; va += PAGE_SIZE) {
		u8 *page = map_user_page(mm, va, flags);
		u32 lo = va > ph->p_vaddr ? va : ph->p_vaddr;
		u32 hi = va + PAGE_SIZE < file_end ? va + PAGE_SIZE : file_end;

		if (!page)
			return -12;
		/* The file's bytes for this page; the rest stays zero (bss). */
		if (lo < hi)
			memcpy(page + (lo - va), image + ph->p_offset + (lo - ph->p_vaddr), hi - lo);
	}
	return 0;
}

/*
 * The initial user stack, as a C main() wants it: at %esp argc, then the
 * argv pointers (NULL-terminated), with the strings above them.
 */
static int setup_stack(struct mm *mm, const char *name, const char *arg, u32 *user_esp)
{
	u32 top_page = USER_STACK_TOP - PAGE_SIZE, va, sp, argv[3];
	const char *strings[2] = { name, arg };
	unsigned int i, argc = arg ? 2 : 1;
	u8 *page = NULL;

	for (va = USER_STACK_TOP - USER_STACK_PAGES * PAGE_SIZE; va < USER_STACK_TOP; va += PAGE_SIZE) {
		page = map_user_page(mm, va, PTE_USER_DATA);
		if (!page)
			return -12;
	}
	/* page is now the top one; sp walks down it as a user address. */
	sp = USER_STACK_TOP;
	for (i = 0; i < argc; i++) {
		u32 len = strlen(strings[i]) + 1;

		if (len > 128)
			return -7;		/* E2BIG */
		sp -= len;
		memcpy(page + (sp - top_page), strings[i], len);
		argv[i] = sp;
	}
	argv[argc] = 0;
	sp &= ~15u;
	sp -= 4 * (argc + 2);
	memcpy(page + (sp - top_page), &argc, 4);
	memcpy(page + (sp - top_page) + 4, argv, 4 * (argc + 1));
	*user_esp = sp;
	return 0;
}

/*
 * Load @program into @mm (a fresh address space).  Every field of the image
 * is checked before it is believed: these bytes are data, and the kernel
 * must not be talked into mapping kernel or Switcher addresses for a user.
 */
int exec_load(struct mm *mm, const char *program, const char *arg,
	      const char *name, u32 *entry, u32 *user_esp)
{
	const struct program *prog = find_program(program);
	const struct elf32_ehdr *eh;
	const struct elf32_phdr *ph;
	u32 size, top = 0, i;
	int entry_ok = 0, err = 0;

	if (!prog)
		return -2;			/* ENOENT */
	eh = (const struct elf32_ehdr *)prog->start;
	size = prog->end - prog->start;
	if (size < sizeof(*eh) || eh->e_magic != ELF_MAGIC || eh->e_class != ELFCLASS32 ||
	    eh->e_data != ELFDATA2LSB || eh->e_type != ET_EXEC || eh->e_machine != EM_386 ||
	    eh->e_phentsize != sizeof(*ph) || eh->e_phnum > MAX_PHDRS ||
	    eh->e_phoff > size || eh->e_phnum * sizeof(*ph) > size - eh->e_phoff)
		return -8;			/* ENOEXEC */
	ph = (const struct elf32_phdr *)(prog->start + eh->e_phoff);

	for (i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD || !ph[i].p_memsz)
			continue;
		if (ph[i].p_filesz > ph[i].p_memsz || ph[i].p_vaddr < PAGE_SIZE ||
		    !user_range(ph[i].p_vaddr, ph[i].p_memsz, USER_HEAP_LIMIT) ||
		    ph[i].p_offset > size || ph[i].p_filesz > size - ph[i].p_offset)
			return -8;
		if (eh->e_entry >= ph[i].p_vaddr && eh->e_entry - ph[i].p_vaddr < ph[i].p_memsz)
			entry_ok = 1;
	}
	if (!entry_ok)
		return -8;

	lazy_mmu_enter();
	for (i = 0; i < eh->e_phnum && !err; i++) {
		if (ph[i].p_type != PT_LOAD || !ph[i].p_memsz)
			continue;
		err = load_segment(mm, prog->start, &ph[i]);
		if (ph[i].p_vaddr + ph[i].p_memsz > top)
			top = ph[i].p_vaddr + ph[i].p_memsz;
	}
	if (!err)
		err = setup_stack(mm, name, arg, user_esp);
	lazy_mmu_leave();
	if (err)
		return err;

	/* The heap starts on the page after the image, empty. */
	mm->start_brk = mm->brk = PAGE_ALIGN(top);
	*entry = eh->e_entry;
	return 0;
}
