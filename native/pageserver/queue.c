/* queue.c: the output queue of a connection (queue.h): pieces pushed in order, sent as far as the socket takes them. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#include "lr_net.h"
#include "lr_proto_io.h"
#include "queue.h"

#define PS_QUEUE_MAX 512 /* queued pieces before a connection's requests are not read any more */
#define PS_QUEUE_BYTES (16u << 20) /* ... or bytes queued in memory (a live store's pages: file ranges cost none) */

/* Backpressure: a client that does not read its replies is not read either, so what it can make the server
 * hold is bounded; past --stall-ms without a byte taken it is dropped (main.c). */
bool ps_queue_full(const struct ps_queue *q)
{
	return q->n - q->head >= PS_QUEUE_MAX || q->queued_bytes >= PS_QUEUE_BYTES;
}

static int push(struct ps_queue *q, struct ps_out o)
{
	/* Move the unsent pieces to the front once half the slots are sent ones: a client that reads
	 * slowly keeps the queue from ever emptying, and the array would grow with every piece sent. */
	if (q->head && (q->head == q->n || (q->n == q->cap && q->head >= q->cap / 2))) {
		memmove(q->out, q->out + q->head, (q->n - q->head) * sizeof(*q->out));
		q->n -= q->head;
		q->head = 0;
	}
	if (q->n == q->cap) {
		size_t n = q->cap ? q->cap * 2 : 16;
		struct ps_out *v = realloc(q->out, n * sizeof(*v));
		if (!v)
			return -1;
		q->out = v;
		q->cap = n;
	}
	if (q->head == q->n) /* the queue starts anew: it has not stalled yet */
		q->sent_ns = lr_net_now_ns();
	q->out[q->n++] = o;
	q->queued_bytes += o.bytes ? o.len : 0;
	return 0;
}

int ps_queue_bytes(struct ps_queue *q, const void *bytes, size_t len)
{
	char *copy = malloc(len ? len : 1);
	if (!copy)
		return -1;
	memcpy(copy, bytes, len);
	return ps_queue_owned(q, copy, len);
}

int ps_queue_owned(struct ps_queue *q, char *bytes, size_t len)
{
	if (push(q, (struct ps_out){bytes, -1, 0, len})) {
		free(bytes);
		return -1;
	}
	return 0;
}

int ps_queue_frame(struct ps_queue *q, uint16_t type, uint16_t flags, uint64_t req_id, const void *payload,
		   uint32_t len)
{
	char *buf = malloc(sizeof(struct lr_frame) + len);
	if (!buf)
		return -1;
	lr_frame_make((struct lr_frame *)buf, type, flags, len, req_id);
	if (len)
		memcpy(buf + sizeof(struct lr_frame), payload, len);
	lr_frame_seal((struct lr_frame *)buf, buf + sizeof(struct lr_frame));
	if (push(q, (struct ps_out){buf, -1, 0, sizeof(struct lr_frame) + len})) {
		free(buf);
		return -1;
	}
	return 0;
}

int ps_queue_file(struct ps_queue *q, int fd, uint64_t off, uint64_t len)
{
	return len ? push(q, (struct ps_out){NULL, fd, off, len}) : 0;
}

int ps_queue_error(struct ps_queue *q, uint64_t req_id, uint32_t code, const char *msg)
{
	char payload[sizeof(struct lr_error_frame) + 400];
	size_t len = lr_error_frame_build(payload, sizeof(payload), code, msg);
	return ps_queue_frame(q, LR_ERROR, 0, req_id, payload, (uint32_t)len);
}

bool ps_queue_empty(const struct ps_queue *q)
{
	return q->head == q->n;
}

/* Send one queued piece to fd as far as it takes it: 1 done, 0 would block, -1 error. */
static int send_piece(struct ps_queue *q, int fd, struct ps_out *o)
{
	if (o->bytes) {
		ssize_t n = send(fd, o->bytes + o->off, o->len - o->off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		q->sent_ns = lr_net_now_ns();
		o->off += (uint64_t)n;
		return o->off == o->len;
	}
	off_t off = (off_t)o->off;
	ssize_t n = sendfile(fd, o->fd, &off, o->len);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (n == 0)
		return -1; /* the file is shorter than the index said: it changed under us */
	q->sent_ns = lr_net_now_ns();
	o->off = (uint64_t)off;
	o->len -= (uint64_t)n;
	return o->len == 0;
}

int ps_queue_flush(struct ps_queue *q, int fd)
{
	while (q->head < q->n) {
		int rc = send_piece(q, fd, &q->out[q->head]);
		if (rc < 0)
			return -1;
		if (rc == 0)
			return 0;
		q->queued_bytes -= q->out[q->head].bytes ? q->out[q->head].len : 0;
		free(q->out[q->head].bytes);
		q->head++;
	}
	return 0;
}

void ps_queue_drop(struct ps_queue *q)
{
	bool held_bytes = q->queued_bytes > 0;
	for (size_t i = q->head; i < q->n; i++)
		free(q->out[i].bytes);
	q->head = q->n = 0;
	q->queued_bytes = 0;
	if (held_bytes) /* a live store's replies it never took (up to PS_QUEUE_BYTES): back to the system, not kept
			 * by malloc for the next peer (glibc's mmap threshold grows after large frees) */
		malloc_trim(0);
}

void ps_queue_free(struct ps_queue *q)
{
	free(q->out);
	q->out = NULL;
	q->cap = 0;
}
