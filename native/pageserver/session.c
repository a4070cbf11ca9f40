/*
 * session.c: sessions. A session is an urgent connection and, once it joins, a bulk one; it lives as long as
 * its urgent connection. Ending one closes no connection: the bulk connection it leaves behind is handed back
 * for its owner (conn.c) to close.
 */
#include <stdlib.h>

#include "lr_auth.h"
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

struct ps_conn *ps_session_end(struct ps_server *s, struct ps_session *ss, const char *why)
{
	struct ps_conn *bulk = ss->bulk;
	ss->bulk = ss->urgent = NULL;
	if (bulk)
		bulk->session = NULL;
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
	return bulk;
}

struct ps_conn *ps_session_leave(struct ps_server *s, struct ps_conn *c)
{
	struct ps_session *ss = c->session;
	if (ss->urgent == c)
		ss->urgent = NULL;
	if (ss->bulk == c)
		ss->bulk = NULL;
	c->session = NULL;
	if (ss->urgent) /* the urgent channel is the session */
		return NULL;
	return ps_session_end(s, ss, ss->done ? "delivered" : "closed before DONE: the checkpoint was not delivered");
}
