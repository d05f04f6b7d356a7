/*
 * sh.c - puppy's shell: a user process driving the virtio devices.
 *
 * Everything here runs at ring 3 and reaches the devices only through
 * system calls: the console's input queue (read), its output queue
 * (write), the block device, the entropy device and the network card.
 * The kernel's drivers turn each call into descriptor chains on a
 * virtqueue, kick the device, and put us to sleep until its interrupt --
 * so while we wait for a key or a disk, the vCPU halts in the Host.
 *
 * The Launcher puts a terminal in raw mode and echoes nothing, so the
 * shell echoes what is typed itself (backspace included).  Piped input
 * comes in chunks holding whole lines; those lines are echoed after the
 * prompt once read, so a transcript looks the same either way.
 */
#include "ulib.h"
#include "../bench/bench.h"

#define LINE_MAX	256
#define MAX_ARGS	16
#define SECTOR_SIZE	512
#define ETH_ALEN	6
#define ETH_HLEN	14
#define ETH_ZLEN	60		/* shortest frame on the wire (sans FCS) */
#define ETH_MAX_DATA	1500
#define ETHERTYPE_PUPPY	0x88B5		/* IEEE "local experimental" */
#define RECV_WAIT_MS	2000

static char line[LINE_MAX];

/* --- small helpers --------------------------------------------------------- */

static void puts_n(const char *s, u32 len)
{
	write(1, s, len);
}

static void say(const char *s)
{
	puts_n(s, strlen(s));
	puts_n("\n", 1);
}

static const char *error_text(int err)
{
	switch (-err) {
	case EIO:	return "I/O error";
	case EBADF:	return "bad file descriptor";
	case ENOMEM:	return "out of memory";
	case EFAULT:	return "bad address";
	case ENODEV:	return "no such device";
	case EINVAL:	return "invalid argument";
	case EROFS:	return "read-only disk";
	case ENOSYS:	return "no such system call";
	case EOPNOTSUPP: return "not supported";
	}
	return "error";
}

