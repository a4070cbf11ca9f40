/*
 * test_spans.c: unit tests and a randomized model test for native/lazyd/spans.c.
 *
 * No framework: CHECK counts and reports; every test group runs in a forked
 * child so that a sanitizer abort in one group is reported as that group's
 * failure and the others still run. The last line is "N passed, M failed";
 * the exit status is non-zero when anything failed.
 *
 * Usage: test_spans [SEED]   (the randomized test always runs a fixed seed, and SEED too when given)
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "check.h"
#include "lr_index_reader.h"
#include "spans.h"

#define PS 4096ULL

/* ------------------------------------------------------------------ building an index in memory */

struct rec_spec {
	uint32_t pid;
	uint32_t flags;
	uint64_t start;
	uint64_t nr_pages;
};

static uint64_t nblocks(uint64_t start, uint64_t len, uint64_t bs)
{
	return len ? (start + len - 1) / bs - start / bs + 1 : 0;
}

/* A valid index (header, records, checksums, trailer) in one malloc'ed buffer; free with free_index. */
static void build_index(struct lr_index *idx, const struct rec_spec *r, size_t n, uint32_t block_size)
{
	uint64_t nsums = 0, lazy = 0, eager = 0;
	for (size_t i = 0; i < n; i++)
		nsums += nblocks(r[i].start, r[i].nr_pages * PS, block_size);
	size_t size = sizeof(struct lr_index_header) + n * sizeof(struct lr_index_record) + nsums * 8 + 8;
	char *buf = calloc(1, size);
	if (!buf) {
		perror("calloc");
		exit(2);
	}
	struct lr_index_header *h = (void *)buf;
	struct lr_index_record *recs = (void *)(buf + sizeof(*h));
	uint64_t *sums = (void *)(recs + n);
	uint64_t next = 0, offset = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t nb = nblocks(r[i].start, r[i].nr_pages * PS, block_size);
		recs[i] = (struct lr_index_record){r[i].pid, r[i].flags, r[i].start, r[i].nr_pages, 1, 0, offset, next};
		for (uint64_t k = 0; k < nb; k++)
			sums[next + k] = XXH3_64bits(&recs[i], sizeof(recs[i])) + k;
		next += nb;
		offset += r[i].nr_pages * PS;
		if (r[i].flags & LR_RANGE_LAZY)
			lazy += r[i].nr_pages;
		else
			eager += r[i].nr_pages;
	}
	memcpy(h->magic, LR_INDEX_MAGIC, 8);
	h->version = LR_INDEX_VERSION;
	h->header_size = sizeof(*h);
	h->record_size = sizeof(struct lr_index_record);
	h->page_size = PS;
	h->block_size = block_size;
	h->task_count = 3;
	h->record_count = n;
	h->checksum_count = nsums;
	h->lazy_pages = lazy;
	h->eager_pages = eager;
	uint64_t trailer = XXH3_64bits(buf, size - 8);
	memcpy(buf + size - 8, &trailer, 8);
	*idx = (struct lr_index){buf, size, h, recs, sums, 0, 0};
}

static void free_index(struct lr_index *idx)
{
	free(idx->map);
	memset(idx, 0, sizeof(*idx));
}

/* ------------------------------------------------------------------ invariants */

/* What the structure must satisfy after any operation, checked against the index it came from. */
struct ctx {
	const struct lr_index *idx;
	uint32_t pid;
	uint64_t recbit[256]; /* first bit of each lazy record of pid (UINT64_MAX for the others) */
	uint64_t nbits;
};

static void ctx_init(struct ctx *c, const struct lr_index *idx, uint32_t pid)
{
	memset(c, 0, sizeof(*c));
	c->idx = idx;
	c->pid = pid;
	for (size_t i = 0; i < idx->hdr->record_count && i < 256; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		c->recbit[i] = UINT64_MAX;
		if (r->pid == pid && (r->flags & LR_RANGE_LAZY)) {
			c->recbit[i] = c->nbits;
			c->nbits += r->nr_pages;
		}
	}
}

