/* spans.c: the pages a task still needs (see spans.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "spans.h"

static bool bit_get(const uint64_t *b, uint64_t i)
{
	return b[i / 64] >> (i % 64) & 1;
}

/* Clear bits [lo, hi); returns how many were set. */
static uint64_t bits_clear(uint64_t *b, uint64_t lo, uint64_t hi)
{
	uint64_t n = 0;
	while (lo < hi) {
		uint64_t w = lo / 64, first = lo % 64, count = hi - lo < 64 - first ? hi - lo : 64 - first;
		uint64_t mask = (count == 64 ? ~0ULL : ((1ULL << count) - 1)) << first;
		n += (uint64_t)__builtin_popcountll(b[w] & mask);
		b[w] &= ~mask;
		lo += count;
	}
	return n;
}

/* First index in [lo, hi) whose bit equals `want`, or hi. */
static uint64_t bits_find(const uint64_t *b, uint64_t lo, uint64_t hi, bool want)
{
	while (lo < hi) {
		uint64_t w = want ? b[lo / 64] : ~b[lo / 64];
		w &= ~0ULL << (lo % 64);
		if (w) {
			uint64_t i = lo / 64 * 64 + (uint64_t)__builtin_ctzll(w);
			return i < hi ? i : hi;
		}
		lo = (lo / 64 + 1) * 64;
	}
	return hi;
}

static int reserve(struct lr_spans *s, size_t n, struct lr_error *err)
{
	if (n <= s->cap)
		return 0;
	size_t cap = s->cap ? s->cap * 2 : 16;
	while (cap < n)
		cap *= 2;
	struct lr_span *v = realloc(s->v, cap * sizeof(*v));
	if (!v)
		return lr_error_set(err, ENOMEM, "span table of %zu entries", cap);
	s->v = v;
	s->cap = cap;
	return 0;
}

int lr_spans_init(struct lr_spans *s, const struct lr_index *idx, uint32_t pid, struct lr_error *err)
{
	size_t first, count = lr_index_pid_records(idx, pid, &first);

	memset(s, 0, sizeof(*s));
	s->page_size = idx->hdr->page_size;
	for (size_t i = first; i < first + count; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		if (!(r->flags & LR_RANGE_LAZY))
			continue;
		if (reserve(s, s->n + 1, err))
			return -1;
		s->v[s->n++] = (struct lr_span){r->start, r->start, r->nr_pages, s->nbits, (uint32_t)i};
		s->nbits += r->nr_pages;
	}
	s->bits = malloc((s->nbits + 63) / 64 * 8 + 8);
	if (!s->bits)
		return lr_error_set(err, ENOMEM, "page bitmap of %lu pages", (unsigned long)s->nbits);
	memset(s->bits, 0xff, (s->nbits + 63) / 64 * 8 + 8);
	bits_clear(s->bits, s->nbits, (s->nbits + 63) / 64 * 64 + 64);
	s->left = s->nbits;
	return 0;
}

int lr_spans_clone(struct lr_spans *dst, const struct lr_spans *src, struct lr_error *err)
{
	size_t words = (src->nbits + 63) / 64 + 1;

	*dst = *src;
	dst->v = malloc((src->cap ? src->cap : 1) * sizeof(*dst->v));
	dst->bits = malloc(words * 8);
	if (!dst->v || !dst->bits) {
		lr_spans_fini(dst);
		return lr_error_set(err, ENOMEM, "cloning the span table for a forked task");
	}
	if (src->n) /* a task without lazy pages has no table (memcpy from NULL is undefined) */
		memcpy(dst->v, src->v, src->n * sizeof(*dst->v));
	memcpy(dst->bits, src->bits, words * 8);
	return 0;
}

void lr_spans_fini(struct lr_spans *s)
{
	free(s->v);
	free(s->bits);
	memset(s, 0, sizeof(*s));
}

/* Index of the last span starting at or below addr, or -1. */
static long floor_span(const struct lr_spans *s, uint64_t addr)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->v[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (long)lo - 1;
}

static uint64_t span_end(const struct lr_spans *s, const struct lr_span *sp)
{
	return sp->addr + sp->npages * s->page_size;
}

size_t lr_spans_lower(const struct lr_spans *s, uint64_t addr)
{
	long i = floor_span(s, addr);
	if (i < 0)
		return 0;
	return addr < span_end(s, &s->v[i]) ? (size_t)i : (size_t)i + 1;
}

long lr_spans_find(const struct lr_spans *s, uint64_t addr)
{
	long i = floor_span(s, addr);
	return i >= 0 && addr < span_end(s, &s->v[i]) ? i : -1;
}