/* A decimal number (or 0x hex) that is the whole word; -1 if it is not. */
static int parse_number(const char *s, u32 *out)
{
	u32 v = 0, base = 10, digits = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (; *s; s++, digits++) {
		u32 d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && (*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
			d = (*s | 0x20) - 'a' + 10;
		else
			return -1;
		if (v > (0xFFFFFFFFu - d) / base)
			return -1;	/* too big for 32 bits */
		v = v * base + d;
	}
	if (!digits)
		return -1;
	*out = v;
	return 0;
}

/* --- reading a line from the console ------------------------------------ */

static char inbuf[256];
static int in_len, in_pos;
static int after_cr;		/* a "\r\n" pair ends one line, not two */
static int in_escape;		/* inside a terminal escape sequence (arrow keys) */

/*
 * One line into line[], echoed; its length, or -1 at end of input (^D on
 * an empty line; the kernel's read never reports end of file, see below).
 * A chunk without a newline is a terminal typing: echo it as it comes.
 */
static int read_line(void)
{
	int len = 0, shown = 0, live = 0;

	for (;;) {
		char c;

		if (in_pos == in_len) {
			int n = read(0, inbuf, sizeof(inbuf)), i;

			if (n <= 0)
				return -1;
			in_len = n;
			in_pos = 0;
			live = 1;
			for (i = 0; i < n; i++)
				if (inbuf[i] == '\n')
					live = 0;
		}
		c = inbuf[in_pos++];

		if (c == '\n' && after_cr) {
			after_cr = 0;
			continue;
		}
		after_cr = c == '\r';
		if (in_escape) {
			/* ESC [ ... final letter: swallow the whole sequence. */
			if (!(c == '[' || (c >= '0' && c <= '9') || c == ';'))
				in_escape = 0;
			continue;
		}
		switch (c) {
		case '\r':
		case '\n':
			puts_n(line + shown, len - shown);
			puts_n("\n", 1);
			line[len] = '\0';
			return len;
		case 0x7F:		/* backspace (DEL) or ^H */
		case 0x08:
			if (len) {
				len--;
				if (shown > len) {
					shown = len;
					puts_n("\b \b", 3);
				}
			}
			continue;
		case 0x04:		/* ^D: end of input on an empty line */
			if (!len) {
				puts_n("\n", 1);
				return -1;
			}
			continue;
		case 0x03:		/* ^C: forget the line */
			puts_n(line + shown, len - shown);
			puts_n("^C\n", 3);
			line[0] = '\0';
			return 0;
		case 0x1B:
			in_escape = 1;
			continue;
		}
		if ((unsigned char)c < 0x20 && c != '\t')
			continue;
		if (len < LINE_MAX - 1)
			line[len++] = c;
		if (live) {
			puts_n(line + shown, len - shown);
			shown = len;
		}
	}
}

/* Split line[] into words (in place); how many. */
static int split(char *s, char **argv)
{
	int argc = 0;

	while (*s && argc < MAX_ARGS) {
		while (*s == ' ' || *s == '\t')
			*s++ = '\0';
		if (!*s)
			break;
		argv[argc++] = s;
		while (*s && *s != ' ' && *s != '\t')
			s++;
	}
	return argc;
}

/* What follows the first @skip words of the original line, as typed. */
static const char *rest_of_line(const char *orig, int skip)
{
	const char *p = orig;

	while (skip--) {
		while (*p == ' ' || *p == '\t')
			p++;
		while (*p && *p != ' ' && *p != '\t')
			p++;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* --- the commands ------------------------------------------------------------ */

static void cmd_help(void)
{
	say("commands:");
	say("  help                   this list");
	say("  echo <words>           print the words");
	say("  ps                     the processes: pid, name, state");
	say("  uptime                 milliseconds since boot");
	say("  sleep <ms>             wait that long");
	say("  count <n> <ms>         count to n, a line every ms (a process to snapshot mid-run)");
	say("  disk                   the disk's size in sectors");
	say("  write <sector> <text>  put text (zero-padded) in a sector, then flush");
	say("  cat <sector>           print a sector's text");
	say("  rng <n>                n random bytes, in hex");
	say("  net mac                our Ethernet address");
	say("  net send <text>        broadcast a frame (ethertype 0x88b5) with the text");
	say("  net recv               wait up to 2 s for such a frame");
	say("  bench                  the CPU benchmark, in user mode");
	say("  exit                   end the shell (puppy powers off)");
	say("  poweroff               power off now");
}

/* A process whose progress is visible: the snapshot tests save it mid-count. */
static void cmd_count(int argc, char **argv)
{
	u32 n, ms, i;

	if (argc != 3 || parse_number(argv[1], &n) || parse_number(argv[2], &ms)) {
		say("usage: count <n> <ms>");
		return;
	}
	for (i = 1; i <= n; i++) {
		printf("count %u\n", i);
		sleep_ms(ms);
	}
}

static void cmd_ps(void)
{
	static const char *const states[] = { "running", "runnable", "sleeping", "waiting" };
	struct ps_entry list[32];
	int n = ps(list, 32), i;

	if (n < 0) {
		printf("ps: %s\n", error_text(n));
		return;
	}
	printf("  PID NAME             STATE\n");
	for (i = 0; i < n; i++) {
		char name[17];
		u32 len;

		/* Left-justified in 16 columns (printf here only pads left). */
		list[i].name[15] = '\0';
		len = strlen(list[i].name);
		memset(name, ' ', 16);
		memcpy(name, list[i].name, len);
		name[16] = '\0';
		printf("%5d %s %s\n", list[i].pid, name,
		       list[i].state >= 0 && list[i].state < 4 ? states[list[i].state] : "?");
	}
}

static int have_disk(struct disk_info *info)
{
	if (disk_info(info) < 0) {
		say("no disk");
		return 0;
	}
	return 1;
}

static void cmd_disk(void)
{
	struct disk_info info;

	if (!have_disk(&info))
		return;
	if (info.sectors_hi)
		printf("disk: more than 4294967295 sectors%s\n", info.read_only ? ", read-only" : "");
	else
		printf("disk: %u sectors (%u KiB)%s\n", info.sectors_lo, info.sectors_lo / 2,
		       info.read_only ? ", read-only" : "");
}

/* Is @sector a sector of the disk?  Says why not. */
static int sector_ok(const char *cmd, const char *word, u32 *sector)
{
	struct disk_info info;

	if (!have_disk(&info))
		return 0;
	if (parse_number(word, sector)) {
		printf("%s: bad sector number '%s'\n", cmd, word);
		return 0;
	}
	if (!info.sectors_hi && *sector >= info.sectors_lo) {
		printf("%s: sector %u is past the end of the disk (%u sectors)\n", cmd, *sector,
		       info.sectors_lo);
		return 0;
	}
	return 1;
}

static void cmd_write(int argc, char **argv, const char *orig)
{
	static char sector_buf[SECTOR_SIZE];
	const char *text = rest_of_line(orig, 2);
	u32 sector, len = strlen(text);
	int err;

	if (argc < 2) {
		say("usage: write <sector> <text>");
		return;
	}
	if (!sector_ok("write", argv[1], &sector))
		return;
	if (len > SECTOR_SIZE)
		len = SECTOR_SIZE;
	memset(sector_buf, 0, SECTOR_SIZE);
	memcpy(sector_buf, text, len);
	err = disk_write(sector, sector_buf, 1);
	if (!err)
		err = disk_flush();
	if (err)
		printf("write: %s\n", error_text(err));
	else
		printf("wrote sector %u\n", sector);
}

static void cmd_cat(int argc, char **argv)
{
	static char sector_buf[SECTOR_SIZE];
	u32 sector, len = 0;
	int err;

	if (argc != 2) {
		say("usage: cat <sector>");
		return;
	}
	if (!sector_ok("cat", argv[1], &sector))
		return;
	err = disk_read(sector, sector_buf, 1);
	if (err) {
		printf("cat: %s\n", error_text(err));
		return;
	}
	while (len < SECTOR_SIZE && sector_buf[len])
		len++;
	puts_n(sector_buf, len);
	puts_n("\n", 1);
}

static void cmd_rng(int argc, char **argv)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char bytes[256];
	char out[2 * sizeof(bytes) + 1];
	u32 n, i;
	int got;

	if (argc != 2 || parse_number(argv[1], &n) || !n || n > sizeof(bytes)) {
		say("usage: rng <n>   (1 to 256 bytes)");
		return;
	}
	got = getrandom(bytes, n);
	if (got == -ENODEV) {
		say("no rng device");
		return;
	}
	if (got < 0) {
		printf("rng: %s\n", error_text(got));
		return;
	}
	for (i = 0; i < (u32)got; i++) {
		out[2 * i] = hex[bytes[i] >> 4];
		out[2 * i + 1] = hex[bytes[i] & 15];
	}
	out[2 * i] = '\n';
	puts_n(out, 2 * i + 1);
}

static int get_mac(unsigned char mac[ETH_ALEN])
{
	if (net_mac(mac) < 0) {
		say("no net device");
		return -1;
	}
	return 0;
}

static void net_send_text(const char *text)
{
	static unsigned char frame[ETH_HLEN + ETH_MAX_DATA];
	u32 len = strlen(text), total;
	int err;

	if (get_mac(frame + ETH_ALEN))
		return;
	if (len > ETH_MAX_DATA)
		len = ETH_MAX_DATA;
	memset(frame, 0xFF, ETH_ALEN);			/* broadcast */
	frame[12] = ETHERTYPE_PUPPY >> 8;
	frame[13] = ETHERTYPE_PUPPY & 0xFF;
	memcpy(frame + ETH_HLEN, text, len);
	total = ETH_HLEN + len;
	if (total < ETH_ZLEN) {				/* pad with zeros */
		memset(frame + total, 0, ETH_ZLEN - total);
		total = ETH_ZLEN;
	}
	err = net_send(frame, total);
	if (err)
		printf("net send: %s\n", error_text(err));
	else
		printf("sent %u bytes\n", len);
}

/* Frames of other kinds are skipped; the wait is for ours only. */
static void net_recv_text(void)
{
	static unsigned char frame[ETH_HLEN + ETH_MAX_DATA];
	unsigned char mac[ETH_ALEN];
	u32 start = uptime_ms(), waited;

	if (get_mac(mac))
		return;
	while ((waited = uptime_ms() - start) < RECV_WAIT_MS) {
		int n = net_recv(frame, sizeof(frame), RECV_WAIT_MS - waited), len = 0;

		if (n < 0) {
			printf("net recv: %s\n", error_text(n));
			return;
		}
		if (n == 0)
			break;
		if (n < ETH_HLEN || frame[12] != ETHERTYPE_PUPPY >> 8 ||
		    frame[13] != (ETHERTYPE_PUPPY & 0xFF))
			continue;
		while (ETH_HLEN + len < n && frame[ETH_HLEN + len])
			len++;
		puts_n("received: ", 10);
		puts_n((char *)frame + ETH_HLEN, len);
		puts_n("\n", 1);
		return;
	}
	say("nothing received");
}

static void cmd_net(int argc, char **argv, const char *orig)
{
	unsigned char mac[ETH_ALEN];

	if (argc >= 2 && !strcmp(argv[1], "send")) {
		net_send_text(rest_of_line(orig, 2));
	} else if (argc == 2 && !strcmp(argv[1], "recv")) {
		net_recv_text();
	} else if (argc == 2 && !strcmp(argv[1], "mac")) {
		if (!get_mac(mac))
			printf("mac %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2],
			       mac[3], mac[4], mac[5]);
	} else {
		say("usage: net mac | net send <text> | net recv");
	}
}

static void cmd_bench(void)
{
	u32 start = uptime_ms(), sum;

	sum = puppy_bench();
	printf("bench checksum 0x%08x in %u ms\n", sum, uptime_ms() - start);
}

/* --- the loop ---------------------------------------------------------------- */

/* Run one line; 0 to go on, 1 to leave the shell. */
static int run(char *s)
{
	static char orig[LINE_MAX];
	char *argv[MAX_ARGS];
	u32 ms;
	int argc, i;

	memcpy(orig, s, LINE_MAX);
	argc = split(s, argv);
	if (!argc)
		return 0;
	if (!strcmp(argv[0], "help")) {
		cmd_help();
	} else if (!strcmp(argv[0], "echo")) {
		/* One write for the whole line. */
		static char out[LINE_MAX + 1];
		u32 n = 0, len;

		for (i = 1; i < argc; i++) {
			len = strlen(argv[i]);
			if (i > 1)
				out[n++] = ' ';
			memcpy(out + n, argv[i], len);
			n += len;
		}
		out[n++] = '\n';
		puts_n(out, n);
	} else if (!strcmp(argv[0], "ps")) {
		cmd_ps();
	} else if (!strcmp(argv[0], "uptime")) {
		printf("up %u ms\n", uptime_ms());
	} else if (!strcmp(argv[0], "sleep")) {
		if (argc == 2 && !parse_number(argv[1], &ms))
			sleep_ms(ms);
		else
			say("usage: sleep <ms>");
	} else if (!strcmp(argv[0], "count")) {
		cmd_count(argc, argv);
	} else if (!strcmp(argv[0], "disk")) {
		cmd_disk();
	} else if (!strcmp(argv[0], "write")) {
		cmd_write(argc, argv, orig);
	} else if (!strcmp(argv[0], "cat")) {
		cmd_cat(argc, argv);
	} else if (!strcmp(argv[0], "rng")) {
		cmd_rng(argc, argv);
	} else if (!strcmp(argv[0], "net")) {
		cmd_net(argc, argv, orig);
	} else if (!strcmp(argv[0], "bench")) {
		cmd_bench();
	} else if (!strcmp(argv[0], "exit")) {
		return 1;
	} else if (!strcmp(argv[0], "poweroff")) {
		poweroff();
	} else {
		printf("sh: %s: not found\n", argv[0]);
	}
	return 0;
}

int main(void)
{
	for (;;) {
		puts_n("puppy$ ", 7);
		if (read_line() < 0 || run(line))
			break;
	}
	return 0;
}
