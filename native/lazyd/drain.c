/*
 * drain.c: the pages nobody asked for yet, between faults: the drain's policy (faults first, the rate cap,
 * locality) and its one step, whatever the source. A source with the bytes here has them placed a chunk at a time;
 * one that fetches them is asked for the pending runs by the one sweep (they are placed as they arrive).
 */
#include "lazyd.h"
#include "uffd.h"

/*
 * Faults first, from a page server, right after resume: a restored tree's first requests are what its users
 * wait for. While the tree faults here and there on pages that are not here yet (lookups in a big table),
 * the bulk stream stops (TCP holds the server back), so the page server, lr-lazyd and the tree spend the CPU
 * on the faults; it starts again LR_YIELD_NS after the latest such fault, and in any case once the tree has
 * run for LR_YIELD_WINDOW_NS (a tree that faults all the time would otherwise starve the stream, which
 * serves it better from then on). A fault that goes on from a recent one (a thread scanning memory) does
 * not count: the stream, moved there by its HINT, serves a scan better than faults do.
 */
#define LR_YIELD_NS (10ULL * 1000000ULL)
#define LR_YIELD_WINDOW_NS (250ULL * 1000000ULL)
#define LR_SCAN_BYTES (1ULL << 20) /* a fault this close after a recent one goes on with a scan */

static bool goes_on(struct lr_lazyd *d, uint64_t addr)
{
	const unsigned n = sizeof(d->recent) / sizeof(d->recent[0]);
	bool scan = false;
	for (unsigned i = 0; i < n && i < d->nrecent; i++)
		if (addr + d->cfg.fault_around >= d->recent[i] && addr < d->recent[i] + LR_SCAN_BYTES)
			scan = true;
	d->recent[d->nrecent++ % n] = addr + d->cfg.fault_around;
	return scan;
}

void lr_drain_fault(struct lr_lazyd *d, uint64_t t_ns, uint64_t addr)
{
	if (!goes_on(d, addr))
		d->fault_at_ns = t_ns;
}

static int yield_ms(const struct lr_lazyd *d)
{
	uint64_t now = lr_now_ns();
	if (!d->src.ops->yield_to_faults || !d->fault_at_ns || !d->stats.finished_ns || now - d->fault_at_ns >= LR_YIELD_NS ||
	    now - d->stats.finished_ns >= LR_YIELD_WINDOW_NS)
		return 0;
	return (int)((LR_YIELD_NS - (now - d->fault_at_ns)) / 1000000ULL) + 1;
}

/* Milliseconds until the drain may place the next chunk (0: now): faults first, then the rate cap. */
int lr_drain_wait_ms(const struct lr_lazyd *d)
{
	int yield = yield_ms(d);
	if (yield)
		return yield;
	if (!d->cfg.drain_rate || !d->drain_epoch_ns)
		return 0;
	uint64_t allowed_ns = d->stats.drain_bytes * 1000000000ULL / d->cfg.drain_rate;
	uint64_t spent_ns = lr_now_ns() - d->drain_epoch_ns;
	return allowed_ns > spent_ns ? (int)((allowed_ns - spent_ns) / 1000000ULL) + 1 : 0;
}

int lr_drain_wait_cb(void *ctx)
{
	return lr_drain_wait_ms(ctx);
}

/* The next task with pages left and no pending retry, round robin. */
static struct lr_task *next_task(struct lr_lazyd *d)
{
	uint64_t now = lr_now_ns();
	for (size_t k = 0; k < d->ntasks; k++) {
		struct lr_task *t = d->tasks[(d->drain_next + k) % d->ntasks];
		if (!t->gone && t->spans.left && t->retry_at_ns <= now) {
			d->drain_next = (d->drain_next + k + 1) % d->ntasks;
			return t;
		}
	}
	return NULL;
}

/* Pages the drain places after a fault's window before it goes back to its round robin: a tree reading
 * memory tends to read on from where it faulted. */
#define LR_NEAR_BYTES (4u << 20)

void lr_drain_near(struct lr_lazyd *d, struct lr_task *t, uint64_t end)
{
	t->near_addr = end;
	t->near_end = end + LR_NEAR_BYTES;
	d->near = t;
}

/* The next pending run (at most max pages) between the latest fault and near_end, in address order. */
static struct lr_task *near_run(struct lr_lazyd *d, uint64_t max, struct lr_run *run)
{
	struct lr_task *t = d->near;
	const uint64_t ps = d->page_size;
	d->near = NULL;
	if (!t || t->gone)
		return NULL;
	for (size_t k = lr_spans_lower(&t->spans, t->near_addr); k < t->spans.n; k++) {
		const struct lr_span *sp = &t->spans.v[k];
		if (sp->addr >= t->near_end)
			break;
		uint64_t lo = t->near_addr > sp->addr ? (t->near_addr - sp->addr) / ps : 0;
		uint64_t hi = (t->near_end - sp->addr) / ps < sp->npages ? (t->near_end - sp->addr) / ps : sp->npages;
		if (!lr_spans_run_in(&t->spans, k, lo, hi, run))
			continue;
		run->npages = run->npages < max ? run->npages : max;
		t->near_addr = sp->addr + (run->page + run->npages) * ps;
		d->near = t;
		return t;
	}
	return NULL; /* nothing pending close enough: back to the round robin */
}

