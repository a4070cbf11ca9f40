/*
 * source.c: the page source the options ask for, chosen once (source.h); outside the sources, the only file that
 * names the kinds.
 */
#include "lazyd.h"

int lr_src_choose(struct lr_lazyd *d, struct lr_sink sink, struct lr_error *err)
{
	if (d->cfg.source)
		d->src.ops = &lr_src_prefetch_ops; /* lr-pageserver, with the working set fetched ahead over it */
	else if (d->cfg.criu_ps)
		d->src.ops = &lr_src_criu_ops;
	else
		d->src.ops = &lr_src_local_ops;
	d->src.d = d;
	d->src.sink = sink;
	return d->src.ops->open ? d->src.ops->open(&d->src, err) : 0;
}