#define INV(cond)                                                                                             \
	do {                                                                                                  \
		if (!(cond)) {                                                                                \
			snprintf(why, 256, "line %d: %s (span %zu of %zu)", __LINE__, #cond, k, s->n);       \
			free(used);                                                                           \
			return false;                                                                         \
		}                                                                                             \
	} while (0)

static bool invariants(const struct lr_spans *s, const struct ctx *c, char *why)
{
	size_t k = 0;
	uint8_t *used = calloc(1, c->nbits + 1);
	uint64_t pending = 0, pop = 0;

	INV(used);
	INV(s->page_size == PS);
	INV(s->nbits == c->nbits);
	INV(s->n <= s->cap);
	INV(s->cursor <= s->n || s->n == 0);
	for (k = 0; k < s->n; k++) {
		const struct lr_span *sp = &s->v[k];
		INV(sp->npages > 0);
		INV(sp->addr % PS == 0 && sp->src % PS == 0);
		if (k)
			INV(s->v[k - 1].addr + s->v[k - 1].npages * PS <= sp->addr); /* sorted, no overlap */
		INV(sp->rec < c->idx->hdr->record_count && sp->rec < 256);
		const struct lr_index_record *r = &c->idx->recs[sp->rec];
		INV(r->pid == c->pid && (r->flags & LR_RANGE_LAZY));
		INV(sp->src >= r->start && sp->src + sp->npages * PS <= r->start + r->nr_pages * PS);
		INV(sp->bit == c->recbit[sp->rec] + (sp->src - r->start) / PS);
		INV(sp->bit + sp->npages <= s->nbits);
		for (uint64_t p = 0; p < sp->npages; p++) {
			INV(!used[sp->bit + p]); /* two spans never share a page's bit */
			used[sp->bit + p] = 1;
			INV(lr_spans_find(s, sp->addr + p * PS) == (long)k);
			INV(lr_spans_find(s, sp->addr + p * PS + PS - 1) == (long)k);
			bool pend = lr_spans_pending(s, sp, p);
			pending += pend;
			if (k < s->cursor)
				INV(!pend); /* the drain cursor only passes spans with nothing left */
		}
		INV(!lr_spans_pending(s, sp, sp->npages));
		/* Gaps between spans belong to no span. */
		if (k == 0 || s->v[k - 1].addr + s->v[k - 1].npages * PS < sp->addr) {
			if (sp->addr)
				INV(lr_spans_find(s, sp->addr - 1) == -1);
		}
		if (k + 1 == s->n || sp->addr + sp->npages * PS < s->v[k + 1].addr)
			INV(lr_spans_find(s, sp->addr + sp->npages * PS) == -1);
	}
	k = 0;
	INV(pending == s->left);
	/* Bits of dropped spans and beyond nbits are clear too: the whole bitmap adds up to left. */
	for (uint64_t w = 0; w < (s->nbits + 63) / 64 + 1; w++)
		pop += (uint64_t)__builtin_popcountll(s->bits[w]);
	INV(pop == s->left);
	if (!s->n) {
		INV(lr_spans_find(s, 0) == -1 && lr_spans_find(s, 0x10000) == -1);
		INV(s->left == 0);
	}
	free(used);
	return true;
}

static void check_inv(const char *file, int line, const struct lr_spans *s, const struct ctx *c)
{
	char why[256] = "";
	if (invariants(s, c, why)) {
		passed++;
	} else {
		failed++;
		printf("%s:%d: invariants violated: %s\n", file, line, why);
	}
}
#define CHECK_INV(s, c) check_inv(__FILE__, __LINE__, (s), (c))

/* The span containing addr, or NULL. */
static const struct lr_span *span_at(const struct lr_spans *s, uint64_t addr)
{
	long i = lr_spans_find(s, addr);
	return i < 0 ? NULL : &s->v[i];
}

static bool pending_at(const struct lr_spans *s, uint64_t addr)
{
	const struct lr_span *sp = span_at(s, addr);
	return sp && lr_spans_pending(s, sp, (addr - sp->addr) / PS);
}

static uint64_t src_at(const struct lr_spans *s, uint64_t addr)
{
	const struct lr_span *sp = span_at(s, addr);
	return sp ? sp->src + (addr - sp->addr) / PS * PS : UINT64_MAX;
}

/* ------------------------------------------------------------------ the fixed index of the unit tests */

/*
 * pid 100's lazy records (spans, bits):
 *   A 0x10000  4 pages   bits  0..3
 *   B 0x33000 40 pages   bits  4..43   (src page 51: not block aligned)
 *   C 0x5b000  5 pages   bits 44..48   (adjacent to B)
 *   D 0x100000 32 pages  bits 49..80   (crosses the first bitmap word)
 * plus an eager record of pid 100 and records of other pids.
 */
#define A 0x10000ULL
#define B 0x33000ULL
#define C 0x5b000ULL
#define D 0x100000ULL
static const struct rec_spec fixed_recs[] = {
	{7, LR_RANGE_LAZY, 0x10000, 4},
	{100, LR_RANGE_LAZY, A, 4},
	{100, 0, 0x20000, 2},
	{100, LR_RANGE_LAZY, B, 40},
	{100, LR_RANGE_LAZY, C, 5},
	{100, LR_RANGE_LAZY, D, 32},
	{150, 0, 0x1000, 1},
	{200, LR_RANGE_LAZY, 0x33000, 3},
	{200, 0, 0x900000, 1},
};
#define NFIXED (sizeof(fixed_recs) / sizeof(fixed_recs[0]))

static struct lr_index fidx;
static struct ctx fctx;

static void init100(struct lr_spans *s)
{
	struct lr_error err = {0};
	int rc = lr_spans_init(s, &fidx, 100, &err);
	CHECK(rc == 0);
	if (rc) {
		printf("lr_spans_init: %s\n", err.msg);
		exit(1);
	}
}

/* The hand-built index is a valid one (so the tests use only what lr_index_open accepts). */
static void test_fixture_valid(void)
{
	char path[] = "/tmp/test_spans_idx_XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(write(fd, fidx.map, fidx.size) == (ssize_t)fidx.size);
	close(fd);
	struct lr_index idx;
	struct lr_error err = {0};
	int rc = lr_index_open(&idx, path, PS, &err);
	if (rc)
		printf("lr_index_open: %s\n", err.msg);
	CHECK(rc == 0);
	if (!rc) {
		CHECK(idx.hdr->record_count == NFIXED);
		size_t first = 99;
		CHECK(lr_index_pid_records(&idx, 100, &first) == 5 && first == 1);
		CHECK(lr_index_pid_records(&idx, 150, &first) == 1 && first == 6);
		CHECK(lr_index_pid_records(&idx, 300, &first) == 0);
		lr_index_close(&idx);
	}
	unlink(path);
}

static void test_init(void)
{
	struct lr_spans s;
	struct lr_error err = {0};

	init100(&s);
	CHECK(s.n == 4);
	CHECK(s.nbits == 81 && s.left == 81);
	CHECK(s.cursor == 0);
	if (s.n == 4) {
		CHECK(s.v[0].addr == A && s.v[0].src == A && s.v[0].npages == 4 && s.v[0].bit == 0 && s.v[0].rec == 1);
		CHECK(s.v[1].addr == B && s.v[1].src == B && s.v[1].npages == 40 && s.v[1].bit == 4 && s.v[1].rec == 3);
		CHECK(s.v[2].addr == C && s.v[2].src == C && s.v[2].npages == 5 && s.v[2].bit == 44 && s.v[2].rec == 4);
		CHECK(s.v[3].addr == D && s.v[3].src == D && s.v[3].npages == 32 && s.v[3].bit == 49 && s.v[3].rec == 5);
	}
	CHECK_INV(&s, &fctx);
	lr_spans_fini(&s);
	CHECK(s.v == NULL && s.bits == NULL && s.n == 0);

	/* Other pids: only their own lazy records. */
	CHECK(lr_spans_init(&s, &fidx, 7, &err) == 0);
	CHECK(s.n == 1 && s.left == 4 && s.v[0].rec == 0);
	lr_spans_fini(&s);
	CHECK(lr_spans_init(&s, &fidx, 200, &err) == 0);
	CHECK(s.n == 1 && s.left == 3 && s.v[0].rec == 7 && s.v[0].addr == 0x33000);
	lr_spans_fini(&s);
	/* Only eager records, or none at all: nothing to place. */
	CHECK(lr_spans_init(&s, &fidx, 150, &err) == 0);
	CHECK(s.n == 0 && s.left == 0 && s.nbits == 0);
	CHECK(lr_spans_find(&s, 0x1000) == -1);
	lr_spans_fini(&s);
	CHECK(lr_spans_init(&s, &fidx, 300, &err) == 0);
	CHECK(s.n == 0 && s.left == 0);
	struct lr_run run;
	CHECK(!lr_spans_next_run(&s, 16, 16, &run));
	CHECK(lr_spans_clear(&s, 0, UINT64_MAX) == 0);
	lr_spans_fini(&s);
}

static void test_find(void)
{
	struct lr_spans s;

	init100(&s);
	CHECK(lr_spans_find(&s, 0) == -1);
	CHECK(lr_spans_find(&s, A - 1) == -1);
	CHECK(lr_spans_find(&s, A) == 0);            /* first page */
	CHECK(lr_spans_find(&s, A + 3 * PS) == 0);   /* last page */
	CHECK(lr_spans_find(&s, A + 4 * PS - 1) == 0);
	CHECK(lr_spans_find(&s, A + 4 * PS) == -1);  /* gap */
	CHECK(lr_spans_find(&s, 0x20000) == -1);     /* eager record: not ours to place */
	CHECK(lr_spans_find(&s, B - 1) == -1);
	CHECK(lr_spans_find(&s, B) == 1);
	CHECK(lr_spans_find(&s, C - 1) == 1);
	CHECK(lr_spans_find(&s, C) == 2);            /* adjacent span */
	CHECK(lr_spans_find(&s, C + 4 * PS) == 2);
	CHECK(lr_spans_find(&s, C + 5 * PS) == -1);
	CHECK(lr_spans_find(&s, D) == 3);
	CHECK(lr_spans_find(&s, D + 31 * PS) == 3);
	CHECK(lr_spans_find(&s, D + 32 * PS) == -1); /* past the last span */
	CHECK(lr_spans_find(&s, UINT64_MAX) == -1);
	CHECK(lr_spans_pending(&s, &s.v[0], 0) && lr_spans_pending(&s, &s.v[0], 3));
	CHECK(!lr_spans_pending(&s, &s.v[0], 4)); /* beyond the span */
	CHECK(!lr_spans_pending(&s, &s.v[3], 1000));
	lr_spans_fini(&s);
}

static void test_clear(void)
{
	struct lr_spans s;

	init100(&s);
	/* A whole span. */
	CHECK(lr_spans_clear(&s, A, 4 * PS) == 4);
	CHECK(s.left == 77);
	CHECK(lr_spans_find(&s, A) == 0 && !pending_at(&s, A) && !pending_at(&s, A + 3 * PS));
	CHECK_INV(&s, &fctx);
	/* The same again: nothing left there. */
	CHECK(lr_spans_clear(&s, A, 4 * PS) == 0);
	CHECK(s.left == 77);
	CHECK_INV(&s, &fctx);
	/* A middle part of D. */
	CHECK(lr_spans_clear(&s, D + 4 * PS, 8 * PS) == 8);
	CHECK(s.left == 69);
	CHECK(pending_at(&s, D + 3 * PS) && !pending_at(&s, D + 4 * PS) && !pending_at(&s, D + 11 * PS) &&
	      pending_at(&s, D + 12 * PS));
	CHECK_INV(&s, &fctx);
	/* Across two adjacent spans: the last 2 pages of B and the first 2 of C. */
	CHECK(lr_spans_clear(&s, C - 2 * PS, 4 * PS) == 4);
	CHECK(s.left == 65);
	CHECK(pending_at(&s, C - 3 * PS) && !pending_at(&s, C - PS) && !pending_at(&s, C + PS) &&
	      pending_at(&s, C + 2 * PS));
	CHECK_INV(&s, &fctx);
	/* Across a gap: C's last 2 pages, the gap, D's first 2 pages. */
	CHECK(lr_spans_clear(&s, C + 3 * PS, D + 2 * PS - (C + 3 * PS)) == 4);
	CHECK(s.left == 61);
	CHECK_INV(&s, &fctx);
	/* Partly cleared already: D pages 2..5, of which 4 and 5 were cleared. */
	CHECK(lr_spans_clear(&s, D + 2 * PS, 4 * PS) == 2);
	CHECK(s.left == 59);
	CHECK_INV(&s, &fctx);
	/* Bits 62..66: across the first bitmap word boundary (D pages 13..17). */
	CHECK(lr_spans_clear(&s, D + 13 * PS, 5 * PS) == 5);
	CHECK(s.left == 54);
	CHECK(pending_at(&s, D + 12 * PS) && !pending_at(&s, D + 15 * PS) && pending_at(&s, D + 18 * PS));
	CHECK_INV(&s, &fctx);
	/* Nothing there / nothing asked. */
	CHECK(lr_spans_clear(&s, 0x200000, 16 * PS) == 0);
	CHECK(lr_spans_clear(&s, 0, A) == 0);
	CHECK(lr_spans_clear(&s, B, 0) == 0);
	CHECK(s.left == 54);
	/* Everything, from below the first to above the last span. */
	CHECK(lr_spans_clear(&s, 0, D + 64 * PS) == 54);
	CHECK(s.left == 0);
	CHECK(s.n == 4); /* cleared pages stay in their spans */
	CHECK_INV(&s, &fctx);
	struct lr_run run;
	CHECK(!lr_spans_next_run(&s, 1000, 1, &run));
	lr_spans_fini(&s);
}

static void test_run_in(void)
{
	struct lr_spans s;
	struct lr_run run = {0};

	init100(&s);
	CHECK(lr_spans_clear(&s, B + 5 * PS, 3 * PS) == 3); /* B pages 5..7 */
	CHECK(lr_spans_clear(&s, B + 20 * PS, PS) == 1);    /* B page 20 */
	CHECK(lr_spans_run_in(&s, 1, 0, 40, &run) && run.span == 1 && run.page == 0 && run.npages == 5);
	CHECK(lr_spans_run_in(&s, 1, 5, 40, &run) && run.page == 8 && run.npages == 12);
	CHECK(!lr_spans_run_in(&s, 1, 5, 8, &run));  /* only cleared pages in the window */
	CHECK(lr_spans_run_in(&s, 1, 6, 9, &run) && run.page == 8 && run.npages == 1);
	CHECK(lr_spans_run_in(&s, 1, 0, 3, &run) && run.page == 0 && run.npages == 3); /* stops at hi */
	CHECK(lr_spans_run_in(&s, 1, 20, 1000, &run) && run.page == 21 && run.npages == 19); /* hi clamped */
	CHECK(!lr_spans_run_in(&s, 1, 40, 50, &run));
	CHECK(!lr_spans_run_in(&s, 1, 7, 7, &run));
	CHECK(!lr_spans_run_in(&s, 1, 30, 10, &run));
	/* D's bits cross a bitmap word: a run from bit 49 to 80. */
	CHECK(lr_spans_run_in(&s, 3, 0, 32, &run) && run.page == 0 && run.npages == 32);
	CHECK(lr_spans_clear(&s, D + 15 * PS, PS) == 1); /* bit 64 */
	CHECK(lr_spans_run_in(&s, 3, 0, 32, &run) && run.page == 0 && run.npages == 15);
	CHECK(lr_spans_run_in(&s, 3, 15, 32, &run) && run.page == 16 && run.npages == 16);
	/* A followed by B: A's run never spills into B's bits. */
	CHECK(lr_spans_run_in(&s, 0, 0, 100, &run) && run.span == 0 && run.page == 0 && run.npages == 4);
	CHECK(lr_spans_clear(&s, C, 5 * PS) == 5);
	CHECK(!lr_spans_run_in(&s, 2, 0, 5, &run));
	CHECK_INV(&s, &fctx);
	lr_spans_fini(&s);
}

/* next_run, then place (clear) what it returned. */
static bool take(struct lr_spans *s, uint64_t max, uint64_t align, struct lr_run *run)
{
	if (!lr_spans_next_run(s, max, align, run))
		return false;
	uint64_t addr = s->v[run->span].addr + run->page * PS;
	uint64_t n = lr_spans_clear(s, addr, run->npages * PS);
	if (n != run->npages) {
		printf("  run (span %zu, page %lu, %lu pages) cleared only %lu\n", run->span, (unsigned long)run->page,
		       (unsigned long)run->npages, (unsigned long)n);
		failed++;
	}
	return true;
}

#define RUN_IS(r, sp, pg, np) ((r).span == (sp) && (r).page == (pg) && (r).npages == (np))

static void test_next_run(void)
{
	struct lr_spans s;
	struct lr_run run = {0};
	struct lr_error err = {0};

	/* Everything, in order, with holes. */
	init100(&s);
	lr_spans_clear(&s, B + 10 * PS, 2 * PS);
	lr_spans_clear(&s, D, 32 * PS);
	CHECK(take(&s, 1000, 1, &run) && RUN_IS(run, 0, 0, 4));
	CHECK(take(&s, 1000, 1, &run) && RUN_IS(run, 1, 0, 10));
	CHECK(take(&s, 1000, 1, &run) && RUN_IS(run, 1, 12, 28));
	CHECK(take(&s, 1000, 1, &run) && RUN_IS(run, 2, 0, 5));
	CHECK(!take(&s, 1000, 1, &run));
	CHECK(s.left == 0);
	CHECK_INV(&s, &fctx);
	lr_spans_fini(&s);

	/* max_pages 20, blocks of 16 pages: cut at src multiples of 16. */
	init100(&s);
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 0, 0, 4));   /* A: short enough */
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 1, 0, 13));  /* B src page 51 -> 64 */
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 1, 13, 16)); /* 64 -> 80 */
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 1, 29, 11)); /* the rest of B */
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 2, 0, 5));
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 3, 0, 16));  /* D src page 256 */
	CHECK_INV(&s, &fctx);
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 3, 16, 16));
	CHECK(!take(&s, 20, 16, &run));
	CHECK(!lr_spans_next_run(&s, 20, 16, &run)); /* and stays so */
	CHECK(s.left == 0);
	lr_spans_fini(&s);

	/* max_pages below the block: no boundary within reach gives max_pages, then the cut lands on one. */
	init100(&s);
	lr_spans_clear(&s, A, 4 * PS);
	CHECK(take(&s, 4, 16, &run) && RUN_IS(run, 1, 0, 4));  /* src 51..55 */
	CHECK(take(&s, 4, 16, &run) && RUN_IS(run, 1, 4, 4));  /* 55..59 */
	CHECK(take(&s, 4, 16, &run) && RUN_IS(run, 1, 8, 4));  /* 59..63 */
	CHECK(take(&s, 4, 16, &run) && RUN_IS(run, 1, 12, 1)); /* 63..64 */
	CHECK(take(&s, 4, 16, &run) && RUN_IS(run, 1, 13, 4)); /* 64..68 */
	/* A page cleared behind the cursor's back (a fault) is skipped. */
	lr_spans_clear(&s, B + 17 * PS, PS);
	CHECK(take(&s, 4, 16, &run) && RUN_IS(run, 1, 18, 4));
	/* next_run does not consume: without placing, the same run comes again. */
	CHECK(lr_spans_next_run(&s, 4, 16, &run) && RUN_IS(run, 1, 22, 4));
	CHECK(lr_spans_next_run(&s, 4, 16, &run) && RUN_IS(run, 1, 22, 4));
	CHECK_INV(&s, &fctx);
	lr_spans_fini(&s);

	/* After D moved to an address that is not block aligned, cuts still follow src. */
	init100(&s);
	lr_spans_clear(&s, A, D - A);
	CHECK(lr_spans_remap(&s, D, 0x205000, 32 * PS, &err) == 0);
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 3, 0, 16));
	CHECK(s.v[3].addr == 0x205000 && s.v[3].src == D);
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 3, 16, 16));
	CHECK(!take(&s, 20, 16, &run));
	/* And after a middle part of a span moved, the split-off span's src is used. */
	lr_spans_fini(&s);
	init100(&s);
	lr_spans_clear(&s, A, D - A);
	CHECK(lr_spans_remap(&s, D + 5 * PS, 0x301000, 20 * PS, &err) == 0); /* src pages 261..280 */
	CHECK(s.n == 6);
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 3, 0, 5));   /* D left part at D */
	CHECK(take(&s, 20, 16, &run) && RUN_IS(run, 4, 0, 7));   /* D right part (src 281..287) */
	CHECK(take(&s, 8, 16, &run) && RUN_IS(run, 5, 0, 8));    /* moved part: 261..269, no boundary in reach */
	CHECK(take(&s, 8, 16, &run) && RUN_IS(run, 5, 8, 3));    /* 269..272 */
	CHECK(take(&s, 8, 16, &run) && RUN_IS(run, 5, 11, 8));   /* 272..280 */
	CHECK(take(&s, 8, 16, &run) && RUN_IS(run, 5, 19, 1));
	CHECK(!take(&s, 8, 16, &run));
	CHECK_INV(&s, &fctx);
	lr_spans_fini(&s);
}

