/*
 * hello.c - the smallest process: ring 3 code in its own address space.
 *
 * Under lguest, even a Guest's user program runs on the real (here:
 * emulated) CPU at ring 3; its system calls come to the Guest kernel
 * through a trap gate without the Host in the way, and its memory is pages
 * the Guest mapped with the USER bit and reported with SET_PTE.
 */
#include "ulib.h"

int main(int argc, char **argv)
{
	int pid = getpid();
	u32 start = brk(0), i;
	char *heap = (char *)start;
	int zeroed = 1;

	(void)argc;
	printf("hello: hello, world from pid %d (%s)\n", pid, argv[0]);

	/* Three fresh pages of heap: they must arrive zeroed. */
	if (brk(start + 3 * 4096) != (int)(start + 3 * 4096)) {
		printf("hello: brk failed\n");
		return 1;
	}
	for (i = 0; i < 3 * 4096; i++)
		if (heap[i])
			zeroed = 0;
	memset(heap, 'h', 3 * 4096);
	yield();
	printf("hello: pid %d heap %x-%x %s\n", pid, start, start + 3 * 4096,
	       zeroed && heap[3 * 4096 - 1] == 'h' ? "zeroed and writable" : "BROKEN");
	return 0;
}
