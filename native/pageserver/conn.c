/*
 * conn.c: connections: accepting, reading frames and handing them to the handshake or the requests, writing
 * their output queue (queue.h), settling refused ones, closing. The top of the call graph below main.c: what it
 * calls (handshake, requests, sessions, the bulk stream) never calls back into it; they refuse a connection by
 * marking it (refuse.c), and a session that ends hands back the connection to close (session.c).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lr_proto_io.h"
#include "server.h"

#define PS_ACCEPT_PAUSE_MS 1000 /* listener off after accept ran out of descriptors */
#define PS_EVICT_LOG_NS 1000000000ULL /* at most one log line an interval for evictions (a flood evicts many) */

static void peer_text(const struct sockaddr_storage *ss, char *out, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
	}
	snprintf(out, size, "%s:%d", host, port);
}

static int add_conn(struct ps_server *s, struct ps_conn *c, struct lr_error *err)
{
	if (s->nconns == s->capconns) {
		size_t n = s->capconns ? s->capconns * 2 : 16;
		struct ps_conn **v = realloc(s->conns, n * sizeof(*v));
		if (!v)
			return lr_error_set(err, ENOMEM, "connection table");
		s->conns = v;
		s->capconns = n;
	}
	c->events = EPOLLIN | EPOLLRDHUP;
	struct epoll_event ev = {.events = c->events, .data.ptr = c};
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, c->fd, &ev))
		return lr_error_set(err, errno, "epoll add connection");
	s->conns[s->nconns++] = c;
	s->nopen++;
	return 0;
}

/* Read away what the peer sent that nobody will read: closing a socket with unread input resets the
 * connection and drops output not sent yet, the ERROR just queued among it. */
static void discard_input(int fd)
{
	char buf[4096];
	for (int i = 0; i < 4; i++)
		if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0)
			return; /* EAGAIN: nothing left; end of stream or an error: the close that follows is all we need */
}

static void log_eviction(struct ps_server *s, const struct ps_conn *c)
{
	uint64_t now = lr_net_now_ns();
	s->evicted++;
	if (s->evict_logged_ns && now - s->evict_logged_ns < PS_EVICT_LOG_NS)
		return;
	s->evict_logged_ns = now;
	ps_log(s, 0, "conn %u (%s): evicted: %u connections (--max-conns) and it had not authenticated; "
	       "%llu evicted so far (this line at most once a second)",
	       c->id, c->peer, s->cfg.max_conns, (unsigned long long)s->evicted);
}

/* Close c, which has not authenticated, to make room: ERROR timeout first, unless it is being refused already. */
static void evict(struct ps_server *s, struct ps_conn *c)
{
	char msg[160];

	log_eviction(s, c);
	discard_input(c->fd);
	if (!c->closing) {
		snprintf(msg, sizeof(msg), "evicted: the server is full (%u connections, --max-conns) and this "
			 "connection had not authenticated", s->cfg.max_conns);
		ps_conn_refuse(s, c, LR_ERR_TIMEOUT, msg);
		ps_conn_settle(s, c);
	}
	ps_conn_close(s, c); /* even were its ERROR not all sent: the slot is wanted now */
}

/* Every open connection has authenticated: fd gets ERROR io (a new socket's buffer takes it whole), then closed. */
static void refuse_busy(struct ps_server *s, int fd, const char *peer)
{
	struct {
		struct lr_frame hdr;
		char payload[sizeof(struct lr_error_frame) + 96];
	} f;
	char msg[96];

	snprintf(msg, sizeof(msg), "server busy: %zu connections (--max-conns)", s->nopen);
	size_t len = lr_error_frame_build(f.payload, sizeof(f.payload), LR_ERR_IO, msg);
	lr_frame_make(&f.hdr, LR_ERROR, 0, (uint32_t)len, 0);
	lr_frame_seal(&f.hdr, f.payload);
	discard_input(fd);
	ssize_t n = send(fd, &f, sizeof(f.hdr) + len, MSG_NOSIGNAL | MSG_DONTWAIT);
	ps_log(s, 1, "refused a connection from %s: server busy: %zu connections, all authenticated (--max-conns)%s%s",
	       peer, s->nopen, n < 0 ? "; its ERROR was not sent: " : "", n < 0 ? strerror(errno) : "");
	close(fd);
}

/* At --max-conns, evict the oldest connection that has not authenticated (slow handshakes must not keep
 * honest clients out), or refuse fd when every one has. Returns false when fd was refused (and closed). */
