/*
 * store.c: the page store of a checkpoint (store.h), opened once at start: the image store, and with a pid map
 * the live store too. Each record's pages come from the store of its kind (LR_RANGE_LIVE records: the live one,
 * all others: the image one); what asks for pages only ever holds this store and calls its table.
 */
#include <errno.h>
#include <stdlib.h>

#include "store.h"

struct checkpoint_store {
	struct ps_store base;
	struct ps_store *images;    /* every record that is not live */
	struct ps_store *live;      /* LR_RANGE_LIVE records; NULL without a pid map */
};

static int checkpoint_get(struct ps_store *st, struct ps_pages *p, struct lr_error *err)
{
	struct checkpoint_store *cs = (struct checkpoint_store *)st;
	struct ps_store *kind = p->rec->flags & LR_RANGE_LIVE ? cs->live : cs->images;

	p->store = kind ? kind->ops->name : st->ops->name;
	if (!kind) /* the catalog refuses a live index without a pid map */
		return lr_error_set(err, 0, "a live record and no live store");
	return kind->ops->get(kind, p, err);
}

static void checkpoint_close(struct ps_store *st)
{
	struct checkpoint_store *cs = (struct checkpoint_store *)st;
	if (cs->images)
		cs->images->ops->close(cs->images);
	if (cs->live)
		cs->live->ops->close(cs->live);
	free(cs);
}

static const struct ps_store_ops checkpoint_ops = {"checkpoint", checkpoint_get, checkpoint_close};

struct ps_store *ps_store_open(int dirfd, const char *dir, const struct lr_index *idx, const char *pidmap,
			       struct lr_error *err)
{
	struct checkpoint_store *cs = calloc(1, sizeof(*cs));
	if (!cs) {
		lr_error_set(err, ENOMEM, "page store");
		return NULL;
	}
	cs->base.ops = &checkpoint_ops;
	cs->images = ps_store_images_open(dirfd, dir, idx, err);
	if (cs->images && pidmap)
		cs->live = ps_store_live_open(pidmap, idx, err);
	if (!cs->images || (pidmap && !cs->live)) {
		checkpoint_close(&cs->base);
		return NULL;
	}
	return &cs->base;
}
