/*
 * lr-workload: a restorable sample workload with verifiable memory.
 *
 * Fills --mib MiB of private anonymous memory with pseudo-random pages (every
 * 16th page left untouched, so the image has holes), then sleeps. On SIGUSR1
 * every process of the tree recomputes a checksum over its memory and prints
 *   report role=ROLE pid=NSPID seq=N checksum=HEX16 mib=M
 * as one write(2). The data never changes after the fill (unless one of the
 * ops below is requested), so a checksum that differs across checkpoint/restore
 * means memory was not restored exactly.
 *
 * Each process keeps a page model of its memory: the main region as a list of
 * mapped segments {address, length, first page index}, page contents being
 * regenerated from the seed. On SIGRTMIN+1 every process compares each mapped
 * page with the model and prints one line
 *   verify role=ROLE pid=NSPID ok pages=N
 *   verify role=ROLE pid=NSPID BAD page=INDEX addr=0xADDR pages=N
 * (N: pages compared; INDEX: first bad page, index within its region).
 *
 * Ops, for the main process only (children ignore them), each printing
 * "op NAME done" or "op NAME failed errno=E" (or "op NAME skipped" when
 * already applied; every op but fork applies at most once):
 *   SIGRTMIN+2 fork      fork a child "fork<k>" that verifies and exits 0/1
 *   SIGRTMIN+3 dontneed  MADV_DONTNEED the 2nd eighth of the main region
 *   SIGRTMIN+4 munmap    munmap the 4th eighth
 *   SIGRTMIN+5 mremap    move the 6th eighth onto a fresh PROT_NONE reservation
 *   SIGRTMIN+6 kwrite    write(2) the 7th eighth to a memfd, read it back and
 *                        compare: "op kwrite done ok" / "op kwrite done BAD page=INDEX"
 *
 * Options: --mib N (default 256), --threads N (idle threads that tick),
 * --children N (forked after the fill; each adds --child-mib N of its own),
 * --seed N, --scanners N (threads that keep comparing the main region with the
 * model, printing "scan thread=T pass=P ok" at most once a second and
 * "scan thread=T BAD page=INDEX addr=0xADDR" on mismatches), --heartbeat S (the
 * main process prints "heartbeat HH:MM:SS role=main checksum=HEX16 mib=M" every
 * S seconds), --writers N and --write-mib M (default 64: N threads that keep rewriting M MiB of
 * self-describing pages; on SIGRTMIN+1 main also prints "writes role=main ok|BAD ...", see writers.h),
 * --serve N (the main region holds a key-value table of self-describing records instead of pseudo-random
 * pages, without holes, and a thread answers "GET <first_key> <count>" requests on the abstract unix socket
 * @lr-workload-kv-N; see serve.h), --fill 0|1|2 (the main region's pages: 0 random, 1 compressible
 * "text", 2 random with every 4th run of 32 pages all zeros; see page_generate). Hidden:
 * --selftest-corrupt flips a byte of page 5 after the fill, behind the model's
 * back. Exits 0 on SIGUSR2 (SIGTERM is ignored by a pid-namespace init).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"
#include "writers.h"

#define PAGE 4096UL
#define HOLE_EVERY 16
#define MAX_SEGS 8
#define SIG_VERIFY (SIGRTMIN + 1)
#define SIG_FIRST_OP (SIGRTMIN + 2)
#define NO_PAGE SIZE_MAX

/* A mapped run of pages [first, first + npages) of a region, now at addr. */
struct segment {
	unsigned char *addr;
	size_t first, npages;
};

/* What a region should hold; segments sorted by first page index. */
struct model {
	pthread_rwlock_t lock; /* ops write; verify, report and scanners read */
	struct segment seg[MAX_SEGS];
	int nseg;
	size_t npages; /* pages of the region as filled */
	uint64_t seed;
	size_t zero_first, zero_end; /* pages discarded by MADV_DONTNEED */
	const struct kv_layout *kv;  /* --serve: pages hold the key-value table (no holes) */
	unsigned long fill;          /* --fill: FILL_RANDOM, FILL_TEXT or FILL_ZEROS */
};

enum { FILL_RANDOM = 0, FILL_TEXT = 1, FILL_ZEROS = 2 };