static bool make_room(struct ps_server *s, int fd, const struct sockaddr_storage *ss)
{
	char peer[64];

	if (s->nopen < s->cfg.max_conns)
		return true;
	for (size_t i = 0; i < s->nconns; i++) { /* conns is in the order accepted: the oldest first */
		struct ps_conn *c = s->conns[i];
		if (!c->dead && (c->state != PS_READY || c->closing)) {
			evict(s, c);
			return true;
		}
	}
	peer_text(ss, peer, sizeof(peer));
	refuse_busy(s, fd, peer);
	return false;
}

/*
 * Out of descriptors or memory: the pending connection stays in the backlog, and a level-triggered
 * listener would wake every epoll_wait for it. Stop polling it for PS_ACCEPT_PAUSE_MS, or until a
 * connection closes (ps_accept_resume).
 */
static int pause_accept(struct ps_server *s, int errnum, struct lr_error *err)
{
	struct epoll_event ev = {.events = 0, .data.ptr = NULL};
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, s->listen_fd, &ev))
		return lr_error_set(err, errno, "epoll: pause the listener");
	s->accept_paused_until = lr_net_now_ns() + PS_ACCEPT_PAUSE_MS * 1000000ULL;
	ps_log(s, 0, "cannot accept a connection: %s (%zu open): not accepting for %d ms or until one closes",
	       strerror(errnum), s->nconns, PS_ACCEPT_PAUSE_MS);
	return 0;
}

int ps_accept_resume(struct ps_server *s)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (!s->accept_paused_until)
		return 0;
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, s->listen_fd, &ev))
		return -1;
	s->accept_paused_until = 0;
	return 0;
}

int ps_conn_accept(struct ps_server *s, struct lr_error *err)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int one = 1;
	int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM))
		return pause_accept(s, errno, err);
	if (fd < 0)
		return errno == EAGAIN || errno == EINTR || errno == ECONNABORTED ? 0 : lr_error_set(err, errno, "accept");
	if (s->stopping) {
		ps_log(s, 1, "refused a connection: delivered, stopping (--once)");
		close(fd);
		return 0;
	}
	if (!make_room(s, fd, &ss))
		return 0;
	struct ps_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return lr_error_set(err, ENOMEM, "connection");
	}
	c->fd = fd;
	c->id = ++s->next_conn_id;
	peer_text(&ss, c->peer, sizeof(c->peer));
	c->deadline_ns = lr_net_now_ns() + (uint64_t)s->cfg.handshake_ms * 1000000ULL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (add_conn(s, c, err)) {
		close(fd);
		free(c);
		return -1;
	}
	ps_log(s, 2, "conn %u from %s", c->id, c->peer);
	return 0;
}

int ps_conn_update_events(struct ps_server *s, struct ps_conn *c)
{
	uint32_t want = 0;
	/* EPOLLRDHUP goes with EPOLLIN: it is level-triggered, and a hang-up nobody reads would wake every
	 * epoll_wait. */
	if (!ps_queue_full(&c->queue) && !c->closing)
		want |= EPOLLIN | EPOLLRDHUP;
	bool bulk_due = c->session && c == c->session->bulk && c->session->bulk_started && !c->session->bulk_ended;
	if (!ps_queue_empty(&c->queue) || bulk_due)
		want |= EPOLLOUT;
	if (want == c->events || c->dead)
		return 0;
	struct epoll_event ev = {.events = want, .data.ptr = c};
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev))
		return -1;
	c->events = want;
	return 0;
}

/* Write what the socket takes: 0, or -1 when it failed and c was closed (logged). */
static int send_or_close(struct ps_server *s, struct ps_conn *c)
{
	if (!ps_queue_flush(&c->queue, c->fd))
		return 0;
	ps_log(s, 1, "conn %u (%s): send failed: %s", c->id, c->peer, strerror(errno));
	ps_conn_close(s, c);
	return -1;
}

int ps_conn_on_write(struct ps_server *s, struct ps_conn *c)
{
	if (send_or_close(s, c))
		return 0;
	if (ps_queue_empty(&c->queue) && c->closing) {
		ps_conn_close(s, c);
		return 0;
	}
	if (ps_queue_empty(&c->queue) && c->session && c == c->session->bulk) {
		if (ps_bulk_fill(s, c))
			return -1;
		if (c->closing) { /* refused: the store could not read the chunk's pages */
			ps_conn_settle(s, c);
			return 0;
		}
		if (send_or_close(s, c))
			return 0;
	}
	return ps_conn_update_events(s, c);
}

void ps_conn_settle(struct ps_server *s, struct ps_conn *c)
{
	if (ps_queue_flush(&c->queue, c->fd) || ps_queue_empty(&c->queue) || ps_conn_update_events(s, c))
		ps_conn_close(s, c);
}

