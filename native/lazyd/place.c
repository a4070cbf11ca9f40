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
		uint64_t dst = sp.addr + run.page * ps, done;
		int rc = lr_uffd_copy(t->rec.fd, dst, data + (run.page - first) * ps, run.npages * ps, &done, err);
		if (rc < 0)
			return -1;
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

/* The spans of task t holding bytes of record rec between checkpoint addresses [a, b): place them from data. */
static int place_task(struct lr_lazyd *d, struct lr_task *t, uint32_t rec, uint64_t a, uint64_t b, const char *data,
			uint64_t *placed, struct lr_error *err)
{
	const uint64_t ps = d->page_size;
	size_t k = t->spans.remapped ? 0 : lr_spans_lower(&t->spans, a);
	for (; k < t->spans.n && !t->gone; k++) {
		const struct lr_span *sp = &t->spans.v[k];
		uint64_t end = sp->src + sp->npages * ps;
		if (!t->spans.remapped && sp->addr >= b)
			break;
		if (sp->rec != rec || end <= a || sp->src >= b)
			continue;
		uint64_t lo = (sp->src < a ? a - sp->src : 0) / ps, hi = ((end < b ? end : b) - sp->src) / ps, n = 0;
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
	if (d->remote || d->cps) {
		uint64_t a = sp.src + run.page * ps, b = sp.src + hi * ps;
		if (d->remote ? lr_remote_want(d, sp.rec, a, b, true, err) : lr_cps_want(d, sp.rec, a, b, true, err))
			return -1;
		return LR_UFFD_WAIT;
	}
	if (lr_pages_get(&d->pages, &d->index, &d->index.recs[sp.rec], sp.src + run.page * ps, (hi - run.page) * ps,
			 d->buf, d->buf_size, &data, err))
		return -1;
	return lr_place_from(d, t, si, run.page, hi, data, placed, err);
}
