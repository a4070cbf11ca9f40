/*
 * src_prefetch.c: the working set fetched ahead, a page-source layer over lr-pageserver's (source.h, src_lrps.c).
 *
 * The working set is asked of the page server as soon as lr-lazyd listens, while CRIU restores (prefetch.h); it
 * also measures the link for --compress auto. A few MiB in flight at a time, so a fault's request never waits
 * long behind them. What arrives before "restore finished" is also written into the local pages files (the tasks
 * that need it may not have their userfaultfds here yet) and its blocks marked local (a live record's, in no
 * pages file, are held in memory instead); it is placed into every task as it comes, as a task arrives, and at
 * "restore finished".
 *
 * Faults on blocks kept locally are answered from the pages files (src_local.c's get); the rest goes to the
 * source below. It sees what arrives first through the source's hooks (remote.h), and places through the sink.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blocks.h"
#include "lazyd.h"
#include "lr_net.h"

#define LR_PREFETCH_EARLY (32u << 20)   /* bytes asked for and not arrived, at most, until the tree faults ... */
#define LR_PREFETCH_INFLIGHT (4u << 20) /* ... and after that: a fault's request never waits long behind them */

enum { BLOCK_NONE = 0, BLOCK_LOCAL = 1, BLOCK_ASKED = 2 };

static int push(struct lr_prefetch *p, struct lr_page_req q, struct lr_error *err)
{
	if (p->nreq == p->capreq) {
		size_t cap = p->capreq ? p->capreq * 2 : 256;
		struct lr_page_req *v = realloc(p->req, cap * sizeof(*v));
		if (!v)
			return lr_error_set(err, ENOMEM, "prefetch requests");
		p->req = v;
		p->capreq = cap;
	}
	p->req[p->nreq++] = q;
	return 0;
}

/* The requests for the blocks of every window, each block once, at most LR_PAGES_MAX_DATA each. */
static int plan_requests(struct lr_prefetch *p, const struct lr_index *idx, struct lr_error *err)
{
	uint64_t bs = idx->hdr->block_size;
	uint32_t per = LR_PAGES_MAX_DATA / (uint32_t)bs;
	for (size_t i = 0; i < p->n; i++) {
		const struct lr_window *w = &p->v[i];
		const struct lr_index_record *x = &idx->recs[w->record];
		uint32_t k, k1, g0, g1;
		lr_blocks_of(idx, x, w->a, w->b, &k, &k1);
		while (lr_blocks_next(p->local + x->first_checksum, &k, k1, per, BLOCK_ASKED, &g0, &g1))
			if (push(p, (struct lr_page_req){w->record, g0, g1 - g0}, err))
				return -1;
	}
	return 0;
}

/* Keep the pages files open for writing: bytes that arrive before their task are kept there. */
static int open_files(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_prefetch *p = &d->prefetch;
	for (uint64_t i = 0; i < d->index.hdr->record_count; i++) {
		uint32_t id = d->index.recs[i].pages_id;
		if ((d->index.recs[i].flags & LR_RANGE_LIVE) || (id < p->nwfds && p->wfds[id] >= 0))
			continue; /* a live record is in no pages file: its blocks are held in memory */
		if (id >= p->nwfds) {
			int *v = realloc(p->wfds, (id + 1) * sizeof(*v));
			if (!v)
				return lr_error_set(err, ENOMEM, "prefetch files");
			for (uint32_t k = p->nwfds; k <= id; k++)
				v[k] = -1;
			p->wfds = v;
			p->nwfds = id + 1;
		}
		char path[4096];
		snprintf(path, sizeof(path), "%s/pages-%u.img", d->cfg.images_dir, id);
		p->wfds[id] = open(path, O_WRONLY | O_CLOEXEC);
		if (p->wfds[id] < 0)
			return lr_error_set(err, errno, "open %s for the working set", path);
	}
	return 0;
}

static int by_place(const void *x, const void *y)
{
	const struct lr_window *a = x, *b = y;
	if (a->record != b->record)
		return a->record < b->record ? -1 : 1;
	return a->a < b->a ? -1 : a->a > b->a;
}

