/* handshake.c: HELLO -> CHALLENGE -> AUTH -> WELCOME (see lr_proto.h). */
#include <string.h>

#include "lr_auth.h"
#include "lr_proto_io.h"
#include "server.h"

static int on_hello(struct ps_server *s, struct ps_conn *c)
{
	struct lr_hello h;
	struct lr_challenge ch = {LR_PROTO_VERSION, 0, {0}, {0}};
	struct lr_error err;

	/* The version comes first in every HELLO: another version's HELLO may have another size. */
	if (c->hdr.type == LR_HELLO && c->hdr.length >= sizeof(h.version)) {
		memcpy(&h.version, c->buf, sizeof(h.version));
		if (h.version != LR_PROTO_VERSION) {
			ps_conn_fail(s, c, LR_ERR_VERSION, "protocol version %u is not supported (this server speaks %u)",
				     h.version, LR_PROTO_VERSION);
			return 0;
		}
	}
	if (c->hdr.type != LR_HELLO || c->hdr.length != sizeof(h)) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "expected HELLO (%zu bytes), got %s (%u bytes)", sizeof(h),
			     lr_frame_name(c->hdr.type), c->hdr.length);
		return 0;
	}
	memcpy(&h, c->buf, sizeof(h));
	if (h.channel != LR_CHANNEL_URGENT && h.channel != LR_CHANNEL_BULK) {
		ps_conn_fail(s, c, LR_ERR_PROTOCOL, "unknown channel %u (expected 1 urgent or 2 bulk)", h.channel);
		return 0;
	}
	if ((h.channel == LR_CHANNEL_URGENT) != (h.session == 0)) {
		ps_conn_fail(s, c, LR_ERR_SESSION, "the urgent channel starts a session (session 0), the bulk one joins it");
		return 0;
	}
	c->channel = h.channel;
	c->session_id = h.session;
	memcpy(c->client_nonce, h.client_nonce, LR_NONCE_SIZE);
	if (lr_random(c->server_nonce, LR_NONCE_SIZE, &err)) {
		ps_conn_fail(s, c, LR_ERR_IO, "%s", err.msg);
		return 0;
	}
	memcpy(ch.checkpoint_id, s->index.hdr->checkpoint_id, 16);
	memcpy(ch.server_nonce, c->server_nonce, LR_NONCE_SIZE);
	c->state = PS_AUTH;
	return ps_queue_frame(&c->queue, LR_CHALLENGE, 0, c->hdr.req_id, &ch, sizeof(ch));
}

/* The session an authenticated connection belongs to, or NULL after failing it. */
static struct ps_session *join(struct ps_server *s, struct ps_conn *c)
{
	if (c->channel == LR_CHANNEL_URGENT) {
		struct ps_session *ss = ps_session_new(s, c);
		if (!ss)
			ps_conn_fail(s, c, LR_ERR_IO, "out of memory for a session");
		return ss;
	}
	struct ps_session *ss = ps_session_find(s, c->session_id);
	if (!ss || ss->bulk || ss->done) {
		ps_conn_fail(s, c, LR_ERR_SESSION, "no session %llu waiting for its bulk channel",
			     (unsigned long long)c->session_id);
		return NULL;
	}
	ss->bulk = c;
	return ss;
}

static int on_auth(struct ps_server *s, struct ps_conn *c)
{
	struct lr_auth a;
	struct lr_welcome w;
	uint8_t want[LR_MAC_SIZE];
	struct lr_error err;
	const uint8_t *cid = s->index.hdr->checkpoint_id;

	if (c->hdr.type != LR_AUTH || c->hdr.length != sizeof(a)) {
		ps_conn_fail(s, c, LR_ERR_AUTH, "expected AUTH (%zu bytes), got %s (%u bytes)", sizeof(a),
			     lr_frame_name(c->hdr.type), c->hdr.length);
		return 0;
	}
	memcpy(&a, c->buf, sizeof(a));
	if (lr_auth_mac(s->secret, LR_AUTH_CLIENT, c->channel, c->session_id, cid, c->server_nonce, c->client_nonce,
			want, &err)) {
		ps_conn_fail(s, c, LR_ERR_IO, "%s", err.msg);
		return 0;
	}
	if (!lr_auth_equal(a.mac, want)) {
		ps_conn_fail(s, c, LR_ERR_AUTH, "wrong proof of the checkpoint secret");
		return 0;
	}
	struct ps_session *ss = join(s, c);
	if (!ss)
		return 0;
	c->session = ss;
	w.session = ss->id;
	if (lr_auth_mac(s->secret, LR_AUTH_SERVER, c->channel, ss->id, cid, c->server_nonce, c->client_nonce, w.mac,
			&err)) {
		ps_conn_fail(s, c, LR_ERR_IO, "%s", err.msg);
		return 0;
	}
	c->state = PS_READY;
	ps_log(s, 1, "conn %u (%s): authenticated, session %llu, %s channel", c->id, c->peer,
	       (unsigned long long)ss->id, c->channel == LR_CHANNEL_URGENT ? "urgent" : "bulk");
	return ps_queue_frame(&c->queue, LR_WELCOME, 0, c->hdr.req_id, &w, sizeof(w));
}

int ps_handshake_frame(struct ps_server *s, struct ps_conn *c)
{
	return c->state == PS_HELLO ? on_hello(s, c) : on_auth(s, c);
}
