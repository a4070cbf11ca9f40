/* bulk.c: the bulk stream, which sends every lazy block of the checkpoint once per session, and what it has sent. */
#include "lr_proto_io.h"
#include "server.h"

static uint64_t block_count(const struct lr_index *idx, const struct lr_index_record *r)
{
	return lr_block_count(r->start, r->nr_pages * idx->hdr->page_size, idx->hdr->block_size);
}

void ps_bulk_mark_sent(struct ps_server *s, struct ps_session *ss, uint64_t rec, uint32_t first, uint32_t nblocks)
{
	const struct lr_index_record *r = &s->index.recs[rec];
	if (!(r->flags & LR_RANGE_LAZY))
		return;
	for (uint64_t k = r->first_checksum + first; k < r->first_checksum + first + nblocks; k++)
		if (!ss->sent[k]) {
			ss->sent[k] = 1;
			ss->blocks_left--;
		}
}

void ps_bulk_seek(struct ps_server *s, struct ps_session *ss, uint64_t rec, uint32_t block)
{
	(void)s;
	ss->cursor = rec;
	ss->cursor_block = block;
}

/* The next run of unsent lazy blocks at or after the cursor (wrapping once): false when none is left. */
static bool next_run(struct ps_server *s, struct ps_session *ss, uint64_t *rec, uint32_t *first, uint32_t *n)
{
	const struct lr_index *idx = &s->index;
	uint64_t count = idx->hdr->record_count;

	for (uint64_t step = 0; ss->blocks_left && step <= count; step++) {
		uint64_t i = (ss->cursor + step) % count;
		const struct lr_index_record *r = &idx->recs[i];
		uint32_t k = step == 0 ? ss->cursor_block : 0;
		uint64_t nb = block_count(idx, r);
		if (!(r->flags & LR_RANGE_LAZY))
			continue;
		while (k < nb && ss->sent[r->first_checksum + k])
			k++;
		if (k >= nb)
			continue;
		uint32_t len = 0, most = LR_BULK_BYTES / idx->hdr->block_size ? LR_BULK_BYTES / idx->hdr->block_size : 1;
		while (k + len < nb && len < most && !ss->sent[r->first_checksum + k + len])
			len++;
		*rec = i;
		*first = k;
		*n = len;
		ss->cursor = i;
		ss->cursor_block = k + len;
		return true;
	}
	return false;
}

/* Queue the next bulk chunk (or BULK_END). 0 when something was queued or nothing is to be sent, -1 on error. */
int ps_bulk_fill(struct ps_server *s, struct ps_conn *c)
{
	struct ps_session *ss = c->session;
	uint64_t rec;
	uint32_t first, n;

	if (!ss->bulk_started || ss->bulk_ended)
		return 0;
	if (!next_run(s, ss, &rec, &first, &n)) {
		ss->bulk_ended = true;
		ps_log(s, 1, "session %llu: bulk stream complete", (unsigned long long)ss->id);
		return ps_queue_frame(&c->queue, LR_BULK_END, 0, 0, NULL, 0);
	}
	uint64_t bytes;
	if (ps_queue_pages(s, c, ss->bulk_want, 0, rec, first, n, &bytes))
		return -1;
	if (c->closing)
		return 0; /* refused: the store could not read them */
	ss->bytes_bulk += bytes;
	ps_bulk_mark_sent(s, ss, rec, first, n);
	return 0;
}