/* The working set as requests, and the pages files to keep its blocks in. */
static int prefetch_remote(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_prefetch *p = &d->prefetch;

	if (!p->n)
		return 0;
	p->byaddr = malloc(p->n * sizeof(*p->byaddr));
	if (!p->byaddr)
		return lr_error_set(err, ENOMEM, "prefetch windows");
	memcpy(p->byaddr, p->v, p->n * sizeof(*p->v));
	qsort(p->byaddr, p->n, sizeof(*p->byaddr), by_place);
	if (plan_requests(p, &d->index, err))
		return -1;
	return p->nreq ? open_files(d, err) : 0;
}

/* Place the parts of [a, b) of record rec that working-set windows cover, from data (the bytes of [a, b)). */
static int place_windows(struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b, const char *data, uint64_t *placed,
			 struct lr_error *err)
{
	const struct lr_prefetch *p = &d->prefetch;
	size_t lo = 0, hi = p->n;
	while (lo < hi) { /* the first window of rec ending after a */
		size_t mid = (lo + hi) / 2;
		const struct lr_window *w = &p->byaddr[mid];
		if (w->record < rec || (w->record == rec && w->b <= a))
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < p->n && p->byaddr[i].record == rec && p->byaddr[i].a < b; i++) {
		uint64_t x = p->byaddr[i].a > a ? p->byaddr[i].a : a, y = p->byaddr[i].b < b ? p->byaddr[i].b : b, n = 0;
		if (d->src.sink.deliver(d->src.sink.ctx, rec, x, y, data + (x - a), &n, err))
			return -1;
		*placed += n;
	}
	return 0;
}

/* A block after restore finished: its windows now, the rest once the working set is in. */
static int hold(struct lr_prefetch *p, const struct lr_pages_hdr *h, uint64_t a, const char *data, struct lr_error *err)
{
	if (p->nheld == p->capheld) {
		size_t cap = p->capheld ? p->capheld * 2 : 256;
		struct lr_held *v = realloc(p->held, cap * sizeof(*v));
		if (!v)
			return lr_error_set(err, ENOMEM, "prefetch blocks held");
		p->held = v;
		p->capheld = cap;
	}
	char *bytes = malloc(h->data_len);
	if (!bytes)
		return lr_error_set(err, ENOMEM, "prefetch blocks held");
	memcpy(bytes, data, h->data_len);
	p->held[p->nheld++] = (struct lr_held){(uint32_t)h->record, a, h->data_len, bytes};
	return 0;
}

/* The working set is in: the rest of the blocks it came in placed too (off the tree's way), then the bulk
 * stream starts. */
static int settle(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_prefetch *p = &d->prefetch;
	uint64_t bs = d->index.hdr->block_size, placed = 0;
	for (size_t i = 0; i < p->nheld; i++) {
		uint64_t n = 0;
		int rc = d->src.sink.deliver(d->src.sink.ctx, p->held[i].record, p->held[i].a, p->held[i].a + p->held[i].len,
					     p->held[i].bytes, &n, err);
		free(p->held[i].bytes);
		placed += n;
		if (rc) {
			for (size_t k = i + 1; k < p->nheld; k++)
				free(p->held[k].bytes);
			p->nheld = 0;
			return -1;
		}
	}
	p->nheld = 0;
	for (size_t i = 0; i < p->n; i++) { /* blocks that arrived before restore finished: the pages files */
		const struct lr_index_record *x = &d->index.recs[p->v[i].record];
		uint64_t base = x->start / bs * bs, end = lr_record_end(&d->index, x);
		uint64_t a = (p->v[i].a - base) / bs * bs + base, b = ((p->v[i].b - 1 - base) / bs + 1) * bs + base, n = 0;
		const char *data;
		a = a < x->start ? x->start : a;
		b = b > end ? end : b;
		if (!d->src.sink.wanted(d->src.sink.ctx, p->v[i].record, a, b) ||
		    !lr_prefetch_is_local(p, &d->index, p->v[i].record, a, b))
			continue;
		if (lr_pages_get(&d->pages, &d->index, x, a, b - a, d->buf, d->buf_size, &data, err) ||
		    d->src.sink.deliver(d->src.sink.ctx, p->v[i].record, a, b, data, &n, err))
			return -1;
		placed += n;
	}
	d->stats.prefetch_bytes += placed;
	lr_log(d, 1, "prefetch: the working set is in (%llu bytes fetched ahead); %llu more bytes of its blocks placed",
	       (unsigned long long)p->fetched_bytes, (unsigned long long)placed);
	return lr_remote_bulk_start(d, err);
}

