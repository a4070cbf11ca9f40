/* requests.c: what an authenticated client may ask, each checked against the catalog and the index. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lr_proto_io.h"
#include "server.h"

static int on_list(struct ps_server *s, struct ps_conn *c)
{
	size_t len = 0;
	for (size_t i = 0; i < s->nfiles; i++)
		len += sizeof(struct lr_file_entry) + strlen(s->files[i].name);
	char *payload = malloc(len ? len : 1), *p = payload;
	if (!payload)
		return -1;
	for (size_t i = 0; i < s->nfiles; i++) {
		struct lr_file_entry e = {s->files[i].size, s->files[i].kind, (uint32_t)strlen(s->files[i].name)};
		memcpy(p, &e, sizeof(e));
		memcpy(p + sizeof(e), s->files[i].name, e.name_len);
		p += sizeof(e) + e.name_len;
	}
	if (ps_wset_list(s, c->session, &payload, &len)) {
		free(payload);
		return -1;
	}
	int rc = ps_queue_frame(&c->queue, LR_FILES, 0, c->hdr.req_id, payload, (uint32_t)len);
	free(payload);
	return rc;
}

/* One FILE_DATA frame: bytes [off, off + n) of f, sealed over what is read now; the bytes themselves go out
 * with sendfile. 1 when f could not be read (refused). */
static int queue_file_frame(struct ps_server *s, struct ps_conn *c, const struct ps_file *f, uint64_t off, uint32_t n)
{
	struct lr_frame h;
	char *bytes = malloc(n ? n : 1);

	if (!bytes)
		return -1;
	ssize_t got = pread(f->fd, bytes, n, (off_t)off);
	lr_frame_make(&h, LR_FILE_DATA, off + n < f->size ? LR_F_MORE : 0, n, c->hdr.req_id);
	lr_frame_seal(&h, bytes);
	free(bytes);
	if (got != (ssize_t)n) {
		ps_conn_fail(s, c, LR_ERR_IO, "read %s: %s", f->name, got < 0 ? strerror(errno) : "shorter than listed");
		return 1;
	}
	return ps_queue_bytes(&c->queue, &h, sizeof(h)) || ps_queue_file(&c->queue, f->fd, off, n) ? -1 : 0;
}

static int on_get_file(struct ps_server *s, struct ps_conn *c)
{
	struct lr_file_req r;

	if (c->hdr.length < sizeof(r)) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "GET_FILE of %u bytes is too short", c->hdr.length);
		return 0;
	}
	memcpy(&r, c->buf, sizeof(r));
	const char *name = c->buf + sizeof(r);
	int wset = r.name_len == c->hdr.length - sizeof(r) && !r.reserved ? ps_wset_get(s, c, name, r.name_len) : 0;
	if (wset)
		return wset < 0 ? -1 : 0;
	const struct ps_file *f = r.name_len == c->hdr.length - sizeof(r) && !r.reserved
					  ? ps_catalog_find(s, name, r.name_len) : NULL;
	if (!f || f->kind != LR_FILE_META) {
		ps_conn_fail(s, c, LR_ERR_NO_FILE, "GET_FILE %.*s: not a file this server hands out whole",
			     (int)(c->hdr.length - sizeof(r)), name);
		return 0;
	}
	uint64_t off = 0;
	do { /* header bytes, then the file's bytes straight from the page cache */
		uint32_t n = f->size - off > LR_FILE_CHUNK ? LR_FILE_CHUNK : (uint32_t)(f->size - off);
		int rc = queue_file_frame(s, c, f, off, n);
		if (rc)
			return rc < 0 ? -1 : 0;
		off += n;
	} while (off < f->size);
	c->session->files++;
	return 0;
}

static int on_get_pages(struct ps_server *s, struct ps_conn *c)
{
	struct lr_page_req q;
	uint64_t a, b;

	if (c->hdr.length != sizeof(q)) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "GET_PAGES of %u bytes, expected %zu", c->hdr.length, sizeof(q));
		return 0;
	}
	memcpy(&q, c->buf, sizeof(q));
	if (ps_block_range(&s->index, q.record, q.first_block, q.nblocks, &a, &b) || b - a > LR_PAGES_MAX_DATA) {
		ps_conn_fail(s, c, LR_ERR_RANGE, "GET_PAGES record %llu blocks %u+%u: outside the index or over %u bytes",
			     (unsigned long long)q.record, q.first_block, q.nblocks, LR_PAGES_MAX_DATA);
		return 0;
	}
	uint64_t n;
	if (ps_queue_pages(s, c, c->hdr.flags, c->hdr.req_id, q.record, q.first_block, q.nblocks, &n))
		return -1;
	if (c->closing)
		return 0; /* refused: the store could not read them */
	c->session->bytes_urgent += n;
	c->session->requests++;
	ps_bulk_mark_sent(s, c->session, q.record, q.first_block, q.nblocks);
	return 0;
}

