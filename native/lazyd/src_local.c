/*
 * src_local.c: the checkpoint's pages files as lr-lazyd's page source (source.h). Every range is answered now:
 * read (or copied from a leased mapping) and checked against the index once (pages.c); nothing arrives later.
 */
#include "lazyd.h"

static int local_prepare(struct lr_src *s, const char *wset, bool missing_ok, struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	if (wset && lr_prefetch_plan(&d->prefetch, wset, missing_ok, &d->index, d->cfg.fault_around, d->cfg.chunk,
				     false, err))
		return -1;
	return lr_pages_open(&d->pages, d->cfg.images_dir, d->cfg.map, err);
}

/* Open the pages files only now, in the daemon: the read leases must be ours, not the guardian's. */
static int local_start(struct lr_src *s, struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	if (lr_pages_prepare(&d->pages, &d->index, err))
		return -1;
	return d->cfg.map && d->cfg.ahead ? lr_ahead_start(&d->ahead, &d->index, &d->pages, d->cfg.ahead, err) : 0;
}

static int local_get(struct lr_src *s, uint32_t rec, uint64_t a, uint64_t b, enum lr_get why, const char **data,
		     struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	(void)why;
	if (lr_pages_get(&d->pages, &d->index, &d->index.recs[rec], a, b - a, d->buf, d->buf_size, data, err))
		return -1;
	return LR_SRC_NOW;
}

/* Restore finished: the working set's windows go into the tasks that still need them. */
static int local_finished(struct lr_src *s, struct lr_error *err)
{
	return s->sink.place_here(s->sink.ctx, err);
}

const struct lr_src_ops lr_src_local_ops = {
	.name = "local",
	.prepare = local_prepare,
	.start = local_start,
	.get = local_get,
	.finished = local_finished,
};
