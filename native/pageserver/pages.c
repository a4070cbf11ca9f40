/*
 * pages.c: PAGES frames (lr_proto.h), for requests (GET_PAGES) and the bulk stream alike: a record's blocks from
 * the page store (store.h), their checksums, compressed with zstd when that is wanted and smaller, queued with
 * no copy of the page bytes (the store's frame, or a file range sent with sendfile).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lr_proto_io.h"
#include "server.h"

int ps_block_range(const struct lr_index *idx, uint64_t rec, uint32_t first, uint32_t nblocks, uint64_t *a,
		   uint64_t *b)
{
	if (rec >= idx->hdr->record_count || !nblocks)
		return -1;
	const struct lr_index_record *r = &idx->recs[rec];
	uint64_t bs = idx->hdr->block_size, base = r->start / bs * bs, end = lr_record_end(idx, r);
	uint64_t count = lr_block_count(r->start, r->nr_pages * idx->hdr->page_size, idx->hdr->block_size);
	if (first >= count || nblocks > count - first)
		return -1;
	*a = base + first * bs < r->start ? r->start : base + first * bs;
	uint64_t past = base + ((uint64_t)first + nblocks) * bs;
	*b = past > end ? end : past;
	return 0;
}

/* Compress when the client takes it and asked for it, or when a block is all zeros (never sent as bytes). */
static bool compress_wanted(struct ps_server *s, uint16_t want, const uint64_t *sums, uint32_t nblocks, uint64_t a,
			    uint64_t b)
{
	uint64_t bs = s->index.hdr->block_size;
	if (!(want & LR_F_ZSTD) || !s->zcx || b - a > LR_PAGES_MAX_DATA)
		return false;
	if (want & LR_F_COMPRESS)
		return true;
	for (uint32_t k = 0; k < nblocks; k++) {
		uint64_t x = k ? (a / bs + k) * bs : a, y = (a / bs + k + 1) * bs < b ? (a / bs + k + 1) * bs : b;
		if (lr_zero_block(&s->zero, sums[k], y - x))
			return true;
	}
	return false;
}

/* The frame compressed (header in s->zout): its length, or 0 to send it as it is. */
static size_t compressed(struct ps_server *s, struct ps_session *ss, const char *head, size_t hlen, const char *data,
			 uint64_t len)
{
	const size_t fh = sizeof(struct lr_frame);
	size_t n = lr_zpages_compress(s->zcx, head + fh, hlen, data, len, s->zout + fh, s->zout_cap - fh);
	if (!n)
		return 0;
	memcpy(s->zout, head, fh);
	((struct lr_frame *)s->zout)->flags = LR_F_ZSTD;
	((struct lr_frame *)s->zout)->length = (uint32_t)n;
	if (ss) {
		ss->zstd_frames++;
		ss->zstd_saved += hlen + len - n;
	}
	return fh + n;
}

/* The page bytes of p in memory, to compress: in its frame when the store read them, else read into s->zin. */
static const char *page_bytes(struct ps_server *s, const struct ps_pages *p)
{
	if (p->read)
		return p->frame + p->head + (size_t)p->nblocks * 8;
	if (pread(p->fd, s->zin, p->b - p->a, (off_t)p->off) != (ssize_t)(p->b - p->a))
		return NULL; /* sendfile will meet the same error and report it */
	return s->zin;
}

/* Queue p's frame (headers filled in): compressed when that is wanted and smaller, else as it is. */
static int queue_frame(struct ps_server *s, struct ps_conn *c, uint16_t want, struct ps_pages *p)
{
	size_t hlen = sizeof(struct lr_pages_hdr) + (size_t)p->nblocks * 8, len = p->b - p->a;
	const uint64_t *sums = (const uint64_t *)(p->frame + p->head);
	const char *data = compress_wanted(s, want, sums, p->nblocks, p->a, p->b) ? page_bytes(s, p) : NULL;
	size_t z = data ? compressed(s, c->session, p->frame, hlen, data, len) : 0;

	if (z) {
		free(p->frame);
		return ps_queue_bytes(&c->queue, s->zout, z);
	}
	if (p->read)
		return ps_queue_owned(&c->queue, p->frame, sizeof(struct lr_frame) + hlen + len);
	if (ps_queue_owned(&c->queue, p->frame, sizeof(struct lr_frame) + hlen))
		return -1;
	return ps_queue_file(&c->queue, p->fd, p->off, len);
}

int ps_queue_pages(struct ps_server *s, struct ps_conn *c, uint16_t want, uint64_t req_id, uint64_t rec, uint32_t first,
		   uint32_t nblocks, uint64_t *bytes)
{
	const struct lr_index *idx = &s->index;
	struct ps_pages p = {.first = first, .nblocks = nblocks, .head = sizeof(struct lr_frame) + sizeof(struct lr_pages_hdr)};
	struct lr_error err;

	*bytes = 0;
	if (ps_block_range(idx, rec, first, nblocks, &p.a, &p.b))
		return -1;
	p.rec = &idx->recs[rec];
	if (s->pages->ops->get(s->pages, &p, &err)) {
		if (err.errnum == ENOMEM)
			return -1;
		ps_conn_fail(s, c, LR_ERR_IO, "record %llu blocks %u+%u (%s store): %s", (unsigned long long)rec, first,
			     nblocks, p.store, err.msg);
		return 0;
	}
	struct lr_pages_hdr h = {rec, first, nblocks, p.b - p.a};
	size_t hlen = sizeof(h) + (size_t)nblocks * 8;
	lr_frame_make((struct lr_frame *)p.frame, LR_PAGES, 0, (uint32_t)(hlen + (p.b - p.a)), req_id);
	memcpy(p.frame + sizeof(struct lr_frame), &h, sizeof(h));
	if (queue_frame(s, c, want, &p))
		return -1;
	*bytes = p.b - p.a;
	return 0;
}