static int on_position(struct ps_server *s, struct ps_conn *c)
{
	struct lr_page_req q;
	uint64_t a, b;

	if (c->hdr.length != sizeof(q)) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "%s of %u bytes, expected %zu", lr_frame_name(c->hdr.type),
			     c->hdr.length, sizeof(q));
		return 0;
	}
	memcpy(&q, c->buf, sizeof(q));
	if (ps_block_range(&s->index, q.record, q.first_block, 1, &a, &b)) {
		ps_conn_fail(s, c, LR_ERR_RANGE, "%s record %llu block %u: outside the index", lr_frame_name(c->hdr.type),
			     (unsigned long long)q.record, q.first_block);
		return 0;
	}
	ps_bulk_seek(s, c->session, q.record, q.first_block);
	if (c->hdr.type == LR_BULK_START) {
		c->session->bulk_started = true;
		c->session->bulk_want = c->hdr.flags & (LR_F_ZSTD | LR_F_COMPRESS);
		ps_log(s, 1, "session %llu: bulk stream started", (unsigned long long)c->session->id);
	}
	return 0;
}

static int on_done(struct ps_server *s, struct ps_conn *c)
{
	struct ps_session *ss = c->session;
	if (c->hdr.length) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "DONE carries no payload, got %u bytes", c->hdr.length);
		return 0;
	}
	ss->done = true;
	s->delivered++;
	double secs = (double)(lr_net_now_ns() - ss->start_ns) / 1e9;
	ps_log(s, 0, "session %llu (%s): delivered: every page placed and verified by the client (%.3f s, %llu bytes "
	       "on request, %llu bulk)", (unsigned long long)ss->id, c->peer, secs, (unsigned long long)ss->bytes_urgent,
	       (unsigned long long)ss->bytes_bulk);
	ps_event(s, "{\"event\":\"delivered\",\"session\":%llu,\"peer\":\"%s\",\"seconds\":%.6f,\"bytes_urgent\":%llu,"
		 "\"bytes_bulk\":%llu,\"requests\":%llu}", (unsigned long long)ss->id, c->peer, secs,
		 (unsigned long long)ss->bytes_urgent, (unsigned long long)ss->bytes_bulk,
		 (unsigned long long)ss->requests);
	if (s->cfg.once)
		s->stopping = true;
	return ps_queue_frame(&c->queue, LR_DONE, 0, c->hdr.req_id, NULL, 0);
}

int ps_request_frame(struct ps_server *s, struct ps_conn *c)
{
	uint16_t t = c->hdr.type;
	bool urgent = c->channel == LR_CHANNEL_URGENT;

	if (urgent && t == LR_LIST && !c->hdr.length)
		return on_list(s, c);
	if (urgent && t == LR_GET_FILE)
		return on_get_file(s, c);
	if (urgent && t == LR_GET_PAGES)
		return on_get_pages(s, c);
	if ((urgent && t == LR_HINT) || (!urgent && t == LR_BULK_START && !c->session->bulk_started))
		return on_position(s, c);
	if (urgent && t == LR_WORKINGSET)
		return ps_wset_frame(s, c);
	if (urgent && t == LR_TUNE && !c->hdr.length) {
		c->session->bulk_want = c->hdr.flags & (LR_F_ZSTD | LR_F_COMPRESS);
		return 0;
	}
	if (urgent && t == LR_DONE && !c->session->done)
		return on_done(s, c);
	if (urgent && t == LR_COMMIT)
		return ps_commit_frame(s, c);
	if (urgent && t == LR_ABORT)
		return ps_abort_frame(s, c);
	ps_conn_fail(s, c, LR_ERR_PROTOCOL, "%s is not a request the %s channel takes now", lr_frame_name(t),
		     urgent ? "urgent" : "bulk");
	return 0;
}