static void test_remap(void)
{
	struct lr_spans s;
	struct lr_error err = {0};
	struct lr_run run;

	init100(&s);
	/* Not page aligned: refused, nothing changed. */
	CHECK(lr_spans_remap(&s, A + 1, 0x500000, PS, &err) == -1);
	CHECK(strstr(err.msg, "not page aligned") != NULL);
	CHECK(lr_spans_remap(&s, A, 0x500001, PS, &err) == -1);
	CHECK(lr_spans_remap(&s, A, 0x500000, PS + 1, &err) == -1);
	CHECK(s.n == 4 && s.left == 81 && s.v[0].addr == A);

	/* A whole span (with a cleared page) moves; its bits go with it. */
	CHECK(lr_spans_clear(&s, A + PS, PS) == 1);
	CHECK(lr_spans_remap(&s, A, 0x500000, 4 * PS, &err) == 0);
	CHECK(s.n == 4 && s.left == 80);
	CHECK(lr_spans_find(&s, A) == -1 && lr_spans_find(&s, A + 3 * PS) == -1);
	CHECK(lr_spans_find(&s, 0x500000) == 3);
	CHECK(src_at(&s, 0x500000) == A && src_at(&s, 0x503000) == A + 3 * PS);
	CHECK(pending_at(&s, 0x500000) && !pending_at(&s, 0x501000) && pending_at(&s, 0x502000) &&
	      pending_at(&s, 0x503000));
	CHECK(s.cursor == 0);
	CHECK_INV(&s, &fctx);

	/* The middle of D (pages 4..11) moves: D splits in three. */
	CHECK(lr_spans_remap(&s, D + 4 * PS, 0x600000, 8 * PS, &err) == 0);
	CHECK(s.n == 6 && s.left == 80);
	CHECK(lr_spans_find(&s, D + 4 * PS) == -1 && lr_spans_find(&s, D + 12 * PS - 1) == -1);
	CHECK(src_at(&s, D + 3 * PS) == D + 3 * PS && src_at(&s, D + 12 * PS) == D + 12 * PS);
	CHECK(src_at(&s, 0x600000) == D + 4 * PS && src_at(&s, 0x607000) == D + 11 * PS);
	CHECK(lr_spans_find(&s, 0x608000) == -1);
	{
		const struct lr_span *mid = span_at(&s, 0x600000);
		CHECK(mid && mid->npages == 8 && mid->bit == 49 + 4 && mid->rec == 5);
	}
	CHECK_INV(&s, &fctx);

	/* Onto spans: [0x58000, 0x60000) holds B's last 3 pages and all of C; they are unmapped by the move. */
	CHECK(lr_spans_clear(&s, 0x600000, PS) == 1); /* the moved part carries one cleared page */
	CHECK(s.left == 79);
	CHECK(lr_spans_remap(&s, 0x600000, 0x58000, 8 * PS, &err) == 0);
	CHECK(s.left == 79 - 8);
	CHECK(s.n == 5);
	CHECK(lr_spans_find(&s, B) == 0 && s.v[0].npages == 37);
	CHECK(src_at(&s, 0x58000) == D + 4 * PS && src_at(&s, 0x5f000) == D + 11 * PS);
	CHECK(!pending_at(&s, 0x58000) && pending_at(&s, 0x59000) && pending_at(&s, 0x5f000));
	CHECK(lr_spans_find(&s, 0x600000) == -1);
	CHECK_INV(&s, &fctx);

	/* Move it back, and A too. */
	CHECK(lr_spans_remap(&s, 0x58000, D + 4 * PS, 8 * PS, &err) == 0);
	CHECK(lr_spans_remap(&s, 0x500000, A, 4 * PS, &err) == 0);
	CHECK(s.left == 71);
	for (uint64_t p = 0; p < 32; p++)
		CHECK(src_at(&s, D + p * PS) == D + p * PS);
	CHECK(!pending_at(&s, D + 4 * PS) && pending_at(&s, D + 5 * PS));
	CHECK(lr_spans_find(&s, 0x58000) == -1 && lr_spans_find(&s, C) == -1); /* B's tail and C are gone for good */
	CHECK(src_at(&s, A) == A && !pending_at(&s, A + PS) && pending_at(&s, A + 2 * PS));
	CHECK(s.v[0].addr == A);
	CHECK_INV(&s, &fctx);

	/* A range holding parts of two spans and the gap between them. */
	CHECK(lr_spans_remap(&s, A + 2 * PS, 0x800000, B + 3 * PS - (A + 2 * PS), &err) == 0);
	CHECK(lr_spans_find(&s, A + 2 * PS) == -1 && lr_spans_find(&s, B) == -1);
	CHECK(src_at(&s, A + PS) == A + PS && src_at(&s, B + 3 * PS) == B + 3 * PS);
	CHECK(src_at(&s, 0x800000) == A + 2 * PS && src_at(&s, 0x801000) == A + 3 * PS);
	CHECK(lr_spans_find(&s, 0x802000) == -1);
	uint64_t boff = 0x800000 + (B - (A + 2 * PS));
	CHECK(src_at(&s, boff) == B && src_at(&s, boff + 2 * PS) == B + 2 * PS);
	CHECK(lr_spans_find(&s, boff + 3 * PS) == -1);
	CHECK(s.left == 71);
	CHECK_INV(&s, &fctx);

	/* An empty range moved onto spans: what was there is gone (D pages 30, 31). */
	CHECK(lr_spans_remap(&s, 0x700000, D + 30 * PS, 4 * PS, &err) == 0);
	CHECK(s.left == 69);
	CHECK(lr_spans_find(&s, D + 30 * PS) == -1 && lr_spans_find(&s, D + 29 * PS) >= 0);
	CHECK_INV(&s, &fctx);

	/* The drain after all that goes by address and places exactly what is left. */
	uint64_t total = 0, last = 0;
	bool ordered = true;
	while (take(&s, 1000, 16, &run)) {
		uint64_t addr = s.v[run.span].addr + run.page * PS;
		ordered &= addr >= last;
		last = addr + run.npages * PS;
		total += run.npages;
	}
	CHECK(ordered);
	CHECK(total == 69 && s.left == 0);
	CHECK_INV(&s, &fctx);
	lr_spans_fini(&s);
}

