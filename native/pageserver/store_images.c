/* store_images.c: the image store (store.h): pages from the pages-N.img files, checksums from the index. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

#define LR_PAGES_ID_MAX (1u << 20)

struct images_store {
	struct ps_store base;
	const struct lr_index *idx;
	int *fds;                   /* by pages id; -1 when no record uses it */
	uint64_t *sizes;
	uint32_t nfds;
};

static int grow(struct images_store *is, uint32_t id, struct lr_error *err)
{
	int *fds = realloc(is->fds, (id + 1) * sizeof(*fds));
	if (fds)
		is->fds = fds;
	uint64_t *sizes = fds ? realloc(is->sizes, (id + 1) * sizeof(*sizes)) : NULL;
	if (!sizes)
		return lr_error_set(err, ENOMEM, "pages file table");
	is->sizes = sizes;
	for (uint32_t k = is->nfds; k <= id; k++)
		is->fds[k] = -1;
	is->nfds = id + 1;
	return 0;
}

static int open_file(struct images_store *is, int dirfd, const char *dir, uint32_t id, struct lr_error *err)
{
	char name[32];
	struct stat st;

	if (id < is->nfds && is->fds[id] >= 0)
		return 0;
	if (id >= is->nfds && grow(is, id, err))
		return -1;
	snprintf(name, sizeof(name), "pages-%u.img", id);
	is->fds[id] = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (is->fds[id] < 0 || fstat(is->fds[id], &st))
		return lr_error_set(err, errno, "%s/%s", dir, name);
	is->sizes[id] = (uint64_t)st.st_size;
	return 0;
}

/* Open the pages file of record i and check the record lies inside it. */
static int open_record(struct images_store *is, int dirfd, const char *dir, uint64_t i, struct lr_error *err)
{
	const struct lr_index_record *r = &is->idx->recs[i];
	uint64_t len = r->nr_pages * is->idx->hdr->page_size;

	if (r->pages_id >= LR_PAGES_ID_MAX)
		return lr_error_set(err, 0, "index record %" PRIu64 ": pages id %u out of range", i, r->pages_id);
	if (open_file(is, dirfd, dir, r->pages_id, err))
		return -1;
	if (r->offset > is->sizes[r->pages_id] || len > is->sizes[r->pages_id] - r->offset)
		return lr_error_set(err, 0, "%s/pages-%u.img: truncated (record %" PRIu64 " needs bytes up to %" PRIu64
				    ", the file has %" PRIu64 ")", dir, r->pages_id, i, r->offset + len,
				    is->sizes[r->pages_id]);
	return 0;
}

static int images_get(struct ps_store *st, struct ps_pages *p, struct lr_error *err)
{
	struct images_store *is = (struct images_store *)st;
	size_t n = (size_t)p->nblocks * sizeof(uint64_t);

	p->frame = malloc(p->head + n);
	if (!p->frame)
		return lr_error_set(err, ENOMEM, "PAGES frame");
	memcpy(p->frame + p->head, &is->idx->sums[p->rec->first_checksum + p->first], n);
	p->read = false;
	p->fd = is->fds[p->rec->pages_id];
	p->off = p->rec->offset + (p->a - p->rec->start);
	return 0;
}

static void images_close(struct ps_store *st)
{
	struct images_store *is = (struct images_store *)st;
	for (uint32_t i = 0; i < is->nfds; i++)
		if (is->fds[i] >= 0)
			close(is->fds[i]);
	free(is->fds);
	free(is->sizes);
	free(is);
}

static const struct ps_store_ops images_ops = {"images", images_get, images_close};

struct ps_store *ps_store_images_open(int dirfd, const char *dir, const struct lr_index *idx, struct lr_error *err)
{
	struct images_store *is = calloc(1, sizeof(*is));
	if (!is) {
		lr_error_set(err, ENOMEM, "image store");
		return NULL;
	}
	is->base.ops = &images_ops;
	is->idx = idx;
	for (uint64_t i = 0; i < idx->hdr->record_count; i++)
		if (!(idx->recs[i].flags & LR_RANGE_LIVE) && open_record(is, dirfd, dir, i, err)) {
			images_close(&is->base);
			return NULL;
		}
	return &is->base;
}