/* Read into the header, then the payload; 1 when a whole frame is in, 0 for more later, -1 closed. */
static int read_frame(struct ps_server *s, struct ps_conn *c)
{
	struct lr_error err;
	bool have_hdr = c->got >= sizeof(c->hdr);
	size_t want = have_hdr ? sizeof(c->hdr) + c->hdr.length : sizeof(c->hdr);
	char *dst = have_hdr ? c->buf + (c->got - sizeof(c->hdr)) : (char *)&c->hdr + c->got;

	if (c->got < want) {
		ssize_t n = recv(c->fd, dst, want - c->got, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return -1;
		if (n < 0)
			return 0;
		c->got += (uint32_t)n;
		if (c->got < want)
			return 0;
	}
	if (!have_hdr) {
		uint32_t max = c->state == PS_READY ? LR_REQUEST_MAX : (uint32_t)sizeof(c->buf);
		if (lr_frame_check(&c->hdr, max, &err)) {
			ps_conn_fail(s, c, c->hdr.magic == LR_PROTO_MAGIC && c->hdr.length > max ? LR_ERR_TOO_BIG
												  : LR_ERR_PROTOCOL,
				     "%s", err.msg);
			return -2;
		}
		if (c->hdr.length)
			return read_frame(s, c);
	}
	return 1;
}

/*
 * A whole frame in that fails its LR_F_SUM checksum: damaged on the way. A WORKINGSET is a hint: that working
 * set is dropped and the session goes on; anything else is refused with LR_ERR_DAMAGED (the client asks again
 * on a new connection). True when the frame was dealt with here.
 */
static bool damaged(struct ps_server *s, struct ps_conn *c)
{
	struct lr_error err;
	if (!lr_frame_sum_check(&c->hdr, c->buf, &err))
		return false;
	if (c->state == PS_READY && c->channel == LR_CHANNEL_URGENT && c->hdr.type == LR_WORKINGSET)
		ps_wset_damaged(s, c, err.msg);
	else
		ps_conn_fail(s, c, LR_ERR_DAMAGED, "%s", err.msg);
	return true;
}

/* A whole frame in, to the handshake or the requests: -1 out of memory (fatal). A handshake reply that could not be
 * queued closes that connection only. */
static int handle(struct ps_server *s, struct ps_conn *c)
{
	if (damaged(s, c))
		return 0;
	if (c->state == PS_READY)
		return ps_request_frame(s, c);
	if (ps_handshake_frame(s, c))
		ps_conn_close(s, c);
	return 0;
}

/* Up to 16 frames, until c is closed, refused or backlogged. */
static int read_frames(struct ps_server *s, struct ps_conn *c)
{
	for (int frames = 0; frames < 16 && !c->dead && !c->closing; frames++) {
		int rc = read_frame(s, c);
		if (rc == -1 && c->got) {
			ps_conn_fail(s, c, LR_ERR_PROTOCOL, "truncated frame: the connection ended after %u of %zu bytes",
				     c->got, c->got < sizeof(c->hdr) ? sizeof(c->hdr) : sizeof(c->hdr) + c->hdr.length);
			return 0;
		}
		if (rc == -1) {
			ps_log(s, c->state == PS_READY ? 2 : 1, "conn %u (%s): closed by the peer%s", c->id, c->peer,
			       c->state == PS_READY ? "" : " before authenticating");
			ps_conn_close(s, c);
			return 0;
		}
		if (rc <= 0)
			return 0;
		c->got = 0;
		if (handle(s, c))
			return -1;
		if (c->closing)
			return 0; /* refused: settled by the caller */
		if (ps_conn_update_events(s, c))
			return -1;
		if (ps_queue_full(&c->queue))
			return 0;
	}
	return 0;
}

int ps_conn_on_read(struct ps_server *s, struct ps_conn *c)
{
	bool was_closing = c->closing;
	int rc = read_frames(s, c);
	if (!rc && !was_closing && c->closing)
		ps_conn_settle(s, c);
	return rc;
}

void ps_conn_close(struct ps_server *s, struct ps_conn *c)
{
	if (c->dead)
		return;
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->dead = true;
	s->nopen--;
	ps_queue_drop(&c->queue);
	if (c->session) {
		struct ps_conn *bulk = ps_session_leave(s, c); /* the bulk channel of a session that ended with c */
		if (bulk)
			ps_conn_close(s, bulk);
	}
}

/* Free the connections closed during the last batch (epoll may still have handed out pointers to them).
 * Returns how many. */
size_t ps_conn_reap(struct ps_server *s)
{
	size_t w = 0, freed = s->nconns;
	for (size_t i = 0; i < s->nconns; i++) {
		struct ps_conn *c = s->conns[i];
		if (c->dead) {
			ps_queue_free(&c->queue);
			free(c);
		} else {
			s->conns[w++] = c;
		}
	}
	s->nconns = w;
	return freed - w;
}
