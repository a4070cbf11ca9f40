/* place.c: putting verified page bytes into a task, shared by faults, the drain and the remote source. */
#include "lazyd.h"
#include "criu_ps.h"
#include "remote.h"
#include "uffd.h"

int lr_place_from(struct lr_lazyd *d, struct lr_task *t, size_t si, uint64_t lo, uint64_t hi, const char *data,
		  uint64_t *placed, struct lr_error *err)
{
	const struct lr_span sp = t->spans.v[si];
	const uint64_t ps = d->page_size, first = lo; /* data holds the bytes of page `first` on */
	struct lr_run run;

	*placed = 0;
	if (!lr_spans_run_in(&t->spans, si, lo, hi, &run))
		return LR_UFFD_OK;
	do {
		const char *src = data + (run.page - first) * ps;
		uint64_t dst = sp.addr + run.page * ps, done;
		bool zero;
		int rc = lr_uffd_place(t->rec.fd, dst, src, run.npages * ps, ps, &done, &zero, err);
		if (rc < 0)
			return -1;
		if (zero)
			d->stats.zero_pages += done / ps;
		lr_spans_clear(&t->spans, dst, done);
		*placed += done;
		if (rc == LR_UFFD_EXISTS) {
			/* Something newer is there already (see uffd.h): it stays, our copy is not needed. */
			lr_spans_clear(&t->spans, dst + done, ps);
			d->stats.exists++;
		} else if (rc != LR_UFFD_OK) {
			return rc;
		}
		lo = run.page + done / ps + (rc == LR_UFFD_EXISTS);
	} while (lr_spans_run_in(&t->spans, si, lo, hi, &run));
	return LR_UFFD_OK;
}

/* Pages of span k within checkpoint addresses [a, b) of record rec: [*lo, *hi); false when none. */
static bool span_part(const struct lr_lazyd *d, const struct lr_span *sp, uint32_t rec, uint64_t a, uint64_t b,
		      uint64_t *lo, uint64_t *hi)
{
	const uint64_t ps = d->page_size, end = sp->src + sp->npages * ps;
	if (sp->rec != rec || end <= a || sp->src >= b)
		return false;
	*lo = (sp->src < a ? a - sp->src : 0) / ps;
	*hi = ((end < b ? end : b) - sp->src) / ps;
	return true;
}

/* The spans of task t holding bytes of record rec between checkpoint addresses [a, b): place them from data. */
static int place_task(struct lr_lazyd *d, struct lr_task *t, uint32_t rec, uint64_t a, uint64_t b, const char *data,
			uint64_t *placed, struct lr_error *err)
{
	const uint64_t ps = d->page_size;
	size_t k = t->spans.remapped ? 0 : lr_spans_lower(&t->spans, a);
	for (; k < t->spans.n && !t->gone; k++) {
		const struct lr_span *sp = &t->spans.v[k];
		uint64_t lo, hi, n = 0;
		if (!t->spans.remapped && sp->addr >= b)
			break;
		if (!span_part(d, sp, rec, a, b, &lo, &hi))
			continue;
		int rc = lr_place_from(d, t, k, lo, hi, data + (sp->src + lo * ps - a), &n, err);
		*placed += n;
		if (rc < 0)
			return -1;
		if (rc == LR_UFFD_GONE)
			lr_task_gone(d, t);
		/* RETRY / NOVMA: those pages stay pending; the sweep after the bulk stream asks for them again */
	}
	return 0;
}

bool lr_wanted(const struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b)
{
	for (size_t i = 0; i < d->ntasks; i++) {
		const struct lr_task *t = d->tasks[i];
		if (t->gone || !t->spans.left)
			continue;
		for (size_t k = t->spans.remapped ? 0 : lr_spans_lower(&t->spans, a); k < t->spans.n; k++) {
			struct lr_run run;
			uint64_t lo, hi;
			if (!t->spans.remapped && t->spans.v[k].addr >= b)
				break;
			if (span_part(d, &t->spans.v[k], rec, a, b, &lo, &hi) && lr_spans_run_in(&t->spans, k, lo, hi, &run))
				return true;
		}
	}
	return false;
}

int lr_place_all(struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b, const char *data, uint64_t *placed,
		 struct lr_error *err)
{
	*placed = 0;
	for (size_t i = 0; i < d->ntasks; i++)
		if (!d->tasks[i]->gone && d->tasks[i]->spans.left &&
		    place_task(d, d->tasks[i], rec, a, b, data, placed, err))
			return -1;
	return 0;
}

/*
 * Place the pending pages of span si within its pages [lo, hi). Local images:
 * the bytes are read and verified once, then each run of pending pages is
 * copied. Remote source: they are asked for and LR_UFFD_WAIT returned; they
 * are placed when they arrive. Returns an lr_uffd_rc (LR_UFFD_OK when nothing
 * in the window is pending any more) or -1.
 */
int lr_place(struct lr_lazyd *d, struct lr_task *t, size_t si, uint64_t lo, uint64_t hi, uint64_t *placed,
	     struct lr_error *err)
{
	const struct lr_span sp = t->spans.v[si];
	const uint64_t ps = d->page_size;
	struct lr_run run;
	const char *data;

	*placed = 0;
	if (!lr_spans_run_in(&t->spans, si, lo, hi, &run))
		return LR_UFFD_OK;
	uint64_t a = sp.src + run.page * ps, b = sp.src + hi * ps;
	if ((d->remote && !lr_prefetch_is_local(&d->prefetch, &d->index, sp.rec, a, b)) || d->cps) {
		if (d->remote ? lr_remote_want(d, sp.rec, a, b, true, err) : lr_cps_want(d, sp.rec, a, b, true, err))
			return -1;
		return LR_UFFD_WAIT;
	}
	if (lr_pages_get(&d->pages, &d->index, &d->index.recs[sp.rec], a, b - a,
			 d->buf, d->buf_size, &data, err))
		return -1;
	return lr_place_from(d, t, si, run.page, hi, data, placed, err);
}