struct options {
	unsigned long mib, child_mib, threads, children, scanners, heartbeat_s, writers, write_mib, serve_id, fill;
	uint64_t seed;
	int corrupt, serve;
};

/* One process of the tree: what it checks and, for main, which ops it did. */
struct proc {
	const char *role;
	struct model *models[2];
	int nmodels, is_main;
	unsigned long mib, seq;
	unsigned forks, done;
	unsigned long heartbeat_s; /* main: print a heartbeat this often (0: never) */
	struct writers *writers;   /* main with --writers: the region they keep rewriting */
};

struct scanner {
	struct model *m;
	unsigned long idx, count;
	unsigned char *reported; /* per page: mismatch already printed */
};

struct check {
	size_t pages, bad_page;
	const unsigned char *bad_addr;
};

static volatile sig_atomic_t report_requested;
static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t rt_pending[_NSIG];

static void on_usr1(int sig) { (void)sig; report_requested = 1; }
static void on_usr2(int sig) { (void)sig; stop_requested = 1; }
static void on_rt(int sig) { if (sig > 0 && sig < _NSIG) rt_pending[sig] = 1; }

/* Print one line with a single write(2), so concurrent lines never interleave. */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int len = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (len < 0 || (size_t)len >= sizeof(line))
		len = (int)strlen(line);
	if (write(STDOUT_FILENO, line, (size_t)len) != len)
		perror("lr-workload: write");
}

/* Report a failed call perror-style; keeps errno for the caller. */
static int fail(const char *call)
{
	int err = errno;
	fprintf(stderr, "lr-workload: %s: %s\n", call, strerror(err));
	errno = err;
	return -1;
}

static void check_lock(int err, const char *call)
{
	if (!err)
		return;
	fprintf(stderr, "lr-workload: %s: %s\n", call, strerror(err));
	abort();
}

static void lock_read(struct model *m) { check_lock(pthread_rwlock_rdlock(&m->lock), "pthread_rwlock_rdlock"); }
static void lock_write(struct model *m) { check_lock(pthread_rwlock_wrlock(&m->lock), "pthread_rwlock_wrlock"); }
static void unlock(struct model *m) { check_lock(pthread_rwlock_unlock(&m->lock), "pthread_rwlock_unlock"); }

/*
 * The data of a (non-hole) page, as the fill writes it. FILL_RANDOM: random words (incompressible).
 * FILL_TEXT: 64 random bytes, then the same words counting up (zstd packs it several times over).
 * FILL_ZEROS: every 4th run of 32 pages all zeros (written: they are in the checkpoint), the rest random.
 */
static void page_generate(uint64_t seed, unsigned long fill, size_t page, uint64_t *w)
{
	uint64_t s = seed ^ (page * 0x9E3779B97F4A7C15ULL) ^ 0xD1B54A32D192ED03ULL;
	if (fill == FILL_ZEROS && (page / 32) % 4 == 0) {
		memset(w, 0, PAGE);
		return;
	}
	for (size_t i = 0; i < PAGE / 8; i++)
		w[i] = fill == FILL_TEXT && i >= 8 ? w[i % 8] + i / 8 : lr_xorshift(&s);
}

static int is_hole(const struct model *m, size_t page)
{
	return !m->kv && page % HOLE_EVERY == HOLE_EVERY - 1;
}

static void page_expected(const struct model *m, size_t page, uint64_t *w)
{
	if (is_hole(m, page) || (page >= m->zero_first && page < m->zero_end))
		memset(w, 0, PAGE);
	else if (m->kv)
		kv_page_generate(m->kv, page, w);
	else
		page_generate(m->seed, m->fill, page, w);
}

static int page_matches(const struct model *m, size_t page, const unsigned char *addr, uint64_t *scratch)
{
	page_expected(m, page, scratch);
	return !memcmp(addr, scratch, PAGE);
}

/* Where page index `page` is mapped now, or NULL if it was unmapped. */
static unsigned char *model_addr(const struct model *m, size_t page)
{
	for (int s = 0; s < m->nseg; s++)
		if (page >= m->seg[s].first && page - m->seg[s].first < m->seg[s].npages)
			return m->seg[s].addr + (page - m->seg[s].first) * PAGE;
	return NULL;
}