bool lr_spans_pending(const struct lr_spans *s, const struct lr_span *sp, uint64_t page)
{
	return page < sp->npages && bit_get(s->bits, sp->bit + page);
}

uint64_t lr_spans_clear(struct lr_spans *s, uint64_t addr, uint64_t len)
{
	uint64_t end = addr + len, n = 0;
	long i = floor_span(s, addr);

	for (size_t k = i < 0 ? 0 : (size_t)i; k < s->n && s->v[k].addr < end; k++) {
		struct lr_span *sp = &s->v[k];
		uint64_t a = sp->addr > addr ? sp->addr : addr, b = span_end(s, sp) < end ? span_end(s, sp) : end;
		if (a >= b)
			continue;
		n += bits_clear(s->bits, sp->bit + (a - sp->addr) / s->page_size, sp->bit + (b - sp->addr) / s->page_size);
	}
	s->left -= n;
	return n;
}

/* Split the span containing addr so that a span starts exactly at addr. */
static int split_at(struct lr_spans *s, uint64_t addr, struct lr_error *err)
{
	long i = lr_spans_find(s, addr);
	if (i < 0 || s->v[i].addr == addr)
		return 0;
	if (reserve(s, s->n + 1, err))
		return -1;
	struct lr_span *sp = &s->v[i];
	uint64_t k = (addr - sp->addr) / s->page_size;
	struct lr_span right = {addr, sp->src + k * s->page_size, sp->npages - k, sp->bit + k, sp->rec};
	sp->npages = k;
	memmove(&s->v[i + 2], &s->v[i + 1], (s->n - (size_t)i - 1) * sizeof(*s->v));
	s->v[i + 1] = right;
	s->n++;
	return 0;
}

static int by_addr(const void *a, const void *b)
{
	const struct lr_span *x = a, *y = b;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* Spans keep their bits; only addresses move. Order is restored by sorting. */
int lr_spans_remap(struct lr_spans *s, uint64_t from, uint64_t to, uint64_t len, struct lr_error *err)
{
	uint64_t end = from + len;

	if (len % s->page_size || from % s->page_size || to % s->page_size)
		return lr_error_set(err, 0, "remap event %#lx -> %#lx (+%lu) is not page aligned", (unsigned long)from,
				    (unsigned long)to, (unsigned long)len);
	/* Whatever our books had at the destination was unmapped by the move. */
	lr_spans_clear(s, to, len);
	/* After these splits every span lies wholly inside or outside each range. */
	if (split_at(s, from, err) || split_at(s, end, err) || split_at(s, to, err) || split_at(s, to + len, err))
		return -1;
	/* Spans left at the destination hold no pending page now: drop them so none overlap. */
	size_t w = 0;
	for (size_t k = 0; k < s->n; k++) {
		struct lr_span *sp = &s->v[k];
		bool inside = sp->addr >= from && sp->addr < end;
		if (!inside && sp->addr >= to && sp->addr < to + len)
			continue;
		if (inside)
			sp->addr = sp->addr - from + to;
		s->v[w++] = *sp;
	}
	s->n = w;
	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), by_addr);
	s->cursor = 0;
	s->remapped = true;
	return 0;
}

bool lr_spans_run_in(const struct lr_spans *s, size_t si, uint64_t lo, uint64_t hi, struct lr_run *run)
{
	const struct lr_span *sp = &s->v[si];
	if (hi > sp->npages)
		hi = sp->npages;
	uint64_t a = bits_find(s->bits, sp->bit + lo, sp->bit + hi, true);
	if (a >= sp->bit + hi)
		return false;
	uint64_t b = bits_find(s->bits, a, sp->bit + hi, false);
	*run = (struct lr_run){si, a - sp->bit, b - a};
	return true;
}

bool lr_spans_next_run(struct lr_spans *s, uint64_t max_pages, uint64_t align_pages, struct lr_run *run)
{
	for (; s->left && s->cursor < s->n; s->cursor++) {
		const struct lr_span *sp = &s->v[s->cursor];
		if (!lr_spans_run_in(s, s->cursor, 0, sp->npages, run))
			continue;
		if (run->npages > max_pages) {
			/* End the chunk on a checksum block boundary so the next one starts on one. */
			uint64_t src_page = sp->src / s->page_size + run->page;
			uint64_t end = (src_page + max_pages) / align_pages * align_pages;
			run->npages = end > src_page ? end - src_page : max_pages;
		}
		return true;
	}
	return false;
}