static void test_clone(void)
{
	struct lr_spans s, c;
	struct lr_error err = {0};

	init100(&s);
	CHECK(lr_spans_clear(&s, A, PS) == 1);
	CHECK(lr_spans_clone(&c, &s, &err) == 0);
	CHECK(c.n == s.n && c.left == 80 && c.v != s.v && c.bits != s.bits);
	CHECK_INV(&c, &fctx);
	/* Clearing and moving in the clone leaves the original alone. */
	CHECK(lr_spans_clear(&c, B, 40 * PS) == 40);
	CHECK(lr_spans_remap(&c, D, 0x400000, 8 * PS, &err) == 0);
	CHECK(c.left == 40 && s.left == 80);
	CHECK(pending_at(&s, B) && pending_at(&s, B + 39 * PS));
	CHECK(src_at(&s, D) == D && lr_spans_find(&s, 0x400000) == -1 && s.n == 4);
	CHECK(src_at(&c, 0x400000) == D && lr_spans_find(&c, D) == -1);
	CHECK_INV(&s, &fctx);
	CHECK_INV(&c, &fctx);
	/* And the other way round. */
	CHECK(lr_spans_clear(&s, C, 5 * PS) == 5);
	CHECK(pending_at(&c, C) && c.left == 40);
	/* The clone outlives its original. */
	lr_spans_fini(&s);
	struct lr_run run;
	uint64_t total = 0;
	while (take(&c, 7, 16, &run))
		total += run.npages;
	CHECK(total == 40 && c.left == 0);
	CHECK_INV(&c, &fctx);
	lr_spans_fini(&c);

	/* A clone of a clone, mid-drain: the cursor comes along and stays valid. */
	init100(&s);
	CHECK(take(&s, 100, 16, &run) && take(&s, 100, 16, &run));
	CHECK(lr_spans_clone(&c, &s, &err) == 0);
	CHECK(c.cursor == s.cursor);
	CHECK(take(&c, 100, 16, &run) && RUN_IS(run, 2, 0, 5));
	CHECK_INV(&c, &fctx);
	lr_spans_fini(&c);
	lr_spans_fini(&s);
}

