/*
 * workingset.c: the checkpoint's working set (lr_wset.h). Loaded at start from lazyrestore/workingset,
 * listed to every restore (a snapshot per session, so what LIST promised is what GET_FILE sends), and
 * merged with the WORKINGSET a client sends before DONE, then written back beside the checkpoint. It is
 * the one file this server writes; a read-only images dir keeps the merge in memory. A working set is a
 * hint: a bad one is logged and dropped, never fatal to a session.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lr_proto_io.h"
#include "server.h"

#define PS_WSET_FILE_MAX (sizeof(struct lr_wset_hdr) + (size_t)LR_WSET_MAX_ENTRIES * sizeof(struct lr_wset_entry))

static void wset_path(const struct ps_server *s, char *path, size_t size)
{
	snprintf(path, size, "%s/%s", s->cfg.images_dir, LR_WSET_NAME);
}

void ps_wset_open(struct ps_server *s)
{
	struct lr_error err;
	char path[4096];

	wset_path(s, path, sizeof(path));
	if (!lr_wset_load(&s->wset, path, &s->index, &err)) {
		ps_log(s, 1, "working set %s: %zu pages from %u restore(s)", path, s->wset.n, s->wset.hdr.restores);
		return;
	}
	if (err.errnum == ENOENT)
		return;
	char text[600];
	ps_log(s, 0, "warning: %s; ignored (restores start without it and store a new one)", err.msg);
	ps_event(s, "{\"event\":\"warning\",\"message\":\"%s; ignored\"}", ps_json_text(err.msg, text, sizeof(text)));
}

int ps_wset_list(struct ps_server *s, struct ps_session *ss, char **list, size_t *len)
{
	struct lr_error err;
	struct lr_file_entry e = {0, LR_FILE_META, (uint32_t)strlen(LR_WSET_NAME)};

	free(ss->wset_snap);
	ss->wset_snap = NULL;
	ss->wset_snap_len = 0;
	if (!s->wset.n)
		return 0;
	if (lr_wset_encode(&s->wset, &ss->wset_snap, &ss->wset_snap_len, &err))
		return -1;
	char *grown = realloc(*list, *len + sizeof(e) + e.name_len);
	if (!grown)
		return -1;
	e.size = ss->wset_snap_len;
	memcpy(grown + *len, &e, sizeof(e));
	memcpy(grown + *len + sizeof(e), LR_WSET_NAME, e.name_len);
	*list = grown;
	*len += sizeof(e) + e.name_len;
	return 0;
}

int ps_wset_get(struct ps_server *s, struct ps_conn *c, const char *name, size_t len)
{
	struct ps_session *ss = c->session;
	if (len != strlen(LR_WSET_NAME) || memcmp(name, LR_WSET_NAME, len))
		return 0;
	if (!ss->wset_snap) {
		ps_conn_fail(s, c, LR_ERR_NO_FILE, "GET_FILE %s: not listed to this session", LR_WSET_NAME);
		return 1;
	}
	size_t off = 0;
	do {
		uint32_t n = ss->wset_snap_len - off > LR_FILE_CHUNK ? LR_FILE_CHUNK : (uint32_t)(ss->wset_snap_len - off);
		if (ps_queue_frame(&c->queue, LR_FILE_DATA, off + n < ss->wset_snap_len ? LR_F_MORE : 0, c->hdr.req_id,
				   ss->wset_snap + off, n))
			return -1;
		off += n;
	} while (off < ss->wset_snap_len);
	ss->files++;
	return 1;
}

/* The whole working set of a session arrived: check it against the index, merge, store. */
static void merge_in(struct ps_server *s, struct ps_session *ss)
{
	struct lr_wset add;
	struct lr_error err;
	char path[4096], text[600];

	wset_path(s, path, sizeof(path));
	if (lr_wset_parse(&add, ss->wset_in, ss->wset_in_len, &s->index, "from the client", &err)) {
		ps_log(s, 0, "session %llu: warning: %s; dropped", (unsigned long long)ss->id, err.msg);
		ps_event(s, "{\"event\":\"warning\",\"session\":%llu,\"message\":\"%s; dropped\"}",
			 (unsigned long long)ss->id, ps_json_text(err.msg, text, sizeof(text)));
		return;
	}
	int rc = lr_wset_merge(&s->wset, &add, &err);
	lr_wset_fini(&add);
	if (rc || lr_wset_write(&s->wset, path, &err)) {
		ps_log(s, 0, "session %llu: warning: the working set was not stored: %s%s", (unsigned long long)ss->id,
		       err.msg, rc ? "" : " (kept in memory for later restores)");
		ps_event(s, "{\"event\":\"warning\",\"session\":%llu,\"message\":\"working set not stored: %s\"}",
			 (unsigned long long)ss->id, ps_json_text(err.msg, text, sizeof(text)));
		return;
	}
	ps_log(s, 1, "session %llu: working set merged into %s: %zu pages from %u restore(s)", (unsigned long long)ss->id,
	       path, s->wset.n, s->wset.hdr.restores);
	ps_event(s, "{\"event\":\"workingset\",\"session\":%llu,\"pages\":%zu,\"restores\":%u,\"path\":\"%s\"}",
		 (unsigned long long)ss->id, s->wset.n, s->wset.hdr.restores, ps_json_text(path, text, sizeof(text)));
}

int ps_wset_frame(struct ps_server *s, struct ps_conn *c)
{
	struct ps_session *ss = c->session;
	if (ss->wset_in_done || ss->done) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "WORKINGSET after its last frame or after DONE");
		return 0;
	}
	if (c->hdr.length > PS_WSET_FILE_MAX - ss->wset_in_len) {
		ps_conn_fail(s, c, LR_ERR_TOO_BIG, "WORKINGSET longer than a working set may be (%zu bytes)",
			     PS_WSET_FILE_MAX);
		return 0;
	}
	char *grown = realloc(ss->wset_in, ss->wset_in_len + c->hdr.length + 1);
	if (!grown)
		return -1;
	memcpy(grown + ss->wset_in_len, c->buf, c->hdr.length);
	ss->wset_in = grown;
	ss->wset_in_len += c->hdr.length;
	if (c->hdr.flags & LR_F_MORE)
		return 0;
	ss->wset_in_done = true;
	if (!ss->wset_in_bad)
		merge_in(s, ss);
	free(ss->wset_in);
	ss->wset_in = NULL;
	ss->wset_in_len = 0;
	return 0;
}

void ps_wset_damaged(struct ps_server *s, struct ps_conn *c, const char *why)
{
	struct ps_session *ss = c->session;
	char text[600];

	if (!ss->wset_in_bad) {
		ps_log(s, 0, "session %llu: warning: %s; its working set is dropped", (unsigned long long)ss->id, why);
		ps_event(s, "{\"event\":\"warning\",\"session\":%llu,\"message\":\"%s; working set dropped\"}",
			 (unsigned long long)ss->id, ps_json_text(why, text, sizeof(text)));
	}
	ss->wset_in_bad = true;
	c->hdr.length = 0; /* its bytes count for nothing; its MORE flag still says whether more follow */
	if (ps_wset_frame(s, c) < 0)
		ps_conn_fail(s, c, LR_ERR_IO, "out of memory");
}

void ps_wset_session_free(struct ps_session *ss)
{
	free(ss->wset_snap);
	free(ss->wset_in);
	ss->wset_snap = ss->wset_in = NULL;
}
