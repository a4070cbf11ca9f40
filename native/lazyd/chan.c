/*
 * chan.c: one connection to lr-pageserver, its receive side (struct lr_chan, remote.h): whole frames out of the
 * buffer, refusals read, and waiting for one answer (COMMIT, ABORT, DONE). A leaf of the lr-pageserver source, so
 * commit.c and src_lrps.c both use it without calling each other round a circle.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "lazyd.h"
#include "lr_proto_io.h"
#include "remote.h"

/* Non-blocking: 1 with a whole frame in c->hdr / c->payload, 0 for more later, -1 when the connection is gone. */
int lr_chan_next(struct lr_chan *c, struct lr_error *err)
{
	const size_t hsz = sizeof(c->hdr);
	for (;;) {
		size_t have = c->end - c->start;
		if (have >= hsz) {
			memcpy(&c->hdr, c->buf + c->start, hsz);
			if (lr_frame_check(&c->hdr, LR_FRAME_MAX, err))
				return -1;
			if (have >= hsz + c->hdr.length) {
				c->payload = c->buf + c->start + hsz;
				c->start += hsz + c->hdr.length;
				return 1;
			}
		}
		if (c->start && LR_CHAN_BUF - c->end < LR_FRAME_MAX + hsz) { /* make room for a whole frame */
			memmove(c->buf, c->buf + c->start, have);
			c->start = 0;
			c->end = have;
		}
		ssize_t n = recv(c->rec.fd, c->buf + c->end, LR_CHAN_BUF - c->end, MSG_DONTWAIT);
		if (n == 0)
			return lr_error_set(err, 0, "the page server closed the connection");
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : lr_error_set(err, errno, "receive from the page server");
		c->end += (size_t)n;
		c->rx_ns = lr_now_ns();
	}
}

/* The ERROR frame in c as err (returns -1). */
int lr_chan_refused(const struct lr_chan *c, struct lr_error *err)
{
	struct lr_error_frame e = {0, 0};
	if (c->hdr.length >= sizeof(e))
		memcpy(&e, c->payload, sizeof(e));
	int n = c->hdr.length > sizeof(e) ? (int)(c->hdr.length - sizeof(e)) : 0;
	return lr_error_set(err, 0, "the page server refused: %s error: %.*s", lr_error_code_name(e.code), n,
			    c->payload + sizeof(e));
}

/* The server refused a request that may have been damaged on the way (not the secret, version or session). */
bool lr_chan_retryable(const struct lr_chan *c)
{
	struct lr_error_frame e = {0, 0};
	if (c->hdr.length >= sizeof(e))
		memcpy(&e, c->payload, sizeof(e));
	return e.code == LR_ERR_PROTOCOL || e.code == LR_ERR_TOO_BIG || e.code == LR_ERR_RANGE ||
	       e.code == LR_ERR_DAMAGED;
}

/* A whole frame waits in c's buffer. */
bool lr_chan_has_frame(const struct lr_chan *c)
{
	struct lr_frame h;
	if (c->rec.fd < 0 || c->end - c->start < sizeof(h))
		return false;
	memcpy(&h, c->buf + c->start, sizeof(h));
	return c->end - c->start >= sizeof(h) + (size_t)h.length;
}

int lr_remote_await(struct lr_lazyd *d, uint16_t type, uint64_t req_id, uint64_t until_ns, bool *refused,
		    struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	struct lr_chan *c = &r->urgent;

	while (lr_now_ns() < until_ns) { /* replies to earlier requests may still come first */
		struct pollfd p = {c->rec.fd, POLLIN, 0};
		if (poll(&p, 1, 100) < 0 && errno != EINTR)
			return lr_error_set(err, errno, "poll");
		int rc = lr_chan_next(c, err);
		if (rc < 0)
			return -1;
		if (rc == 0 || (c->hdr.type != type && c->hdr.type != LR_ERROR))
			continue;
		if (lr_frame_sum_check(&c->hdr, c->payload, err))
			return -1;
		if (c->hdr.type == LR_ERROR) {
			if (refused)
				*refused = !lr_chan_retryable(c);
			return lr_chan_refused(c, err);
		}
		if (c->hdr.req_id == req_id)
			return 0;
	}
	return lr_error_set(err, ETIMEDOUT, "no %s from the page server", lr_frame_name(type));
}
