/*
 * steady.c - the well-behaved process among hostile ones.
 *
 * It keeps a page of secret data at SECRET_ADDR and checks it, round after
 * round, while the "evil" processes around it try everything a user program
 * might to reach the kernel, the Host's Switcher, or other processes'
 * memory.  lguest's promise is that a Guest kernel can keep its processes
 * apart exactly as on hardware: if it does, the secret survives and this
 * program ends by saying "isolation ok".
 */
#include "ulib.h"

#define ROUNDS	10

int main(void)
{
	int pid = getpid(), round, intact = 1;
	u32 *secret = (u32 *)SECRET_ADDR, seed = 0x5EC2E7 + pid, x, i;

	if (brk(SECRET_ADDR + 4096) < 0) {
		printf("steady: pid %d: no heap\n", pid);
		return 1;
	}
	for (i = 0, x = seed; i < 1024; i++)
		secret[i] = x = next_random(x);
	printf("steady: pid %d keeps a secret page at %x\n", pid, SECRET_ADDR);

	for (round = 1; round <= ROUNDS; round++) {
		sleep_ms(20);
		for (i = 0, x = seed; i < 1024; i++)
			if (secret[i] != (x = next_random(x)))
				intact = 0;
	}
	if (!intact) {
		printf("steady: pid %d: secret page CORRUPTED\n", pid);
		return 1;
	}
	printf("steady: pid %d: secret intact after %d rounds: isolation ok\n", pid, ROUNDS);
	return 0;
}
