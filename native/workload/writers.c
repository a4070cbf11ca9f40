/* writers.c: threads that keep rewriting self-describing pages (see writers.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "writers.h"

#define WPAGE 4096UL
#define WORDS (WPAGE / 8)
#define BURST 16 /* pages written between two 1 ms pauses: about 64 MB/s per writer */

struct share {
	pthread_mutex_t lock; /* held while a page of the share is written, and while it is verified */
	uint64_t *pages;      /* npages pages */
	size_t first, npages; /* page indexes [first, first + npages) of the region */
	uint64_t seed;
};

struct writers {
	struct share *shares;
	unsigned long n;
	size_t npages;
};

static uint64_t stream_seed(uint64_t seed, uint64_t index, uint64_t gen)
{
	return (seed ^ (index * 0x9E3779B97F4A7C15ULL) ^ (gen * 0xC2B2AE3D27D4EB4FULL)) | 1;
}

static void page_write(uint64_t *p, uint64_t seed, uint64_t index, uint64_t gen)
{
	uint64_t s = stream_seed(seed, index, gen);
	p[0] = index;
	p[1] = gen;
	for (size_t i = 2; i < WORDS; i++)
		p[i] = lr_xorshift(&s);
}

/* Whether the page holds what page_write wrote for its index and its generation (>= 1). */
static int page_ok(const uint64_t *p, uint64_t seed, uint64_t index)
{
	uint64_t s = stream_seed(seed, index, p[1]);
	if (p[0] != index || p[1] == 0)
		return 0;
	for (size_t i = 2; i < WORDS; i++)
		if (p[i] != lr_xorshift(&s))
			return 0;
	return 1;
}

static void lock(pthread_mutex_t *m)
{
	int err = pthread_mutex_lock(m);
	if (err) {
		fprintf(stderr, "lr-workload: pthread_mutex_lock: %s\n", strerror(err));
		abort();
	}
}

static void unlock(pthread_mutex_t *m)
{
	int err = pthread_mutex_unlock(m);
	if (err) {
		fprintf(stderr, "lr-workload: pthread_mutex_unlock: %s\n", strerror(err));
		abort();
	}
}

/* One line in one write(2), so that it never interleaves with the other threads' lines. */
__attribute__((format(printf, 1, 2))) static void say_line(const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int len = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (len > 0 && write(STDOUT_FILENO, line, (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1) < 0)
		perror("lr-workload: write");
}

static void *writer(void *arg)
{
	struct share *sh = arg;
	struct timespec pause = {0, 1000 * 1000};
	for (size_t k = 0;; k = (k + 1) % sh->npages) {
		uint64_t *p = sh->pages + k * WORDS;
		lock(&sh->lock);
		page_write(p, sh->seed, sh->first + k, p[1] + 1);
		unlock(&sh->lock);
		if (k % BURST == BURST - 1)
			nanosleep(&pause, NULL);
	}
	return NULL;
}

static int share_init(struct share *sh, uint64_t *pages, size_t first, size_t npages, uint64_t seed)
{
	*sh = (struct share){.pages = pages, .first = first, .npages = npages, .seed = seed};
	int err = pthread_mutex_init(&sh->lock, NULL);
	if (err) {
		fprintf(stderr, "lr-workload: pthread_mutex_init: %s\n", strerror(err));
		return -1;
	}
	for (size_t k = 0; k < npages; k++)
		page_write(pages + k * WORDS, seed, first + k, 1);
	pthread_t t;
	err = pthread_create(&t, NULL, writer, sh);
	if (err)
		fprintf(stderr, "lr-workload: pthread_create: %s\n", strerror(err));
	return err ? -1 : 0;
}

struct writers *writers_start(unsigned long n, unsigned long mib, uint64_t seed)
{
	struct writers *w = calloc(1, sizeof(*w));
	size_t npages = mib * (1UL << 20) / WPAGE;
	if (!w || !n || npages < n) {
		fprintf(stderr, "lr-workload: --writers %lu needs --write-mib of at least one page per writer\n", n);
		return NULL;
	}
	uint64_t *region = mmap(NULL, npages * WPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w->shares = calloc(n, sizeof(*w->shares));
	if (region == MAP_FAILED || !w->shares) {
		fprintf(stderr, "lr-workload: writers' region of %lu MiB: %s\n", mib, strerror(errno));
		return NULL;
	}
	w->n = n;
	w->npages = npages;
	for (unsigned long i = 0; i < n; i++) {
		size_t first = npages * i / n, end = npages * (i + 1) / n;
		if (share_init(&w->shares[i], region + first * WORDS, first, end - first, seed))
			return NULL;
	}
	return w;
}

void writers_verify(struct writers *w, const char *role)
{
	uint64_t generations = 0;
	for (unsigned long i = 0; i < w->n; i++) {
		struct share *sh = &w->shares[i];
		lock(&sh->lock);
		for (size_t k = 0; k < sh->npages; k++) {
			const uint64_t *p = sh->pages + k * WORDS;
			if (!page_ok(p, sh->seed, sh->first + k)) {
				unlock(&sh->lock);
				say_line("writes role=%s BAD page=%zu pages=%zu generations=%" PRIu64 "\n", role,
					 sh->first + k, w->npages, generations);
				return;
			}
			generations += p[1];
		}
		unlock(&sh->lock);
	}
	say_line("writes role=%s ok pages=%zu generations=%" PRIu64 "\n", role, w->npages, generations);
}
