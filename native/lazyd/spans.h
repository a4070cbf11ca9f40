/*
 * spans.h: which pages of one task still have to be placed, and from where.
 *
 * A span is a run of pages at consecutive addresses in the task whose bytes are
 * consecutive in one index record (its checkpoint addresses start at `src`).
 * Spans start as the task's lazy records; mremap moves them (their addresses
 * change, their src does not) and may split them. Each page has a bit in the
 * task's bitmap: 1 while it still has to be placed. Placing, madvise(DONTNEED)
 * and munmap clear bits; a fork clones the whole structure.
 */
#ifndef LR_SPANS_H
#define LR_SPANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"

struct lr_span {
	uint64_t addr;   /* current address of the first page in the task */
	uint64_t src;    /* its address at checkpoint time (the index's address space) */
	uint64_t npages;
	uint64_t bit;    /* its first page's bit in the bitmap */
	uint32_t rec;    /* index record holding the bytes */
};

struct lr_spans {
	struct lr_span *v;  /* sorted by addr, never overlapping */
	size_t n, cap;
	uint64_t *bits;     /* 1 = page still to place */
	uint64_t nbits;
	uint64_t left;      /* pages still to place */
	size_t cursor;      /* spans before it have no page left (drain position) */
	bool remapped;      /* an mremap moved spans: addr no longer equals src */
	uint32_t page_size;
};

/* A run of pages to place: span index, first page within the span, count. */
struct lr_run {
	size_t span;
	uint64_t page;
	uint64_t npages;
};

int lr_spans_init(struct lr_spans *s, const struct lr_index *idx, uint32_t pid, struct lr_error *err);
int lr_spans_clone(struct lr_spans *dst, const struct lr_spans *src, struct lr_error *err);
void lr_spans_fini(struct lr_spans *s);

/* Index of the span containing addr, or else of the first span after it (n when none). */
size_t lr_spans_lower(const struct lr_spans *s, uint64_t addr);
/* Index of the span containing addr, or -1. */
long lr_spans_find(const struct lr_spans *s, uint64_t addr);
bool lr_spans_pending(const struct lr_spans *s, const struct lr_span *sp, uint64_t page);
/* Mark [addr, addr + len) as needing nothing more (placed, discarded or unmapped); returns pages cleared. */
uint64_t lr_spans_clear(struct lr_spans *s, uint64_t addr, uint64_t len);
/* mremap moved [from, from + len) to `to`. */
int lr_spans_remap(struct lr_spans *s, uint64_t from, uint64_t to, uint64_t len, struct lr_error *err);
/* First run of pending pages of span `si` within pages [lo, hi), or false. */
bool lr_spans_run_in(const struct lr_spans *s, size_t si, uint64_t lo, uint64_t hi, struct lr_run *run);
/* Next run to drain, at most max_pages, ending on a checkpoint-address multiple of align_pages when cut short. */
bool lr_spans_next_run(struct lr_spans *s, uint64_t max_pages, uint64_t align_pages, struct lr_run *run);

#endif /* LR_SPANS_H */
