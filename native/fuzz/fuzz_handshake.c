/*
 * fuzz_handshake.c: lr-pageserver's handshake state machine (handshake.c:
 * on_hello, on_auth, joining a session) fed sequences of frames on several
 * connections at once, each read by the server's own frame reader (conn.c), and on
 * into requests and the bulk stream once a connection is authenticated.
 *
 * The input is a list of steps: one control byte, a struct lr_frame, then
 * min(length, what is left, FH_PAYLOAD_MAX) payload bytes. Control bits:
 *   FH_SLOT          which of four client slots sends (a slot whose connection is
 *                    gone connects again, up to FX_CLIENTS_MAX connections an input;
 *                    four slots fill the server: it evicts or refuses, see fixture.h);
 *   FH_GOOD_MAC      an AUTH carries the right mac (no fuzzer guesses an HMAC over the
 *                    server's random nonce), so that what follows authentication runs;
 *   FH_LIVE_SESSION  a HELLO names the first live session (a bulk channel joining it);
 *   FH_HANG_UP       the client closes its end after this step.
 * A frame flagged LR_F_SUM whose checksum held before the patch is sealed again after it.
 * After every step the server writes what it would on EPOLLOUT, the clients read
 * it, and the connection/session links are checked both ways. The server is told it
 * serves a live tree (holder.c: one session at a time may COMMIT), and at most one
 * session holds it after every step.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fixture.h"
#include "lr_auth.h"
#include "lr_proto_io.h"

enum { FH_SLOT = 3, FH_GOOD_MAC = 1 << 2, FH_LIVE_SESSION = 1 << 3, FH_HANG_UP = 1 << 4 };
#define FH_SLOTS 4
#define FH_PAYLOAD_MAX (LR_REQUEST_MAX + 64) /* a little over what the server takes */

struct fh_client {
	struct ps_conn *conn; /* NULL: not connected */
	int peer;
};

struct fh_input {
	struct fh_client slot[FH_SLOTS];
	int peers[FX_CLIENTS_MAX]; /* every client end opened, closed at the end */
	size_t npeers;
};

static struct ps_server server;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fx_server_open(&server);
	server.cfg.live_pids = "fuzz"; /* only holder.c looks: the fixture's index has no live range */
	return 0;
}

/* The slot's connection, connecting first when it has none (or the server closed it); NULL when the server
 * refused it or the input has used up its connections. */
static struct ps_conn *slot_conn(struct fh_input *in, struct fh_client *cl)
{
	if (cl->conn && !cl->conn->dead)
		return cl->conn;
	if (in->npeers == FX_CLIENTS_MAX)
		return NULL;
	cl->conn = fx_connect(&server, &cl->peer);
	in->peers[in->npeers++] = cl->peer;
	return cl->conn;
}

/* What the control bits ask of the frame: the right mac, a live session. True when the payload changed. */
static bool patch(const struct ps_conn *c, uint8_t ctl, const struct lr_frame *f, uint8_t *payload, size_t n)
{
	struct lr_error err;
	bool mac = (ctl & FH_GOOD_MAC) && f->type == LR_AUTH && n >= LR_MAC_SIZE && c->state == PS_AUTH;
	bool session = (ctl & FH_LIVE_SESSION) && f->type == LR_HELLO && n >= offsetof(struct lr_hello, client_nonce) &&
		       server.nsessions;
	if (mac)
		FUZZ_CHECK(lr_auth_mac(server.secret, LR_AUTH_CLIENT, c->channel, c->session_id,
				       server.index.hdr->checkpoint_id, c->server_nonce, c->client_nonce, payload, &err) == 0);
	if (session)
		memcpy(payload + offsetof(struct lr_hello, session), &server.sessions[0]->id, sizeof(uint64_t));
	return mac || session;
}

/* As the event loop: EPOLLOUT for whoever asked for it, then the clients read. */
static void write_side(struct fh_input *in)
{
	for (size_t i = 0; i < server.nconns; i++) {
		struct ps_conn *c = server.conns[i];
		if (!c->dead && (c->events & EPOLLOUT))
			FUZZ_CHECK(ps_conn_on_write(&server, c) == 0);
	}
	for (size_t i = 0; i < in->npeers; i++)
		fx_drain(in->peers[i]);
}

/* An authenticated connection is in its session, and a session's channels point back at it; one holder at most. */
static void check_links(void)
{
	size_t holders = 0;

	for (size_t i = 0; i < server.nconns; i++) {
		const struct ps_conn *c = server.conns[i];
		if (!c->dead && c->state == PS_READY)
			FUZZ_CHECK(c->session && (c->session->urgent == c || c->session->bulk == c));
	}
	for (size_t i = 0; i < server.nsessions; i++) {
		const struct ps_session *ss = server.sessions[i];
		FUZZ_CHECK(ss->urgent && ss->urgent->session == ss && !ss->urgent->dead);
		FUZZ_CHECK(!ss->bulk || (ss->bulk->session == ss && !ss->bulk->dead));
		holders += ss->committed;
	}
	FUZZ_CHECK(holders <= 1);
}

/* One step of the input at p (n bytes left); returns the bytes it took, 0 to stop. */
static size_t step(struct fh_input *in, const uint8_t *p, size_t n)
{
	uint8_t msg[sizeof(struct lr_frame) + FH_PAYLOAD_MAX];
	struct lr_frame f;

	if (n < 1 + sizeof(f))
		return 0;
	memcpy(&f, p + 1, sizeof(f));
	size_t len = n - 1 - sizeof(f);
	len = len < f.length ? len : f.length;
	len = len < FH_PAYLOAD_MAX ? len : FH_PAYLOAD_MAX;
	struct fh_client *cl = &in->slot[p[0] & FH_SLOT];
	struct ps_conn *c = slot_conn(in, cl);
	if (!c)
		return 1 + sizeof(f) + len; /* nobody to send it */
	memcpy(msg, p + 1, sizeof(f) + len);
	bool sealed = (f.flags & LR_F_SUM) && len == f.length && lr_frame_sum(&f, msg + sizeof(f)) == f.sum;
	if (patch(c, p[0], &f, msg + sizeof(f), len) && sealed) { /* sealed again, as the client would have */
		lr_frame_seal(&f, msg + sizeof(f));
		memcpy(msg, &f, sizeof(f));
	}
	fx_send(cl->peer, msg, sizeof(f) + len);
	if (p[0] & FH_HANG_UP)
		shutdown(cl->peer, SHUT_WR);
	FUZZ_CHECK(ps_conn_on_read(&server, c) == 0); /* -1 is out of memory */
	write_side(in);
	check_links();
	return 1 + sizeof(f) + len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fh_input in = {0};

	for (size_t at = 0, took; at < size && (took = step(&in, data + at, size - at)); at += took)
		;
	fx_teardown(&server, in.peers, in.npeers);
	return 0;
}