/*
 * A task without lazy pages (only eager records, or none) has no span table at all
 * (v == NULL): it can still fork and mremap.
 */
static void test_empty_clone(void)
{
	struct lr_spans s, c;
	struct lr_error err = {0};
	struct ctx ectx;
	struct lr_run run;

	ctx_init(&ectx, &fidx, 150);
	CHECK(lr_spans_init(&s, &fidx, 150, &err) == 0);
	CHECK(s.v == NULL && s.n == 0);
	CHECK_INV(&s, &ectx);
	CHECK(lr_spans_clone(&c, &s, &err) == 0);
	CHECK(c.n == 0 && c.left == 0);
	CHECK_INV(&c, &ectx);
	CHECK(!lr_spans_next_run(&c, 16, 16, &run));
	lr_spans_fini(&c);
	lr_spans_fini(&s);
}

static void test_empty_remap(void)
{
	struct lr_spans s;
	struct lr_error err = {0};
	struct ctx ectx;
	struct lr_run run;

	ctx_init(&ectx, &fidx, 150);
	CHECK(lr_spans_init(&s, &fidx, 150, &err) == 0);
	CHECK(lr_spans_remap(&s, 0x1000, 0x200000, PS, &err) == 0);
	CHECK(s.n == 0 && s.left == 0);
	CHECK(!lr_spans_next_run(&s, 16, 16, &run));
	CHECK_INV(&s, &ectx);
	lr_spans_fini(&s);
}