/* The checksum index of page `page` of a span. */
static uint64_t checksum_at(const struct lr_lazyd *d, const struct lr_span *sp, uint64_t page)
{
	const struct lr_index_record *rec = &d->index.recs[sp->rec];
	uint32_t bs = d->index.hdr->block_size;
	return rec->first_checksum + (sp->src + page * d->page_size - rec->start / bs * bs) / bs;
}

/* React to a placement result; returns 1 to go on with the chunk, 0 to end the step, -1 on error. */
static int after_place(struct lr_lazyd *d, struct lr_task *t, const struct lr_run *run, int rc)
{
	uint64_t ps = d->page_size;

	switch (rc) {
	case LR_UFFD_OK:
		return 1;
	case LR_UFFD_RETRY:
		d->stats.retries++;
		t->retry_at_ns = lr_now_ns() + 50000;
		return 0;
	case LR_UFFD_NOVMA: {
		/* Past the placed part: if no event explains it after a second try, nothing is mapped there any more. */
		struct lr_run stop;
		if (!lr_spans_run_in(&t->spans, run->span, run->page, run->page + run->npages, &stop))
			return 0;
		uint64_t at = t->spans.v[run->span].addr + stop.page * ps;
		if (t->novma_at_events == t->events_seen) {
			lr_spans_clear(&t->spans, at, ps);
			lr_log(d, 2, "pid %d: no VMA at %#lx any more: page dropped", t->pid, (unsigned long)at);
		}
		t->novma_at_events = t->events_seen;
		t->retry_at_ns = lr_now_ns() + 50000;
		return 0;
	}
	case LR_UFFD_GONE:
		lr_task_gone(d, t);
		return 0;
	default:
		return -1;
	}
}

/*
 * The sweep, for a source that fetches: ask for the first pending run (at most max pages, whole blocks) of the
 * first task that has one not in flight yet. 1 when a request went out, 0 when there was nothing to ask for.
 */
static int sweep(struct lr_lazyd *d, uint64_t max, struct lr_error *err)
{
	const uint64_t ps = d->page_size, bpp = d->index.hdr->block_size / ps;
	for (size_t i = 0; i < d->ntasks; i++) {
		struct lr_task *t = d->tasks[i];
		struct lr_run run;
		const char *data;
		if (t->gone || !t->spans.left || t->retry_at_ns > lr_now_ns() || !lr_spans_next_run(&t->spans, max, bpp, &run))
			continue;
		const struct lr_span *sp = &t->spans.v[run.span];
		uint64_t a = sp->src + run.page * ps;
		int rc = d->src.ops->get(&d->src, sp->rec, a, a + run.npages * ps, LR_GET_DRAIN, &data, err);
		if (rc < 0)
			return -1;
		if (rc == LR_SRC_ASKED)
			return 1;
	}
	return 0;
}

/*
 * A source that has the bytes here: up to one chunk of one task's pending pages, over as many runs as it takes
 * (sparse memory has many short runs; a step per run would spend more on the loop than on copying), the pages
 * after the latest fault's window first. A waiting fault is served after at most this.
 */
static int place_chunk(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_task *t = next_task(d);
	struct lr_run run;
	uint64_t ps = d->page_size, budget = d->cfg.chunk / ps, placed;
	int more = 1;

	if (!t)
		return 0;
	if (!d->drain_epoch_ns) {
		d->drain_epoch_ns = lr_now_ns();
		lr_log(d, 2, "drain starts");
	}
	struct lr_task *near = near_run(d, budget, &run);
	if (near) {
		int rc = lr_place(d, near, run.span, run.page, run.page + run.npages, LR_GET_DRAIN, &placed, err);
		d->stats.drain_bytes += placed;
		d->stats.near_bytes += placed;
		return after_place(d, near, &run, rc) < 0 ? -1 : 1;
	}
	if (!lr_spans_next_run(&t->spans, budget, d->index.hdr->block_size / ps, &run))
		return 0;
	do {
		int rc = lr_place(d, t, run.span, run.page, run.page + run.npages, LR_GET_DRAIN, &placed, err);
		d->stats.drain_bytes += placed;
		lr_ahead_reached(&d->ahead, checksum_at(d, &t->spans.v[run.span], run.page + run.npages - 1));
		more = after_place(d, t, &run, rc);
		budget -= run.npages;
	} while (more > 0 && budget && lr_spans_next_run(&t->spans, budget, d->index.hdr->block_size / ps, &run));
	return more < 0 ? -1 : 1;
}

/* Returns 1 when it placed (or asked for, or tried to place) something, 0 when there was nothing to do, -1 on
 * error. */
int lr_drain_step(struct lr_lazyd *d, struct lr_error *err)
{
	const struct lr_src_ops *o = d->src.ops;
	if (!o->sweep_pages)
		return place_chunk(d, err);
	int rc = o->resume ? o->resume(&d->src, err) : 0; /* a stream paused by the rate cap goes on first */
	if (rc)
		return rc < 0 ? -1 : 1;
	return o->window_full && o->window_full(&d->src) ? 0 : sweep(d, o->sweep_pages(&d->src), err);
}