static int model_init(struct model *m, unsigned char *base, size_t npages, uint64_t seed, const struct kv_layout *kv)
{
	pthread_rwlockattr_t attr;
	int err = pthread_rwlockattr_init(&attr);
	if (!err) /* scanners hold the lock almost always: writers must not starve */
		err = pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (!err)
		err = pthread_rwlock_init(&m->lock, &attr);
	if (err) {
		fprintf(stderr, "lr-workload: pthread_rwlock_init: %s\n", strerror(err));
		return -1;
	}
	pthread_rwlockattr_destroy(&attr);
	m->seg[0] = (struct segment){base, 0, npages};
	m->nseg = 1;
	m->npages = npages;
	m->seed = seed;
	m->zero_first = m->zero_end = 0;
	m->kv = kv;
	return 0;
}

/* Map and fill a region; with kv, its pages hold that key-value table. */
static int region_fill(struct model *m, size_t mib, uint64_t seed, const struct kv_layout *kv, unsigned long fill)
{
	size_t len = mib << 20;
	unsigned char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		perror("lr-workload: mmap");
		return -1;
	}
	if (model_init(m, base, len / PAGE, seed, kv))
		return -1;
	m->fill = fill;
	for (size_t page = 0; page < len / PAGE; page++) {
		if (is_hole(m, page))
			continue;
		if (kv)
			kv_page_generate(kv, page, (uint64_t *)(base + page * PAGE));
		else
			page_generate(seed, fill, page, (uint64_t *)(base + page * PAGE));
	}
	return 0;
}

/* FNV-1a style mix over 64-bit words; reads every mapped byte including the holes. */
static uint64_t model_checksum(struct model *m, uint64_t h)
{
	lock_read(m);
	for (int s = 0; s < m->nseg; s++) {
		const uint64_t *w = (const uint64_t *)m->seg[s].addr;
		for (size_t i = 0; i < m->seg[s].npages * (PAGE / 8); i++)
			h = (h ^ w[i]) * 0x100000001B3ULL;
	}
	unlock(m);
	return h;
}

/* Compare every mapped page with the model; remember the first mismatch. */
static void model_check(struct model *m, struct check *c)
{
	uint64_t want[PAGE / 8];
	lock_read(m);
	for (int s = 0; s < m->nseg; s++) {
		for (size_t i = 0; i < m->seg[s].npages; i++) {
			const unsigned char *addr = m->seg[s].addr + i * PAGE;
			if (!page_matches(m, m->seg[s].first + i, addr, want) && c->bad_page == NO_PAGE) {
				c->bad_page = m->seg[s].first + i;
				c->bad_addr = addr;
			}
			c->pages++;
		}
	}
	unlock(m);
}

static int verify(const char *role, struct model *const *models, int n)
{
	struct check c = {.bad_page = NO_PAGE};
	for (int i = 0; i < n; i++)
		model_check(models[i], &c);
	if (c.bad_page == NO_PAGE) {
		say("verify role=%s pid=%d ok pages=%zu\n", role, getpid(), c.pages);
		return 0;
	}
	say("verify role=%s pid=%d BAD page=%zu addr=0x%" PRIxPTR " pages=%zu\n", role, getpid(), c.bad_page,
	    (uintptr_t)c.bad_addr, c.pages);
	return -1;
}

/*
 * The k-th eighth [*a, *b) of the region and the segment holding all of it.
 * Fails (EFAULT) if it is not mapped in one piece, or (ENOSPC) if splitting
 * that segment in three would overflow the model.
 */
static int op_range(const struct model *m, int k, size_t *a, size_t *b, int *seg)
{
	*a = m->npages * (size_t)k / 8;
	*b = m->npages * (size_t)(k + 1) / 8;
	for (*seg = 0; *seg < m->nseg; ++*seg) {
		const struct segment *s = &m->seg[*seg];
		if (*a >= s->first && *b <= s->first + s->npages && *a < *b)
			break;
	}
	if (*seg == m->nseg) {
		fprintf(stderr, "lr-workload: pages %zu-%zu are not mapped in one piece\n", *a, *b);
		errno = EFAULT;
		return -1;
	}
	if (m->nseg + 2 > MAX_SEGS) {
		fprintf(stderr, "lr-workload: page model full (%d segments)\n", m->nseg);
		errno = ENOSPC;
		return -1;
	}
	return 0;
}