/* Send more of the working set's requests while little is in flight. */
static int prefetch_pump(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_prefetch *p = &d->prefetch;
	struct lr_remote *r = d->remote;
	if (!r || p->next >= p->nreq || !r->connected)
		return 0;
	if (!p->start_ns)
		p->start_ns = lr_now_ns();
	uint64_t most = d->fault_at_ns ? LR_PREFETCH_INFLIGHT : LR_PREFETCH_EARLY;
	while (p->next < p->nreq && r->inflight_bytes < most && r->connected)
		if (lr_remote_ask(d, &p->req[p->next++], err))
			return -1;
	return 0;
}

static void mark(struct lr_prefetch *p, const struct lr_index *idx, const struct lr_pages_hdr *h, uint8_t state)
{
	const struct lr_index_record *x = &idx->recs[h->record];
	for (uint32_t k = 0; k < h->nblocks; k++)
		p->local[x->first_checksum + h->first_block + k] = state;
}

/* PAGES arrived: 1 when they were asked for ahead (kept in the pages files before restore finished), else 0. */
static int arrived(void *ctx, const struct lr_pages_hdr *h, uint64_t a, const char *data, uint32_t wire,
		   struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	struct lr_prefetch *p = &d->prefetch;
	const struct lr_index_record *x = &d->index.recs[h->record];
	if (!p->local || p->local[x->first_checksum + h->first_block] != BLOCK_ASKED)
		return 0;
	uint64_t placed = 0;
	p->fetched_bytes += h->data_len;
	p->wire_bytes += wire;
	p->fetch_ns = lr_now_ns() - p->start_ns;
	/* Every task is here, or the record is live (in no pages file): its windows now, the rest of the block once
	 * the working set is in and every task is here. */
	if (d->finished || (x->flags & LR_RANGE_LIVE)) {
		mark(p, &d->index, h, BLOCK_NONE);
		if (hold(p, h, a, data, err))
			return -1;
	} else { /* a task may not be here yet: the pages files keep it */
		if (pwrite(p->wfds[x->pages_id], data, h->data_len, (off_t)(x->offset + (a - x->start))) != (ssize_t)h->data_len)
			return lr_error_set(err, errno ? errno : EIO, "write the working set into pages-%u.img", x->pages_id);
		mark(p, &d->index, h, BLOCK_LOCAL);
	}
	if (place_windows(d, (uint32_t)h->record, a, a + h->data_len, data, &placed, err))
		return -1;
	d->stats.prefetch_bytes += placed;
	if (++p->got == p->nreq && d->finished && settle(d, err))
		return -1;
	return 1;
}

/* The connection was lost: what was asked ahead and not arrived is left to faults and the drain. */
static void lost(void *ctx)
{
	struct lr_lazyd *d = ctx;
	struct lr_prefetch *p = &d->prefetch;
	uint64_t nblocks = d->index.hdr->checksum_count;
	for (uint64_t k = 0; p->local && k < nblocks; k++)
		if (p->local[k] == BLOCK_ASKED)
			p->local[k] = BLOCK_NONE; /* faults and the drain fetch them now */
	p->next = p->got = p->nreq;
}

/* Asked for ahead and not all arrived yet: the bulk stream waits (the working set first). */
static bool busy(void *ctx)
{
	const struct lr_lazyd *d = ctx;
	return d->prefetch.got < d->prefetch.nreq;
}

/* A frame asked for ahead failed its checksum: its pages are left to faults and the drain. */
static int failed(void *ctx, const struct lr_pages_hdr *h, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	struct lr_prefetch *p = &d->prefetch;
	const struct lr_index_record *x = &d->index.recs[h->record];
	if (!p->local || p->local[x->first_checksum + h->first_block] != BLOCK_ASKED)
		return 0;
	mark(p, &d->index, h, BLOCK_NONE);
	return ++p->got == p->nreq && d->finished ? settle(d, err) : 0;
}

/* "restore finished": --compress auto decides on the link measured so far (src_lrps.c measures the bulk
 * stream when nothing was fetched ahead). */
static void choose(struct lr_lazyd *d)
{
	struct lr_prefetch *p = &d->prefetch;
	struct lr_remote *r = d->remote;
	d->stats.prefetch_fetch_ns = p->fetch_ns;
	if (p->fetch_ns && p->wire_bytes >= LR_MEASURE_BYTES)
		lr_remote_measured(d, p->wire_bytes, p->fetch_ns, "fetched ahead");
	else if (strcmp(d->cfg.compress, "auto"))
		d->stats.compress = r->want & LR_F_COMPRESS;
}

