/*
 * commit.c: this restore's tree and the page server (remote.h). In a live migration the source tree is held
 * stopped, and may resume (a rollback) only while no destination can run it. So lr-lazyd sends COMMIT once
 * the checkpoint is fetched and before it reports listening (lazyrestore starts CRIU's restore only then):
 * the server answers when no other destination holds the tree. And it sends ABORT when its tree cannot have
 * run: CRIU's restore closed its connection before "restore finished" (the restore failed; CRIU kills the
 * tasks it made before any runs), or lr-lazyd stops before CRIU ever connected. Never after "restore
 * finished": from then on the tree runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lazyd.h"
#include "lr_proto_io.h"

#define LR_ABORT_WAIT_MS 2000        /* ABORT is best effort: its answer is awaited this long at most */
#define LR_COMMIT_TRY_MS 2000        /* one connection attempt while committing */
#define LR_COMMIT_BACKOFF_MIN_MS 100
#define LR_COMMIT_BACKOFF_MAX_MS 1000

/* COMMIT on the urgent connection and its answer, by until_ns. *refused: the server said no. */
static int commit_once(struct lr_lazyd *d, uint64_t until_ns, bool *refused, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	uint64_t id = ++r->next_req;

	if (lr_send_frame(r->urgent.rec.fd, LR_COMMIT, 0, id, NULL, 0, until_ns, err))
		return -1;
	return lr_remote_await(d, LR_COMMIT, id, until_ns, refused, err);
}

/* The connection was lost before the answer: close it; a new one (a new session) after the backoff. */
static int connect_again(struct lr_lazyd *d, uint64_t until_ns, unsigned backoff_ms, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	uint64_t now = lr_now_ns();

	if (r->urgent.rec.fd >= 0) {
		lr_log(d, 0, "lost the page server %s before its answer to COMMIT: %s; connecting again", r->addr.text,
		       err->msg);
		close(r->urgent.rec.fd);
		r->urgent.rec.fd = -1;
		r->urgent.start = r->urgent.end = 0;
	}
	if (now + backoff_ms * 1000000ULL >= until_ns)
		return lr_error_set(err, 0, "no answer to COMMIT from the page server %s within %llu s (last: %s): "
				    "nothing was restored", r->addr.text, (unsigned long long)(r->timeout_ms / 1000), err->msg);
	usleep(backoff_ms * 1000);
	uint64_t left_ms = (until_ns - lr_now_ns()) / 1000000ULL;
	r->session = 0;
	r->urgent.rec.fd = lr_remote_handshake(r, LR_CHANNEL_URGENT, d->index.hdr->checkpoint_id,
					       left_ms < LR_COMMIT_TRY_MS ? (int)left_ms + 1 : LR_COMMIT_TRY_MS, err);
	/* errnum 0: the server refused, or is not the one holding this checkpoint and its secret */
	return r->urgent.rec.fd < 0 && !err->errnum ? -1 : 0;
}

int lr_remote_commit(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	unsigned backoff_ms = LR_COMMIT_BACKOFF_MIN_MS;

	if (!r)
		return 0;
	if (!r->urgent.buf && !(r->urgent.buf = malloc(LR_CHAN_BUF)))
		return lr_error_set(err, ENOMEM, "urgent channel buffer");
	uint64_t until = lr_now_ns() + r->timeout_ms * 1000000ULL;
	for (;;) {
		bool refused = false;
		if (r->urgent.rec.fd >= 0 && !commit_once(d, until, &refused, err))
			break;
		if (refused)
			return lr_error_set(err, 0, "the page server %s did not let this restore start (%s): nothing was "
					    "restored", r->addr.text, err->msg);
		if (connect_again(d, until, backoff_ms, err))
			return -1;
		backoff_ms = backoff_ms * 2 > LR_COMMIT_BACKOFF_MAX_MS ? LR_COMMIT_BACKOFF_MAX_MS : backoff_ms * 2;
	}
	r->committed = true;
	lr_log(d, 0, "committed: the page server %s answered COMMIT (session %llu): this restore's tree may run from "
	       "now on", r->addr.text, (unsigned long long)r->session);
	return 0;
}

/* A CRIU restore has connected to lazy-pages.socket and waits to be accepted (or poll failed: assume so). */
static bool restore_waiting(const struct lr_lazyd *d)
{
	struct pollfd p = {d->listen_fd, POLLIN, 0};
	return d->listen_fd >= 0 && poll(&p, 1, 0) != 0;
}

/* This restore's tree cannot have run, nor run later. */
static bool never_ran(const struct lr_lazyd *d)
{
	if (d->finished)
		return false;
	return d->connected ? d->conn.closed_early : !restore_waiting(d);
}

void lr_remote_abort_unrun(struct lr_lazyd *d, const char *why)
{
	struct lr_remote *r = d->remote;
	struct lr_error err;
	bool refused = false;

	if (!r || !r->committed || !never_ran(d))
		return;
	if (r->urgent.rec.fd < 0) {
		lr_log(d, 0, "ABORT not sent: not connected to the page server %s (the session that committed is gone)",
		       r->addr.text);
		return;
	}
	uint64_t id = ++r->next_req, until = lr_now_ns() + LR_ABORT_WAIT_MS * 1000000ULL;
	if (lr_send_frame(r->urgent.rec.fd, LR_ABORT, 0, id, NULL, 0, until, &err)) {
		lr_log(d, 0, "ABORT not sent to the page server %s: %s", r->addr.text, err.msg);
		return;
	}
	lr_log(d, 0, "abort sent to the page server %s (session %llu): this restore's tree never ran (%s)", r->addr.text,
	       (unsigned long long)r->session, why);
	if (lr_remote_await(d, LR_ABORT, id, until, &refused, &err)) {
		lr_log(d, 0, "no answer to ABORT from the page server %s: %s", r->addr.text, err.msg);
		return;
	}
	r->committed = false;
	lr_log(d, 0, "abort answered by the page server %s (session %llu)", r->addr.text, (unsigned long long)r->session);
}
