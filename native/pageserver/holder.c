/*
 * holder.c: which session may run the tree (COMMIT, ABORT; lr_proto.h). With --live the source tree is held
 * stopped while it is served, and may be resumed (a rollback) only while no destination can run it: a
 * destination commits before it starts CRIU's restore, and at most one live session holds the tree at a time.
 * A holder whose session ends holds it no more (ps_holder_release), so a new destination may take over.
 * Serving images from disk, any number of sessions commit: the checkpoint may be restored many times.
 */
#include "lr_proto_io.h"
#include "server.h"

/* The live session other than ss that holds the tree, if any. */
static const struct ps_session *other_holder(const struct ps_server *s, const struct ps_session *ss)
{
	for (size_t i = 0; i < s->nsessions; i++)
		if (s->sessions[i] != ss && s->sessions[i]->committed)
			return s->sessions[i];
	return NULL;
}

/* COMMIT and ABORT carry nothing: true when c's frame is one (else it was refused). */
static bool empty(struct ps_server *s, struct ps_conn *c)
{
	if (!c->hdr.length)
		return true;
	ps_conn_fail(s, c, LR_ERR_PROTOCOL, "%s carries no payload, got %u bytes", lr_frame_name(c->hdr.type),
		     c->hdr.length);
	return false;
}

int ps_commit_frame(struct ps_server *s, struct ps_conn *c)
{
	struct ps_session *ss = c->session;
	const struct ps_session *other = s->cfg.live_pids ? other_holder(s, ss) : NULL;

	if (!empty(s, c))
		return 0;
	if (other) {
		ps_conn_fail(s, c, LR_ERR_BUSY, "another destination holds the tree (session %llu)",
			     (unsigned long long)other->id);
		return 0;
	}
	if (!ss->committed) {
		ss->committed = true;
		ps_log(s, 0, "session %llu (%s): committed: its restore starts, its tree may run from now on",
		       (unsigned long long)ss->id, c->peer);
		ps_event(s, "{\"event\":\"committed\",\"session\":%llu,\"peer\":\"%s\"}", (unsigned long long)ss->id,
			 c->peer);
	}
	return ps_queue_frame(c, LR_COMMIT, 0, c->hdr.req_id, NULL, 0);
}

int ps_abort_frame(struct ps_server *s, struct ps_conn *c)
{
	struct ps_session *ss = c->session;

	if (!empty(s, c))
		return 0;
	ps_log(s, 0, "session %llu (%s): aborted: its tree never ran and never will%s", (unsigned long long)ss->id,
	       c->peer, ss->committed ? "; it holds the tree no more" : "");
	ps_event(s, "{\"event\":\"aborted\",\"session\":%llu,\"peer\":\"%s\",\"held\":%s}", (unsigned long long)ss->id,
		 c->peer, ss->committed ? "true" : "false");
	ss->committed = false;
	return ps_queue_frame(c, LR_ABORT, 0, c->hdr.req_id, NULL, 0);
}

void ps_holder_release(struct ps_server *s, struct ps_session *ss)
{
	if (!ss->committed || ss->done)
		return;
	ss->committed = false;
	ps_log(s, 0, "session %llu ended while it held the tree: its tree may have run; a new destination may commit",
	       (unsigned long long)ss->id);
}
