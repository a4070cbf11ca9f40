/* bulk.c: sessions, and the bulk stream that sends every lazy block of the checkpoint once per session. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lr_auth.h"
#include "lr_proto_io.h"
#include "server.h"

struct ps_session *ps_session_new(struct ps_server *s, struct ps_conn *urgent)
{
	struct lr_error err;
	struct ps_session *ss = calloc(1, sizeof(*ss));
	if (!ss)
		return NULL;
	ss->sent = calloc(s->index.hdr->checksum_count ? s->index.hdr->checksum_count : 1, 1);
	if (s->nsessions == s->capsessions) {
		size_t n = s->capsessions ? s->capsessions * 2 : 8;
		struct ps_session **v = realloc(s->sessions, n * sizeof(*v));
		if (v) {
			s->sessions = v;
			s->capsessions = n;
		}
	}
	while (ss->sent && !ss->id && !lr_random(&ss->id, sizeof(ss->id), &err))
		; /* 0 means "no session" on the wire */
	if (!ss->sent || !ss->id || s->nsessions == s->capsessions) {
		free(ss->sent);
		free(ss);
		return NULL;
	}
	ss->urgent = urgent;
	ss->blocks_left = s->lazy_blocks;
	ss->start_ns = lr_net_now_ns();
	s->sessions[s->nsessions++] = ss;
	ps_event(s, "{\"event\":\"session\",\"session\":%llu,\"peer\":\"%s\"}", (unsigned long long)ss->id, urgent->peer);
	return ss;
}

struct ps_session *ps_session_find(struct ps_server *s, uint64_t id)
{
	for (size_t i = 0; i < s->nsessions; i++)
		if (s->sessions[i]->id == id)
			return s->sessions[i];
	return NULL;
}

void ps_session_end(struct ps_server *s, struct ps_session *ss, const char *why)
{
	struct ps_conn *bulk = ss->bulk;
	ss->bulk = ss->urgent = NULL;
	if (bulk) {
		bulk->session = NULL;
		ps_conn_close(s, bulk);
	}
	ps_log(s, ss->done ? 1 : 0, "session %llu ended: %s", (unsigned long long)ss->id, why);
	ps_holder_release(s, ss);
	if (!ss->done) {
		char text[600];
		ps_event(s, "{\"event\":\"session_lost\",\"session\":%llu,\"message\":\"%s\"}", (unsigned long long)ss->id,
			 ps_json_text(why, text, sizeof(text)));
	}
	for (size_t i = 0; i < s->nsessions; i++)
		if (s->sessions[i] == ss) {
			s->sessions[i] = s->sessions[--s->nsessions];
			break;
		}
	ps_wset_session_free(ss);
	free(ss->sent);
	free(ss);
}

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
		return ps_queue_frame(c, LR_BULK_END, 0, 0, NULL, 0);
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