/* ------------------------------------------------------------------ randomized model test */

static uint64_t rng;
static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
static uint64_t rndn(uint64_t n)
{
	return n ? rnd() % n : 0;
}

#define W 768                   /* pages of the address window everything stays in */
#define BASE 0x40000000ULL
#define MPID 4242
#define ADDR(p) (BASE + (uint64_t)(p) * PS)

struct mpage {
	bool present; /* in some span */
	bool pending;
	uint64_t src;
};

struct model {
	struct mpage p[W];
};

static char last_op[256];

#define MFAIL(...)                                                                       \
	do {                                                                             \
		snprintf(why, 256, __VA_ARGS__);                                          \
		return false;                                                            \
	} while (0)

static bool model_agrees(const struct lr_spans *s, const struct model *m, char *why)
{
	uint64_t pending = 0;
	for (uint64_t p = 0; p < W; p++) {
		const struct mpage *mp = &m->p[p];
		long k = lr_spans_find(s, ADDR(p));
		if (!mp->present) {
			if (k != -1)
				MFAIL("page %#lx: found in span %ld, the model has no page there", (unsigned long)ADDR(p), k);
			continue;
		}
		if (k < 0)
			MFAIL("page %#lx: not found, the model has src %#lx pending %d", (unsigned long)ADDR(p),
			      (unsigned long)mp->src, mp->pending);
		const struct lr_span *sp = &s->v[k];
		uint64_t src = sp->src + (ADDR(p) - sp->addr);
		bool pend = lr_spans_pending(s, sp, (ADDR(p) - sp->addr) / PS);
		if (src != mp->src || pend != mp->pending)
			MFAIL("page %#lx: src %#lx pending %d, the model has src %#lx pending %d", (unsigned long)ADDR(p),
			      (unsigned long)src, pend, (unsigned long)mp->src, mp->pending);
		pending += mp->pending;
	}
	if (pending != s->left)
		MFAIL("left %lu, the model has %lu pending pages", (unsigned long)s->left, (unsigned long)pending);
	const uint64_t outside[] = {0, BASE - PS, BASE - 1, ADDR(W), ADDR(W) + 5 * PS, ADDR(2 * W), UINT64_MAX - PS};
	for (size_t i = 0; i < sizeof(outside) / sizeof(outside[0]); i++)
		if (lr_spans_find(s, outside[i]) != -1)
			MFAIL("%#lx, outside the window, is found", (unsigned long)outside[i]);
	return true;
}

static uint64_t model_clear(struct model *m, int64_t fp, uint64_t lp)
{
	uint64_t n = 0;
	for (int64_t p = fp; p < fp + (int64_t)lp; p++)
		if (p >= 0 && p < W && m->p[p].pending) {
			m->p[p].pending = false;
			n++;
		}
	return n;
}

static void model_remap(struct model *m, uint64_t fp, uint64_t tp, uint64_t lp)
{
	struct mpage moved[W];
	memcpy(moved, &m->p[fp], lp * sizeof(moved[0]));
	for (uint64_t i = 0; i < lp; i++)
		m->p[fp + i] = (struct mpage){0};
	for (uint64_t i = 0; i < lp; i++)
		m->p[tp + i] = moved[i];
}

/* A run returned by next_run: pending pages only, the first pending page of all, cut as promised. */
static bool run_ok(const struct lr_spans *s, const struct lr_run *r, uint64_t max, uint64_t align, char *why)
{
	if (r->span >= s->n)
		MFAIL("run in span %zu of %zu", r->span, s->n);
	const struct lr_span *sp = &s->v[r->span];
	if (!r->npages || r->page + r->npages > sp->npages)
		MFAIL("run pages %lu+%lu, span has %lu", (unsigned long)r->page, (unsigned long)r->npages,
		      (unsigned long)sp->npages);
	for (size_t k = 0; k <= r->span; k++)
		for (uint64_t p = 0; p < (k == r->span ? r->page : s->v[k].npages); p++)
			if (lr_spans_pending(s, &s->v[k], p))
				MFAIL("run at span %zu page %lu skips pending page %lu of span %zu", r->span,
				      (unsigned long)r->page, (unsigned long)p, k);
	uint64_t full = 0;
	while (r->page + full < sp->npages && lr_spans_pending(s, sp, r->page + full))
		full++;
	if (full < r->npages)
		MFAIL("run of %lu pages holds only %lu pending", (unsigned long)r->npages, (unsigned long)full);
	uint64_t want = full;
	if (full > max) {
		uint64_t sp0 = sp->src / PS + r->page, end = (sp0 + max) / align * align;
		want = end > sp0 ? end - sp0 : max;
	}
	if (r->npages != want)
		MFAIL("run of %lu pages (pending run %lu, max %lu, align %lu, src page %lu), expected %lu",
		      (unsigned long)r->npages, (unsigned long)full, (unsigned long)max, (unsigned long)align,
		      (unsigned long)(sp->src / PS + r->page), (unsigned long)want);
	return true;
}