static int layer_open(struct lr_src *s, struct lr_error *err)
{
	return lr_src_lrps_ops.open(s, err);
}

/* The working set planned (blocks to fetch ahead marked), its requests made, the pages files opened. */
static int layer_prepare(struct lr_src *s, const char *wset, bool missing_ok, struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	if (lr_src_lrps_ops.prepare(s, wset, missing_ok, err) ||
	    (wset && lr_prefetch_plan(&d->prefetch, wset, missing_ok, &d->index, d->cfg.fault_around, d->cfg.chunk,
				      true, err)) ||
	    prefetch_remote(d, err))
		return -1;
	d->remote->hooks = (struct lr_remote_hooks){d, arrived, failed, lost, busy};
	return lr_pages_open(&d->pages, d->cfg.images_dir, d->cfg.map, err);
}

static int layer_commit(struct lr_src *s, struct lr_error *err)
{
	return lr_src_lrps_ops.commit(s, err);
}

static void layer_abort_unrun(struct lr_src *s, const char *why)
{
	lr_src_lrps_ops.abort_unrun(s, why);
}

/* The source below connected, the working set's first requests out; then the pages files (the read leases must
 * be the daemon's, not the guardian's). */
static int layer_start(struct lr_src *s, struct lr_error *err)
{
	if (lr_src_lrps_ops.start(s, err) || prefetch_pump(s->d, err))
		return -1;
	return lr_pages_prepare(&s->d->pages, &s->d->index, err);
}

/* Blocks kept locally come from the pages files (a fault's or the working set's); the rest from below. */
static int layer_get(struct lr_src *s, uint32_t rec, uint64_t a, uint64_t b, enum lr_get why, const char **data,
		     struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	if (why != LR_GET_DRAIN && lr_prefetch_is_local(&d->prefetch, &d->index, rec, a, b))
		return lr_src_local_ops.get(s, rec, a, b, why, data, err);
	return lr_src_lrps_ops.get(s, rec, a, b, why, data, err);
}

/* Restore finished: the working set's windows that are here placed, then the rest of its blocks once it is all
 * in, then the bulk stream. */
static int layer_finished(struct lr_src *s, struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	choose(d);
	if (s->sink.place_here(s->sink.ctx, err))
		return -1;
	if (busy(d))
		return 0; /* arrived() settles once the last block is in */
	return d->prefetch.nreq ? settle(d, err) : lr_src_lrps_ops.finished(s, err);
}

static int layer_tick(struct lr_src *s, struct lr_error *err)
{
	return lr_src_lrps_ops.tick(s, err) || prefetch_pump(s->d, err) ? -1 : 0;
}

/* The rest is the source below's. */
static uint64_t layer_sweep_pages(const struct lr_src *s)
{
	return lr_src_lrps_ops.sweep_pages(s);
}

static int layer_resume(struct lr_src *s, struct lr_error *err)
{
	return lr_src_lrps_ops.resume(s, err);
}

static bool layer_window_full(const struct lr_src *s)
{
	return lr_src_lrps_ops.window_full(s);
}

static int layer_wait_ms(const struct lr_src *s, bool *ready)
{
	return lr_src_lrps_ops.wait_ms(s, ready);
}

static int layer_done(struct lr_src *s, const struct lr_wset *w)
{
	return lr_src_lrps_ops.done(s, w);
}

static void layer_stats(const struct lr_src *s, struct lr_stats *st)
{
	lr_src_lrps_ops.stats(s, st);
}

static void layer_close(struct lr_src *s)
{
	lr_src_lrps_ops.close(s);
}

const struct lr_src_ops lr_src_prefetch_ops = {
	.name = "lr-pageserver+prefetch",
	.live_ok = true,
	.yield_to_faults = true,
	.open = layer_open,
	.prepare = layer_prepare,
	.commit = layer_commit,
	.abort_unrun = layer_abort_unrun,
	.start = layer_start,
	.get = layer_get,
	.sweep_pages = layer_sweep_pages,
	.resume = layer_resume,
	.window_full = layer_window_full,
	.finished = layer_finished,
	.tick = layer_tick,
	.wait_ms = layer_wait_ms,
	.done = layer_done,
	.stats = layer_stats,
	.close = layer_close,
};