static unsigned char *seg_addr(const struct model *m, int s, size_t page)
{
	return m->seg[s].addr + (page - m->seg[s].first) * PAGE;
}

/* Replace pages [a, b) of segment s by a segment at addr (or by nothing if NULL). */
static void model_carve(struct model *m, int s, size_t a, size_t b, unsigned char *addr)
{
	struct segment old = m->seg[s], piece[3];
	size_t end = old.first + old.npages;
	int n = 0;
	if (a > old.first)
		piece[n++] = (struct segment){old.addr, old.first, a - old.first};
	if (addr)
		piece[n++] = (struct segment){addr, a, b - a};
	if (b < end)
		piece[n++] = (struct segment){seg_addr(m, s, b), b, end - b};
	memmove(&m->seg[s + n], &m->seg[s + 1], (size_t)(m->nseg - s - 1) * sizeof(old));
	memcpy(&m->seg[s], piece, (size_t)n * sizeof(old));
	m->nseg += n - 1;
}

static int op_dontneed(struct proc *p, char *detail, size_t size)
{
	struct model *m = p->models[0];
	size_t a, b;
	int s;
	(void)detail, (void)size;
	if (op_range(m, 1, &a, &b, &s))
		return -1;
	if (madvise(seg_addr(m, s, a), (b - a) * PAGE, MADV_DONTNEED))
		return fail("madvise");
	m->zero_first = a;
	m->zero_end = b;
	return 0;
}

static int op_munmap(struct proc *p, char *detail, size_t size)
{
	struct model *m = p->models[0];
	size_t a, b;
	int s;
	(void)detail, (void)size;
	if (op_range(m, 3, &a, &b, &s))
		return -1;
	if (munmap(seg_addr(m, s, a), (b - a) * PAGE))
		return fail("munmap");
	model_carve(m, s, a, b, NULL);
	return 0;
}

static int op_mremap(struct proc *p, char *detail, size_t size)
{
	struct model *m = p->models[0];
	size_t a, b;
	int s;
	(void)detail, (void)size;
	if (op_range(m, 5, &a, &b, &s))
		return -1;
	size_t len = (b - a) * PAGE;
	void *dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED)
		return fail("mmap");
	void *got = mremap(seg_addr(m, s, a), len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (got == MAP_FAILED) {
		int err = errno;
		fail("mremap");
		if (munmap(dst, len))
			fail("munmap");
		errno = err;
		return -1;
	}
	model_carve(m, s, a, b, got);
	return 0;
}

/* First page of [a, b) whose copy in buf differs from the model, or NO_PAGE. */
static size_t first_bad(const struct model *m, size_t a, size_t b, const unsigned char *buf)
{
	uint64_t want[PAGE / 8];
	for (size_t page = a; page < b; page++)
		if (!page_matches(m, page, buf + (page - a) * PAGE, want))
			return page;
	return NO_PAGE;
}

/* Through a memfd and back: write(2) makes the kernel read (and fault in) src. */
static int kernel_roundtrip(int fd, const unsigned char *src, unsigned char *buf, size_t len)
{
	ssize_t n = write(fd, src, len);
	if (n < 0)
		return fail("write");
	if ((size_t)n != len) {
		fprintf(stderr, "lr-workload: write: wrote %zd of %zu bytes\n", n, len);
		errno = EIO;
		return -1;
	}
	n = pread(fd, buf, len, 0);
	if (n < 0)
		return fail("pread");
	if ((size_t)n != len) {
		fprintf(stderr, "lr-workload: pread: read %zd of %zu bytes\n", n, len);
		errno = EIO;
		return -1;
	}
	return 0;
}

