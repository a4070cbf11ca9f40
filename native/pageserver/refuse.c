/*
 * refuse.c: refusing a connection: its ERROR queued, the connection marked closing. Nothing is sent or closed
 * here: the connection's owner (conn.c, ps_conn_settle) does that once the handler that refused returns, so the
 * request code below it never calls back up.
 */
#include <stdarg.h>
#include <stdio.h>

#include "lr_proto_io.h"
#include "server.h"

void ps_conn_refuse(const struct ps_server *s, struct ps_conn *c, uint32_t code, const char *msg)
{
	ps_queue_error(&c->queue, c->hdr.req_id, code, msg); /* out of memory: nothing queued, c just closes */
	c->closing = true;
	c->deadline_ns = lr_net_now_ns() + (uint64_t)s->cfg.handshake_ms * 1000000ULL; /* to read what is queued */
}

void ps_conn_fail(const struct ps_server *s, struct ps_conn *c, uint32_t code, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ps_log(s, 0, "conn %u (%s): %s error: %s", c->id, c->peer, lr_error_code_name(code), msg);
	ps_event(s, "{\"event\":\"rejected\",\"conn\":%u,\"peer\":\"%s\",\"code\":\"%s\"}", c->id, c->peer,
		 lr_error_code_name(code));
	ps_conn_refuse(s, c, code, msg);
}
