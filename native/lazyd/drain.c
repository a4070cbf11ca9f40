/* drain.c: placing the pages nobody asked for yet, one chunk at a time, between faults. */
#include "criu_ps.h"
#include "lazyd.h"
#include "uffd.h"

/* Milliseconds until the rate cap allows the next chunk (0: now). */
int lr_drain_wait_ms(const struct lr_lazyd *d)
{
	if (!d->cfg.drain_rate || !d->drain_epoch_ns)
		return 0;
	uint64_t allowed_ns = d->stats.drain_bytes * 1000000000ULL / d->cfg.drain_rate;
	uint64_t spent_ns = lr_now_ns() - d->drain_epoch_ns;
	return allowed_ns > spent_ns ? (int)((allowed_ns - spent_ns) / 1000000ULL) + 1 : 0;
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
 * One step: up to one chunk of one task's pending pages, over as many runs as
 * it takes (sparse memory has many short runs; a step per run would spend more
 * on the loop than on copying). A waiting fault is served after at most this.
 * Returns 1 when it placed (or tried to place) something, 0 when there was
 * nothing to do, -1 on error.
 */
int lr_drain_step(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_task *t = next_task(d);
	struct lr_run run;
	uint64_t ps = d->page_size, budget = d->cfg.chunk / ps, placed;
	int more = 1;

	if (d->remote)
		return lr_remote_drain_step(d, err);
	if (d->cps)
		return lr_cps_drain_step(d, err);
	if (!t)
		return 0;
	if (!d->drain_epoch_ns) {
		d->drain_epoch_ns = lr_now_ns();
		lr_log(d, 2, "drain starts");
	}
	if (!lr_spans_next_run(&t->spans, budget, d->index.hdr->block_size / ps, &run))
		return 0;
	do {
		int rc = lr_place(d, t, run.span, run.page, run.page + run.npages, &placed, err);
		d->stats.drain_bytes += placed;
		lr_ahead_reached(&d->ahead, checksum_at(d, &t->spans.v[run.span], run.page + run.npages - 1));
		more = after_place(d, t, &run, rc);
		budget -= run.npages;
	} while (more > 0 && budget && lr_spans_next_run(&t->spans, budget, d->index.hdr->block_size / ps, &run));
	return more < 0 ? -1 : 1;
}