static int op_kwrite(struct proc *p, char *detail, size_t size)
{
	struct model *m = p->models[0];
	size_t a, b;
	int s, rc = -1;
	if (op_range(m, 6, &a, &b, &s))
		return -1;
	unsigned char *buf = malloc((b - a) * PAGE);
	if (!buf)
		return fail("malloc");
	int fd = memfd_create("lr-workload-kwrite", MFD_CLOEXEC);
	if (fd < 0)
		fail("memfd_create");
	else if (!kernel_roundtrip(fd, seg_addr(m, s, a), buf, (b - a) * PAGE)) {
		size_t bad = first_bad(m, a, b, buf);
		if (bad == NO_PAGE)
			snprintf(detail, size, " ok");
		else
			snprintf(detail, size, " BAD page=%zu", bad);
		rc = 0;
	}
	int err = errno;
	if (fd >= 0 && close(fd))
		rc = fail("close");
	else
		errno = err;
	free(buf);
	return rc;
}

/* The fork op's child: verify what was inherited, exit 0 if it matches. */
static __attribute__((noreturn)) void fork_child(struct proc *p)
{
	char role[32];
	snprintf(role, sizeof(role), "fork%u", p->forks);
	/* The parent held the lock for writing across fork(); this single-threaded
	 * child cannot unlock it, so it starts a fresh one. */
	int err = pthread_rwlock_init(&p->models[0]->lock, NULL);
	if (err) {
		fprintf(stderr, "lr-workload: pthread_rwlock_init: %s\n", strerror(err));
		_exit(1);
	}
	_exit(verify(role, p->models, 1) ? 1 : 0);
}

static int op_fork(struct proc *p, char *detail, size_t size)
{
	(void)detail, (void)size;
	pid_t pid = fork();
	if (pid < 0)
		return fail("fork");
	if (pid == 0)
		fork_child(p);
	p->forks++;
	return 0;
}

struct op {
	const char *name;
	int (*run)(struct proc *p, char *detail, size_t size);
	int once;
};

/* Indexed by signal - SIG_FIRST_OP. Every op but fork applies at most once. */
static const struct op ops[] = {
	{"fork", op_fork, 0},
	{"dontneed", op_dontneed, 1},
	{"munmap", op_munmap, 1},
	{"mremap", op_mremap, 1},
	{"kwrite", op_kwrite, 1},
};
#define NOPS ((int)(sizeof(ops) / sizeof(ops[0])))

static void run_op(struct proc *p, int k)
{
	char detail[64] = "";
	if (ops[k].once && (p->done & (1u << k))) {
		say("op %s skipped\n", ops[k].name);
		return;
	}
	lock_write(p->models[0]);
	int rc = ops[k].run(p, detail, sizeof(detail));
	int err = errno;
	unlock(p->models[0]);
	if (rc) {
		say("op %s failed errno=%d\n", ops[k].name, err);
		return;
	}
	p->done |= 1u << k;
	say("op %s done%s\n", ops[k].name, detail);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts)) {
		fail("clock_gettime");
		return 0;
	}
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One pass over this scanner's share; prints new mismatches (and, if
 * `repeat`, persisting ones). Returns whether any page mismatched. */
static int scan_pass(struct scanner *sc, int repeat)
{
	uint64_t want[PAGE / 8];
	int bad = 0;
	for (size_t page = sc->idx; page < sc->m->npages; page += sc->count) {
		lock_read(sc->m);
		const unsigned char *addr = model_addr(sc->m, page);
		int ok = !addr || page_matches(sc->m, page, addr, want);
		unlock(sc->m);
		if (!ok && (!sc->reported[page] || repeat))
			say("scan thread=%lu BAD page=%zu addr=0x%" PRIxPTR "\n", sc->idx, page, (uintptr_t)addr);
		sc->reported[page] = !ok;
		bad |= !ok;
	}
	return bad;
}

static void *scanner(void *arg)
{
	struct scanner *sc = arg;
	struct timespec pause = {0, 1000 * 1000};
	uint64_t next_ok = 0, next_repeat = 0;
	for (unsigned long pass = 1;; pass++) {
		uint64_t now = now_ms();
		int repeat = now >= next_repeat;
		if (repeat)
			next_repeat = now + 1000;
		int bad = scan_pass(sc, repeat);
		now = now_ms();
		if (!bad && now >= next_ok) {
			say("scan thread=%lu pass=%lu ok\n", sc->idx, pass);
			next_ok = now + 1000;
		}
		nanosleep(&pause, NULL);
	}
	return NULL;
}

