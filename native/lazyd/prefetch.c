/* prefetch.c: the working set as windows, a plan (see prefetch.h); placing them is place.c's, through the source. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lr_wset.h"
#include "prefetch.h"

static int by_start(const void *x, const void *y)
{
	const struct lr_window *a = x, *b = y;
	if (a->record != b->record)
		return a->record < b->record ? -1 : 1;
	if (a->a != b->a)
		return a->a < b->a ? -1 : 1;
	return a->order < b->order ? -1 : a->order > b->order;
}

static int by_order(const void *x, const void *y)
{
	const struct lr_window *a = x, *b = y;
	return a->order < b->order ? -1 : a->order > b->order;
}

/* Neighbouring windows (x before y in address order) of one task, at most a window apart: the tree reads
 * that stretch of memory on and on (records end at holes, so the next one may start a little later). */
static bool adjacent(const struct lr_index *idx, const struct lr_window *x, const struct lr_window *y, uint64_t window)
{
	return idx->recs[x->record].pid == idx->recs[y->record].pid && y->a >= x->b && y->a - x->b < window;
}

/*
 * One window per fault-around window holding working-set pages (the earliest order kept). A window is kept
 * whole where the working set is dense (two of its pages, or a neighbouring window in it too: a scan, where
 * fault-around placed the pages the recording never saw); an isolated page is fetched alone (a lookup in a
 * big table: its window's other pages were never asked for).
 */
static size_t windows(struct lr_window *v, const struct lr_wset *w, const struct lr_index *idx, uint64_t window)
{
	const uint64_t ps = idx->hdr->page_size;
	uint64_t *pages = malloc((w->n ? w->n : 1) * sizeof(*pages));
	size_t n = 0;
	if (!pages)
		return 0;
	for (size_t i = 0; i < w->n; i++) {
		const struct lr_index_record *r = &idx->recs[w->v[i].record];
		uint64_t wa = w->v[i].addr / window * window, end = lr_record_end(idx, r);
		v[i] = (struct lr_window){w->v[i].record, (uint32_t)i, wa < r->start ? r->start : wa,
					  wa + window > end ? end : wa + window};
	}
	qsort(v, w->n, sizeof(*v), by_start);
	for (size_t i = 0; i < w->n; i++) {
		if (!n || v[i].record != v[n - 1].record || v[i].a != v[n - 1].a) {
			pages[n] = w->v[v[i].order].addr;
			v[n++] = v[i];
		} else {
			pages[n - 1] = UINT64_MAX; /* a second page in this window: keep it whole */
		}
	}
	for (size_t i = 0; i < n; i++) /* dense: marked in pages[] before any window shrinks */
		if ((i && adjacent(idx, &v[i - 1], &v[i], window)) || (i + 1 < n && adjacent(idx, &v[i], &v[i + 1], window)))
			pages[i] = UINT64_MAX;
	for (size_t i = 0; i < n; i++)
		if (pages[i] != UINT64_MAX) {
			v[i].a = pages[i];
			v[i].b = pages[i] + ps;
		}
	free(pages);
	return n;
}

/* In fault order, a window right after the previous one (same record, adjacent) joins it, up to join bytes. */
static size_t join_windows(struct lr_window *v, size_t n, uint64_t join)
{
	size_t out = 0;
	qsort(v, n, sizeof(*v), by_order);
	for (size_t i = 0; i < n; i++) {
		struct lr_window *last = out ? &v[out - 1] : NULL;
		if (last && last->record == v[i].record && last->b == v[i].a && v[i].b - last->a <= join)
			last->b = v[i].b;
		else
			v[out++] = v[i];
	}
	return out;
}

const char *lr_prefetch_path(const char *mode, const char *images_dir, char *buf, size_t size, bool *missing_ok)
{
	*missing_ok = !strcmp(mode, "auto");
	if (!strcmp(mode, "off"))
		return NULL;
	if (!*missing_ok)
		return mode;
	return snprintf(buf, size, "%s/%s", images_dir, LR_WSET_NAME) < (int)size ? buf : NULL;
}

int lr_prefetch_plan(struct lr_prefetch *p, const char *path, bool missing_ok, const struct lr_index *idx,
		     uint64_t window, uint64_t join, bool remote, struct lr_error *err)
{
	struct lr_wset w;
	struct lr_error why;

	if (lr_wset_load(&w, path, idx, &why)) {
		if (!(missing_ok && why.errnum == ENOENT))
			snprintf(p->warning, sizeof(p->warning), "%s; restoring without prefetch", why.msg);
		return 0;
	}
	p->v = malloc((w.n ? w.n : 1) * sizeof(*p->v));
	p->local = remote ? calloc(idx->hdr->checksum_count ? idx->hdr->checksum_count : 1, 1) : NULL;
	if (!p->v || (remote && !p->local)) {
		lr_wset_fini(&w);
		return lr_error_set(err, ENOMEM, "prefetch plan of %zu pages", w.n);
	}
	p->n = join_windows(p->v, windows(p->v, &w, idx, window), join);
	p->restores = w.hdr.restores;
	for (size_t i = 0; i < p->n; i++)
		p->planned_bytes += p->v[i].b - p->v[i].a;
	p->used = w;
	return 0;
}

bool lr_prefetch_is_local(const struct lr_prefetch *p, const struct lr_index *idx, uint32_t rec, uint64_t a,
			  uint64_t b)
{
	const struct lr_index_record *x = &idx->recs[rec];
	uint64_t bs = idx->hdr->block_size, base = x->start / bs * bs;
	if (!p->local || b <= a)
		return false;
	for (uint64_t k = (a - base) / bs; k <= (b - 1 - base) / bs; k++)
		if (p->local[x->first_checksum + k] != 1) /* BLOCK_LOCAL (src_prefetch.c); not while asked for */
			return false;
	return true;
}

int lr_prefetch_carry(const struct lr_prefetch *p, bool placed, const struct lr_wset *faults, struct lr_wset *out,
		      struct lr_error *err)
{
	*out = *faults;
	out->v = NULL;
	out->n = out->cap = 0;
	for (size_t i = 0; i < faults->n; i++)
		if (lr_wset_push(out, &faults->v[i], err))
			return -1;
	for (size_t i = 0; placed && i < p->used.n; i++) {
		struct lr_wset_entry e = p->used.v[i];
		e.hits = e.last = 1;
		if (lr_wset_push(out, &e, err))
			return -1;
	}
	lr_wset_sort(out);
	out->n = out->n < LR_WSET_MAX_ENTRIES ? out->n : LR_WSET_MAX_ENTRIES;
	out->hdr.count = out->n;
	return 0;
}

void lr_prefetch_fini(struct lr_prefetch *p)
{
	lr_wset_fini(&p->used);
	for (uint32_t i = 0; i < p->nwfds; i++)
		if (p->wfds[i] >= 0)
			close(p->wfds[i]);
	free(p->wfds);
	free(p->req);
	free(p->byaddr);
	for (size_t i = 0; i < p->nheld; i++)
		free(p->held[i].bytes);
	free(p->held);
	p->held = NULL;
	p->nheld = p->capheld = 0;
	p->byaddr = NULL;
	p->wfds = NULL;
	p->req = NULL;
	p->nwfds = 0;
	p->nreq = p->next = 0;
	free(p->v);
	free(p->local);
	p->v = NULL;
	p->local = NULL;
	p->n = 0;
}
