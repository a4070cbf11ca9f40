/* place.c: putting verified page bytes into a task, shared by faults, the drain and the remote source. */
#include "lazyd.h"
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
	if (d->remote) {
		uint64_t a = sp.src + run.page * ps;
		if (lr_remote_want(d, sp.rec, a, sp.src + hi * ps, true, err))
			return -1;
		return LR_UFFD_WAIT;
	}
	if (lr_pages_get(&d->pages, &d->index, &d->index.recs[sp.rec], sp.src + run.page * ps, (hi - run.page) * ps,
			 d->buf, d->buf_size, &data, err))
		return -1;
	return lr_place_from(d, t, si, run.page, hi, data, placed, err);
}
