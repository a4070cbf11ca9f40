/* place.c: putting verified page bytes into a task, shared by faults and the drain. */
#include "lazyd.h"
#include "uffd.h"

/*
 * Place the pending pages of span si within its pages [lo, hi): the bytes are
 * read and verified once, then each run of pending pages is copied. Returns an
 * lr_uffd_rc (LR_UFFD_OK when nothing in the window is pending any more) or -1.
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
	const uint64_t first = run.page;
	if (lr_pages_get(&d->pages, &d->index, &d->index.recs[sp.rec], sp.src + first * ps, (hi - first) * ps, d->buf,
			 d->buf_size, &data, err))
		return -1;
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
