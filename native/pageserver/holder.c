/*
 * holder.c: which session may run the tree (COMMIT, ABORT; lr_proto.h). With --live the source tree is held
 * stopped while it is served, and may be resumed (a rollback) only while no destination can run it: a
 * destination commits before it starts CRIU's restore, and at most one live session holds the tree at a time.
 * A holder whose session ends holds it no more (ps_holder_release), so a new destination may take over.
 * Serving images from disk, any number of sessions commit: the checkpoint may be restored many times.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lr_proto_io.h"
#include "server.h"

/*
 * --held-file: the holder's state on disk for a watcher that outlives this server (lazyrestore's fate keeper,
 * which rolls the tree back if the migration's driver dies while no destination may run it). It is created before
 * a COMMIT is answered and removed on an ABORT only while no destination may have run the tree.
 */
int ps_holder_start(struct ps_server *s, struct lr_error *err)
{
	(void)err;
	if (!s->cfg.held_file || access(s->cfg.held_file, F_OK))
		return 0;
	s->may_have_run = true; /* an earlier server's destination committed, and may have run the tree */
	ps_log(s, 0, "%s exists: a destination of an earlier server may have run the tree; it stays",
	       s->cfg.held_file);
	return 0;
}

/* The held file written (session id), before the COMMIT is answered: 0, or -1 (logged) and no COMMIT. */
static int mark_held(struct ps_server *s, const struct ps_session *ss)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)ss->id);
	int fd;

	if (!s->cfg.held_file)
		return 0;
	fd = open(s->cfg.held_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, line, (size_t)n) != n) {
		ps_log(s, 0, "error: cannot write %s: %s: the COMMIT is refused", s->cfg.held_file, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (close(fd)) {
		ps_log(s, 0, "error: closing %s: %s: the COMMIT is refused", s->cfg.held_file, strerror(errno));
		return -1;
	}
	return 0;
}

/* After an ABORT of the holder: the held file removed, unless a destination may have run the tree. */
static void unmark_held(struct ps_server *s)
{
	if (!s->cfg.held_file || s->may_have_run)
		return;
	if (unlink(s->cfg.held_file) && errno != ENOENT)
		ps_log(s, 0, "warning: cannot remove %s: %s (the tree counts as held)", s->cfg.held_file,
		       strerror(errno));
}

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
		if (s->cfg.live_pids && mark_held(s, ss)) {
			ps_conn_fail(s, c, LR_ERR_IO, "cannot record the commit (%s): the tree stays with the source",
				     s->cfg.held_file);
			return 0;
		}
		ss->committed = true;
		ps_log(s, 0, "session %llu (%s): committed: its restore starts, its tree may run from now on",
		       (unsigned long long)ss->id, c->peer);
		ps_event(s, "{\"event\":\"committed\",\"session\":%llu,\"peer\":\"%s\"}", (unsigned long long)ss->id,
			 c->peer);
	}
	return ps_queue_frame(&c->queue, LR_COMMIT, 0, c->hdr.req_id, NULL, 0);
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
	if (ss->committed && s->cfg.live_pids)
		unmark_held(s);
	ss->committed = false;
	return ps_queue_frame(&c->queue, LR_ABORT, 0, c->hdr.req_id, NULL, 0);
}

void ps_holder_release(struct ps_server *s, struct ps_session *ss)
{
	if (!ss->committed || ss->done)
		return;
	ss->committed = false;
	s->may_have_run = true;
	ps_log(s, 0, "session %llu ended while it held the tree: its tree may have run; a new destination may commit",
	       (unsigned long long)ss->id);
}