static const uint64_t aligns[] = {1, 2, 4, 16, 64};

/* Take up to `count` runs from s (all when count is 0), checking each and placing it in s and m. */
static bool drain(struct lr_spans *s, struct model *m, unsigned count, char *why)
{
	uint64_t max = 1 + rndn(40), align = aligns[rndn(5)], total = 0, left = s->left;
	struct lr_run r;
	for (unsigned i = 0; !count || i < count; i++) {
		if (!lr_spans_next_run(s, max, align, &r))
			break;
		if (!run_ok(s, &r, max, align, why))
			return false;
		uint64_t addr = s->v[r.span].addr + r.page * PS;
		if (lr_spans_clear(s, addr, r.npages * PS) != r.npages)
			MFAIL("placing run %#lx+%lu cleared fewer pages", (unsigned long)addr, (unsigned long)r.npages);
		if (model_clear(m, (int64_t)((addr - BASE) / PS), r.npages) != r.npages)
			MFAIL("run %#lx+%lu is not all pending in the model", (unsigned long)addr, (unsigned long)r.npages);
		total += r.npages;
		if (total > left)
			MFAIL("drain returned more pages than were left");
	}
	if (!count && (s->left || total != left))
		MFAIL("full drain placed %lu of %lu, left %lu", (unsigned long)total, (unsigned long)left,
		      (unsigned long)s->left);
	return true;
}

/* [fp, fp+lp) and [tp, tp+lp) in the window and disjoint: a move the kernel can report. */
static bool pick_remap(const struct lr_spans *s, uint64_t *fp, uint64_t *tp, uint64_t *lp)
{
	if (s->n && rndn(3) == 0) {
		const struct lr_span *sp = &s->v[rndn(s->n)];
		*fp = (sp->addr - BASE) / PS;
		*lp = sp->npages;
		if (rndn(2)) {
			uint64_t a = rndn(*lp), b = a + 1 + rndn(*lp - a);
			*fp += a;
			*lp = b - a;
		}
	} else {
		*lp = 1 + rndn(48);
		*fp = rndn(W - *lp + 1);
	}
	for (int tries = 0; tries < 30; tries++) {
		int64_t t;
		if (s->n && rndn(3) == 0) { /* somewhere that holds spans */
			const struct lr_span *sp = &s->v[rndn(s->n)];
			t = (int64_t)((sp->addr - BASE) / PS + rndn(sp->npages)) - (int64_t)rndn(*lp);
		} else {
			t = (int64_t)rndn(W - *lp + 1);
		}
		if (t < 0 || (uint64_t)t + *lp > W)
			continue;
		if ((uint64_t)t < *fp + *lp && *fp < (uint64_t)t + *lp)
			continue;
		*tp = (uint64_t)t;
		return true;
	}
	return false;
}

struct rstats {
	unsigned ops, counts[6];
	uint64_t spans_sum, left_sum, records;
};

/* One round: a fresh random index, then `ops` random operations, each followed by a full comparison. */
static bool random_round(struct rstats *st, unsigned ops, char *why)
{
	struct rec_spec recs[200];
	size_t nr = 0;
	struct lr_index idx;
	struct model m, saved;
	struct lr_spans s, c;
	struct lr_error err = {0};
	struct ctx cx;

	memset(&m, 0, sizeof(m));
	/* Another pid's records first (same addresses, must never show up), then ours, then another pid's. */
	uint64_t ours_end = W / 3 + rndn(W / 3), maxlen = 4 + rndn(40);
	for (uint32_t pid = MPID - 1; pid <= MPID + 1; pid++) {
		uint64_t p = rndn(4), limit = pid == MPID ? ours_end : W;
		while (nr < 190) {
			uint64_t len = 1 + rndn(pid == MPID ? maxlen : 100);
			if (p + len > limit)
				break;
			uint32_t flags = pid != MPID || rndn(10) < 7 ? LR_RANGE_LAZY : 0;
			recs[nr++] = (struct rec_spec){pid, flags, ADDR(p), len};
			if (pid == MPID && flags)
				for (uint64_t i = 0; i < len; i++)
					m.p[p + i] = (struct mpage){true, true, ADDR(p + i)};
			p += len + (rndn(3) == 0 ? 0 : rndn(8));
		}
	}
	build_index(&idx, recs, nr, (uint32_t)(aligns[rndn(5)] * PS));
	st->records += nr;
	ctx_init(&cx, &idx, MPID);
	snprintf(last_op, sizeof(last_op), "init");
	if (lr_spans_init(&s, &idx, MPID, &err)) {
		snprintf(why, 256, "lr_spans_init: %.200s", err.msg);
		free_index(&idx);
		return false;
	}
	bool ok = invariants(&s, &cx, why) && model_agrees(&s, &m, why);
	for (unsigned op = 0; ok && op < ops; op++) {
		uint64_t r = rndn(100);
		st->ops++;
		st->spans_sum += s.n;
		st->left_sum += s.left;
		if (r < 25) { /* clear a random range, possibly past the window's edges */
			int64_t fp = (int64_t)rndn(W + 16) - 8;
			uint64_t lp = 1 + rndn(rndn(8) ? 8 : 64);
			snprintf(last_op, sizeof(last_op), "clear %#lx +%lu pages", (unsigned long)(BASE + (uint64_t)fp * PS),
				 (unsigned long)lp);
			uint64_t want = model_clear(&m, fp, lp);
			uint64_t got = lr_spans_clear(&s, BASE + (uint64_t)fp * PS, lp * PS);
			if (got != want) {
				snprintf(why, 256, "clear returned %lu, the model cleared %lu", (unsigned long)got,
					 (unsigned long)want);
				ok = false;
			}
			st->counts[0]++;
		} else if (r < 65) { /* mremap, to a free or an occupied place */
			uint64_t fp, tp, lp;
			if (!pick_remap(&s, &fp, &tp, &lp))
				continue;
			snprintf(last_op, sizeof(last_op), "remap %#lx -> %#lx +%lu pages", (unsigned long)ADDR(fp),
				 (unsigned long)ADDR(tp), (unsigned long)lp);
			model_remap(&m, fp, tp, lp);
			if (lr_spans_remap(&s, ADDR(fp), ADDR(tp), lp * PS, &err)) {
				snprintf(why, 256, "remap failed: %.200s", err.msg);
				ok = false;
			}
			st->counts[1]++;
		} else if (r < 74) { /* fork: clone, change the clone, check the original, go on with the clone */
			snprintf(last_op, sizeof(last_op), "clone");
			if (lr_spans_clone(&c, &s, &err)) {
				snprintf(why, 256, "clone failed: %.200s", err.msg);
				ok = false;
				break;
			}
			saved = m;
			ok = invariants(&c, &cx, why) && model_agrees(&c, &m, why);
			int64_t fp = (int64_t)rndn(W);
			uint64_t lp = 1 + rndn(64);
			uint64_t want = model_clear(&m, fp, lp);
			if (ok && lr_spans_clear(&c, ADDR(fp), lp * PS) != want) {
				snprintf(why, 256, "clear in the clone disagrees with the model");
				ok = false;
			}
			if (ok && !model_agrees(&s, &saved, why)) {
				snprintf(last_op, sizeof(last_op), "clone, then clear %#lx +%lu in the clone: original changed",
					 (unsigned long)ADDR(fp), (unsigned long)lp);
				ok = false;
			}
			lr_spans_fini(&s);
			s = c;
			st->counts[2]++;
		} else if (r < 92) { /* run_in on a random window of a random span */
			if (!s.n)
				continue;
			size_t si = rndn(s.n);
			const struct lr_span *sp = &s.v[si];
			uint64_t lo = rndn(sp->npages + 2), hi = rndn(sp->npages + 4);
			snprintf(last_op, sizeof(last_op), "run_in span %zu [%lu, %lu)", si, (unsigned long)lo,
				 (unsigned long)hi);
			uint64_t e = hi < sp->npages ? hi : sp->npages, a = lo, b;
			while (a < e && !m.p[(sp->addr - BASE) / PS + a].pending)
				a++;
			for (b = a; b < e && m.p[(sp->addr - BASE) / PS + b].pending; b++)
				;
			struct lr_run run = {0};
			bool got = lr_spans_run_in(&s, si, lo, hi, &run);
			if (got != (a < e) || (got && (run.span != si || run.page != a || run.npages != b - a))) {
				snprintf(why, 256, "run_in gave %d (page %lu, %lu pages), the model %d (page %lu, %lu)", got,
					 (unsigned long)run.page, (unsigned long)run.npages, a < e, (unsigned long)a,
					 (unsigned long)(b - a));
				ok = false;
			}
			st->counts[3]++;
		} else if (r < 97) { /* the drain places a few runs */
			snprintf(last_op, sizeof(last_op), "drain a few runs");
			ok = drain(&s, &m, 1 + (unsigned)rndn(4), why);
			st->counts[4]++;
		} else { /* a clone drained to the end */
			snprintf(last_op, sizeof(last_op), "drain a clone fully");
			struct model mc = m;
			if (lr_spans_clone(&c, &s, &err)) {
				snprintf(why, 256, "clone failed: %.200s", err.msg);
				ok = false;
				break;
			}
			ok = drain(&c, &mc, 0, why) && invariants(&c, &cx, why) && model_agrees(&c, &mc, why);
			lr_spans_fini(&c);
			st->counts[5]++;
		}
		if (ok)
			ok = invariants(&s, &cx, why) && model_agrees(&s, &m, why);
	}
	if (ok) {
		/* Finally everything is placed exactly once. */
		snprintf(last_op, sizeof(last_op), "final drain");
		ok = drain(&s, &m, 0, why) && invariants(&s, &cx, why) && model_agrees(&s, &m, why);
	}
	lr_spans_fini(&s);
	free_index(&idx);
	return ok;
}