static int start_scanners(struct model *m, unsigned long n)
{
	if (!n)
		return 0;
	struct scanner *sc = calloc(n, sizeof(*sc));
	if (!sc)
		return fail("calloc");
	for (unsigned long i = 0; i < n; i++) {
		sc[i] = (struct scanner){m, i, n, calloc(m->npages, 1)};
		if (!sc[i].reported)
			return fail("calloc");
		pthread_t t;
		int err = pthread_create(&t, NULL, scanner, &sc[i]);
		if (err) {
			fprintf(stderr, "lr-workload: pthread_create: %s\n", strerror(err));
			return -1;
		}
	}
	return 0;
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

static uint64_t proc_checksum(struct proc *p)
{
	uint64_t h = 0xCBF29CE484222325ULL;
	for (int i = 0; i < p->nmodels; i++)
		h = model_checksum(p->models[i], h);
	return h;
}

static void report(struct proc *p)
{
	say("report role=%s pid=%d seq=%lu checksum=%016" PRIx64 " mib=%lu\n", p->role, getpid(), ++p->seq,
	    proc_checksum(p), p->mib);
}

/* --heartbeat: the checksum over all memory now and then, with the wall-clock time. */
static void heartbeat(struct proc *p, uint64_t *next)
{
	uint64_t now = now_ms();
	if (!p->heartbeat_s || now < *next)
		return;
	*next = now + p->heartbeat_s * 1000;
	time_t t = time(NULL);
	struct tm tm;
	char when[16] = "?";
	if (localtime_r(&t, &tm))
		strftime(when, sizeof(when), "%H:%M:%S", &tm);
	say("heartbeat %s role=%s checksum=%016" PRIx64 " mib=%lu\n", when, p->role, proc_checksum(p), p->mib);
}

/* Collect exited children (fork op children may sit as zombies until here). */
static void reap_children(void)
{
	pid_t pid;
	do
		pid = waitpid(-1, NULL, WNOHANG);
	while (pid > 0);
	if (pid < 0 && errno != ECHILD && errno != EINTR)
		fail("waitpid");
}

static int take(int sig)
{
	if (!rt_pending[sig])
		return 0;
	rt_pending[sig] = 0;
	return 1;
}

static void serve(struct proc *p)
{
	uint64_t next_beat = 0;
	report(p);
	while (!stop_requested) {
		heartbeat(p, &next_beat);
		if (report_requested) {
			report_requested = 0;
			report(p);
		}
		if (take(SIG_VERIFY)) {
			verify(p->role, p->models, p->nmodels);
			if (p->writers)
				writers_verify(p->writers, p->role);
		}
		for (int k = 0; k < NOPS; k++)
			if (take(SIG_FIRST_OP + k) && p->is_main)
				run_op(p, k);
		if (p->is_main)
			reap_children();
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

static int set_option(struct options *o, const char *name, unsigned long v)
{
	if (!strcmp(name, "--mib")) o->mib = v;
	else if (!strcmp(name, "--child-mib")) o->child_mib = v;
	else if (!strcmp(name, "--threads")) o->threads = v;
	else if (!strcmp(name, "--children")) o->children = v;
	else if (!strcmp(name, "--seed")) o->seed = v;
	else if (!strcmp(name, "--scanners")) o->scanners = v;
	else if (!strcmp(name, "--heartbeat")) o->heartbeat_s = v;
	else if (!strcmp(name, "--writers")) o->writers = v;
	else if (!strcmp(name, "--write-mib")) o->write_mib = v;
	else if (!strcmp(name, "--serve")) o->serve = 1, o->serve_id = v;
	else if (!strcmp(name, "--fill") && v <= FILL_ZEROS) o->fill = v;
	else {
		fprintf(stderr, "lr-workload: unknown option %s (expected --mib, --child-mib, --threads, --children, --seed, "
			"--scanners, --heartbeat, --writers, --write-mib, --serve, --fill 0|1|2)\n", name);
		return -1;
	}
	return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	*o = (struct options){.mib = 256, .child_mib = 16, .seed = 1, .write_mib = 64};
	for (int i = 1; i < argc; i++) {
		unsigned long v;
		if (!strcmp(argv[i], "--selftest-corrupt")) {
			o->corrupt = 1;
			continue;
		}
		if (i + 1 >= argc || parse_ul(argv[i + 1], &v)) {
			fprintf(stderr, "lr-workload: option %s needs a whole number\n", argv[i]);
			return -1;
		}
		if (set_option(o, argv[i], v))
			return -1;
		i++;
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

static int install_handlers(void)
{
	struct sigaction sa = {.sa_handler = on_rt, .sa_flags = SA_RESTART};
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	if (sigemptyset(&sa.sa_mask))
		return fail("sigemptyset");
	for (int sig = SIG_VERIFY; sig < SIG_FIRST_OP + NOPS; sig++)
		if (sigaction(sig, &sa, NULL))
			return fail("sigaction");
	return 0;
}

static void run_child(unsigned long idx, const struct options *o, struct model *parent)
{
	struct model own;
	char role[32];
	if (region_fill(&own, o->child_mib, o->seed + 1000 + idx, NULL, FILL_RANDOM))
		_exit(1);
	snprintf(role, sizeof(role), "child%lu", idx);
	struct proc p = {.role = role, .models = {parent, &own}, .nmodels = 2, .mib = o->mib + o->child_mib};
	serve(&p);
	_exit(0);
}

static int fork_children(const struct options *o, struct model *main_model)
{
	for (unsigned long i = 0; i < o->children; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("lr-workload: fork");
			return -1;
		}
		if (pid == 0)
			run_child(i, o, main_model);
	}
	return 0;
}

/* --serve: a record of the main region as the process sees it now (the server's kv_source). */
static int kv_read(void *ctx, uint64_t slot, uint64_t rec[KV_WORDS])
{
	struct model *m = ctx;
	lock_read(m);
	const unsigned char *page = model_addr(m, slot / m->kv->per_page);
	if (page)
		memcpy(rec, page + slot % m->kv->per_page * KV_RECORD, KV_RECORD);
	unlock(m);
	return page ? 0 : -1;
}

/* --serve: the layout of a table filling mib MiB (on the heap: the server thread outlives main's frame). */
static struct kv_layout *kv_table(const struct options *o)
{
	struct kv_layout *kv = malloc(sizeof(*kv));
	if (!kv) {
		perror("lr-workload: malloc");
		return NULL;
	}
	if (kv_layout_init(kv, (o->mib << 20) / PAGE, PAGE, o->seed)) {
		fprintf(stderr, "lr-workload: --serve needs --mib of at least 1\n");
		free(kv);
		return NULL;
	}
	return kv;
}

int main(int argc, char **argv)
{
	struct options o;
	if (parse_options(argc, argv, &o))
		return 2;
	setvbuf(stdout, NULL, _IONBF, 0);
	/* On the heap: scanners keep reading it while exit() reuses main's stack. */
	struct model *main_model = malloc(sizeof(*main_model));
	if (!main_model) {
		perror("lr-workload: malloc");
		return 1;
	}
	struct kv_layout *kv = NULL;
	if (o.serve && !(kv = kv_table(&o)))
		return 1;
	if (install_handlers() || region_fill(main_model, o.mib, o.seed, kv, o.fill))
		return 1;
	if (o.corrupt) /* behind the model's back: verify must catch it */
		main_model->seg[0].addr[5 * PAGE + 123] ^= 0x5A;
	if (fork_children(&o, main_model) || start_threads(o.threads) || start_scanners(main_model, o.scanners))
		return 1;
	if (kv && kv_serve_start(o.serve_id, kv, (struct kv_source){kv_read, main_model}))
		return 1;
	struct proc p = {.role = "main", .models = {main_model}, .nmodels = 1, .is_main = 1, .mib = o.mib,
			 .heartbeat_s = o.heartbeat_s};
	if (o.writers && !(p.writers = writers_start(o.writers, o.write_mib, o.seed ^ 0x5752495445ULL)))
		return 1;
	serve(&p);
	while (wait(NULL) > 0 || errno == EINTR)
		;
	return 0;
}
