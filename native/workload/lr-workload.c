/*
 * lr-workload: a restorable sample workload with verifiable memory.
 *
 * Fills --mib MiB of private anonymous memory with pseudo-random pages (every
 * 16th page left untouched, so the image has holes), then sleeps. On SIGUSR1
 * every process of the tree recomputes a checksum over its memory and prints
 *   report role=ROLE pid=NSPID seq=N checksum=HEX16 mib=M
 * as one write(2). The data never changes after the fill, so a checksum that
 * differs across checkpoint/restore means memory was not restored exactly.
 *
 * Options: --mib N (default 256), --threads N (idle threads that tick),
 * --children N (forked after the fill; each adds --child-mib N of its own),
 * --seed N. Exits 0 on SIGUSR2 (SIGTERM is ignored by a pid-namespace init).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define HOLE_EVERY 16

struct region {
	unsigned char *base;
	size_t len;
};

struct options {
	unsigned long mib, child_mib, threads, children;
	uint64_t seed;
};

static volatile sig_atomic_t report_requested;
static volatile sig_atomic_t stop_requested;

static void on_usr1(int sig) { (void)sig; report_requested = 1; }
static void on_usr2(int sig) { (void)sig; stop_requested = 1; }

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static int region_fill(struct region *r, size_t mib, uint64_t seed)
{
	r->len = mib << 20;
	r->base = mmap(NULL, r->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r->base == MAP_FAILED) {
		perror("lr-workload: mmap");
		return -1;
	}
	for (size_t page = 0; page < r->len / PAGE; page++) {
		if (page % HOLE_EVERY == HOLE_EVERY - 1)
			continue;
		uint64_t s = seed ^ (page * 0x9E3779B97F4A7C15ULL) ^ 0xD1B54A32D192ED03ULL;
		uint64_t *w = (uint64_t *)(r->base + page * PAGE);
		for (size_t i = 0; i < PAGE / 8; i++)
			w[i] = xorshift(&s);
	}
	return 0;
}

/* FNV-1a style mix over 64-bit words; reads every byte including the holes. */
static uint64_t region_checksum(const struct region *r, uint64_t h)
{
	const uint64_t *w = (const uint64_t *)r->base;
	for (size_t i = 0; i < r->len / 8; i++)
		h = (h ^ w[i]) * 0x100000001B3ULL;
	return h;
}

static void *ticker(void *arg)
{
	volatile uint64_t *counter = arg;
	struct timespec ts = {0, 10 * 1000 * 1000};
	for (;;) {
		(*counter)++;
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void report(const char *role, struct region *rs, int n, unsigned long mib, unsigned long *seq)
{
	uint64_t h = 0xCBF29CE484222325ULL;
	for (int i = 0; i < n; i++)
		h = region_checksum(&rs[i], h);
	char line[160];
	int len = snprintf(line, sizeof(line), "report role=%s pid=%d seq=%lu checksum=%016" PRIx64 " mib=%lu\n",
			   role, getpid(), ++*seq, h, mib);
	if (write(STDOUT_FILENO, line, (size_t)len) != len)
		perror("lr-workload: write");
}

static void serve(const char *role, struct region *rs, int n, unsigned long mib)
{
	unsigned long seq = 0;
	sigset_t none;
	sigemptyset(&none);
	report(role, rs, n, mib, &seq);
	while (!stop_requested) {
		if (report_requested) {
			report_requested = 0;
			report(role, rs, n, mib, &seq);
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static int parse_ul(const char *s, unsigned long *out)
{
	char *end;
	errno = 0;
	*out = strtoul(s, &end, 10);
	return (errno || *end || end == s) ? -1 : 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	*o = (struct options){.mib = 256, .child_mib = 16, .seed = 1};
	for (int i = 1; i < argc; i += 2) {
		unsigned long v;
		if (i + 1 >= argc || parse_ul(argv[i + 1], &v)) {
			fprintf(stderr, "lr-workload: option %s needs a whole number\n", argv[i]);
			return -1;
		}
		if (!strcmp(argv[i], "--mib")) o->mib = v;
		else if (!strcmp(argv[i], "--child-mib")) o->child_mib = v;
		else if (!strcmp(argv[i], "--threads")) o->threads = v;
		else if (!strcmp(argv[i], "--children")) o->children = v;
		else if (!strcmp(argv[i], "--seed")) o->seed = v;
		else {
			fprintf(stderr, "lr-workload: unknown option %s (expected --mib, --child-mib, --threads, --children, --seed)\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

static int start_threads(unsigned long n)
{
	static uint64_t counters[64];
	for (unsigned long i = 0; i < n && i < 64; i++) {
		pthread_t t;
		int err = pthread_create(&t, NULL, ticker, &counters[i]);
		if (err) {
			fprintf(stderr, "lr-workload: pthread_create: %s\n", strerror(err));
			return -1;
		}
	}
	return 0;
}

static void run_child(unsigned long idx, const struct options *o, struct region *parent)
{
	struct region rs[2] = {*parent};
	char role[32];
	if (region_fill(&rs[1], o->child_mib, o->seed + 1000 + idx))
		_exit(1);
	snprintf(role, sizeof(role), "child%lu", idx);
	serve(role, rs, 2, o->mib + o->child_mib);
	_exit(0);
}

int main(int argc, char **argv)
{
	struct options o;
	struct region main_region;
	if (parse_options(argc, argv, &o))
		return 2;
	setvbuf(stdout, NULL, _IONBF, 0);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	if (region_fill(&main_region, o.mib, o.seed))
		return 1;
	for (unsigned long i = 0; i < o.children; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("lr-workload: fork");
			return 1;
		}
		if (pid == 0)
			run_child(i, &o, &main_region);
	}
	if (start_threads(o.threads))
		return 1;
	serve("main", &main_region, 1, o.mib);
	for (unsigned long i = 0; i < o.children; i++)
		wait(NULL);
	return 0;
}