static bool random_model(uint64_t seed, unsigned rounds, unsigned ops)
{
	struct rstats st;
	char why[256] = "";
	unsigned round;
	bool ok = true;

	memset(&st, 0, sizeof(st));
	rng = seed;
	for (round = 0; ok && round < rounds; round++)
		ok = random_round(&st, ops, why);
	if (ok) {
		passed++;
		printf("random model, seed %#lx: %u rounds, %lu records, %u ops (%u clear, %u remap, %u clone, %u run_in, "
		       "%u drain, %u full drain), on average %.1f spans and %.1f pages left: ok\n",
		       (unsigned long)seed, rounds, (unsigned long)st.records, st.ops, st.counts[0], st.counts[1],
		       st.counts[2], st.counts[3], st.counts[4], st.counts[5], (double)st.spans_sum / st.ops,
		       (double)st.left_sum / st.ops);
	} else {
		failed++;
		printf("random model, seed %#lx: FAILED in round %u after %u ops (last: %s): %s\n", (unsigned long)seed,
		       round - 1, st.ops, last_op, why);
	}
	return ok;
}

static uint64_t seed_arg;
static void test_random_fixed(void)
{
	random_model(0x5eed5a115ULL, 20, 200);
}
static void test_random_arg(void)
{
	random_model(seed_arg, 20, 200);
}

/* ------------------------------------------------------------------ driver */

/* Run fn in a child: a sanitizer abort there is one failure of this group, not the end of the program. */
static void group(const char *name, void (*fn)(void))
{
	int pfd[2];
	unsigned long counts[2] = {0, 0};

	fflush(stdout);
	if (pipe(pfd)) {
		perror("pipe");
		exit(2);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(2);
	}
	if (pid == 0) {
		close(pfd[0]);
		passed = failed = 0;
		fn();
		counts[0] = passed;
		counts[1] = failed;
		fflush(stdout);
		if (write(pfd[1], counts, sizeof(counts)) != sizeof(counts))
			_exit(3);
		_exit(0);
	}
	close(pfd[1]);
	ssize_t got = read(pfd[0], counts, sizeof(counts));
	close(pfd[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	if (got != sizeof(counts) || !WIFEXITED(status) || WEXITSTATUS(status)) {
		failed++;
		printf("%s: CRASHED (%s %d): see the sanitizer report on stderr\n", name,
		       WIFSIGNALED(status) ? "signal" : "exit status", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		return;
	}
	passed += counts[0];
	failed += counts[1];
	printf("%s: %lu passed, %lu failed\n", name, counts[0], counts[1]);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	build_index(&fidx, fixed_recs, NFIXED, 16 * PS);
	ctx_init(&fctx, &fidx, 100);

	group("fixture", test_fixture_valid);
	group("init", test_init);
	group("find", test_find);
	group("clear", test_clear);
	group("run_in", test_run_in);
	group("next_run", test_next_run);
	group("remap", test_remap);
	group("clone", test_clone);
	group("task without lazy pages: fork", test_empty_clone);
	group("task without lazy pages: mremap", test_empty_remap);
	group("random model (fixed seed)", test_random_fixed);
	if (argc > 1) {
		seed_arg = strtoull(argv[1], NULL, 0);
		group("random model (seed from argv)", test_random_arg);
	}
	free_index(&fidx);
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
