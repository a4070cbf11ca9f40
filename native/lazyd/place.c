/*
 * place.c: putting verified page bytes into tasks. The sink every page source delivers into (source.h), and the
 * placing of faults' windows, the drain's runs and the working set, with bytes the source has now.
 */
#include "lazyd.h"
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

/* Some task still needs a page of record rec within checkpoint addresses [a, b). */
static bool wanted(const struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b)
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

/* Bytes of record rec at checkpoint addresses [a, b) arrived from a page source: into every task that needs them. */
static int place_all(struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b, const char *data, uint64_t *placed,
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
 * Place the pending pages of span si within its pages [lo, hi). A source with the bytes here (local images) has
 * them read and verified once, then each run of pending pages is copied. One that fetches them asks for them, and
 * LR_SRC_WAIT is returned: they are placed when they arrive (the sink). Returns an lr_uffd_rc (LR_UFFD_OK when
 * nothing in the window is pending any more), LR_SRC_WAIT, or -1.
 */
int lr_place(struct lr_lazyd *d, struct lr_task *t, size_t si, uint64_t lo, uint64_t hi, enum lr_get why,
	     uint64_t *placed, struct lr_error *err)
{
	const struct lr_span sp = t->spans.v[si];
	const uint64_t ps = d->page_size;
	struct lr_run run;
	const char *data;

	*placed = 0;
	if (!lr_spans_run_in(&t->spans, si, lo, hi, &run))
		return LR_UFFD_OK;
	uint64_t a = sp.src + run.page * ps, b = sp.src + hi * ps;
	int rc = d->src.ops->get(&d->src, sp.rec, a, b, why, &data, err);
	if (rc < 0)
		return -1;
	if (rc != LR_SRC_NOW)
		return LR_SRC_WAIT;
	return lr_place_from(d, t, si, run.page, hi, data, placed, err);
}

/* Place one window of the working set into every task that still needs it, when the source has its bytes here. */
static int place_window(struct lr_lazyd *d, const struct lr_window *w, struct lr_error *err)
{
	const char *data;
	uint64_t placed = 0;

	if (!wanted(d, w->record, w->a, w->b))
		return 0;
	int rc = d->src.ops->get(&d->src, w->record, w->a, w->b, LR_GET_HERE, &data, err);
	if (rc < 0)
		return -1;
	if (rc != LR_SRC_NOW)
		return 0;
	if (place_all(d, w->record, w->a, w->b, data, &placed, err))
		return -1;
	d->stats.prefetch_bytes += placed;
	return 0;
}

int lr_prefetch_place(struct lr_lazyd *d, struct lr_error *err)
{
	uint64_t t0 = lr_now_ns(), before = d->stats.prefetch_bytes;
	if (!d->prefetch.n)
		return 0;
	for (size_t i = 0; i < d->prefetch.n; i++)
		if (place_window(d, &d->prefetch.v[i], err))
			return -1;
	if (d->stats.prefetch_bytes > before)
		lr_log(d, 1, "prefetch: placed %llu bytes of the working set in %.1f ms%s",
		       (unsigned long long)(d->stats.prefetch_bytes - before), (double)(lr_now_ns() - t0) / 1e6,
		       d->finished ? " after restore finished" : " before the tree runs");
	return 0;
}

static int sink_deliver(void *ctx, uint32_t rec, uint64_t a, uint64_t b, const char *data, uint64_t *placed,
			struct lr_error *err)
{
	return place_all(ctx, rec, a, b, data, placed, err);
}

static bool sink_wanted(void *ctx, uint32_t rec, uint64_t a, uint64_t b)
{
	return wanted(ctx, rec, a, b);
}

static int sink_place_here(void *ctx, struct lr_error *err)
{
	return lr_prefetch_place(ctx, err);
}

struct lr_sink lr_place_sink(struct lr_lazyd *d)
{
	return (struct lr_sink){.ctx = d, .deliver = sink_deliver, .wanted = sink_wanted, .place_here = sink_place_here};
}
