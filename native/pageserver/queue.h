/*
 * queue.h: a connection's output queue: owned byte buffers and file ranges (sent with sendfile), in order.
 * It knows nothing of connections or sessions: the caller gives the socket when it flushes. A leaf of
 * lr-pageserver (queue.c calls nothing else of it).
 */
#ifndef LR_PS_QUEUE_H
#define LR_PS_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ps_out {                 /* one piece of queued output */
	char *bytes;                /* owned bytes, or NULL for a file range */
	int fd;                     /* file range: sent with sendfile */
	uint64_t off, len;          /* bytes: [off, len) still to send; file: offset and bytes left */
};

struct ps_queue {
	struct ps_out *out;         /* pieces [head, n) still to send */
	size_t head, n, cap;
	uint64_t queued_bytes;      /* of it, bytes held in memory (not file ranges): bounded (ps_queue_full) */
	uint64_t sent_ns;           /* when the queue last sent a byte, or got its first piece while empty */
};

int ps_queue_bytes(struct ps_queue *q, const void *bytes, size_t len);
int ps_queue_owned(struct ps_queue *q, char *bytes, size_t len); /* bytes (malloc'ed) are the queue's, even on error */
int ps_queue_frame(struct ps_queue *q, uint16_t type, uint16_t flags, uint64_t req_id, const void *payload,
		   uint32_t len);
int ps_queue_file(struct ps_queue *q, int fd, uint64_t off, uint64_t len);
/* An ERROR frame (code, msg) answering req_id; -1 out of memory. */
int ps_queue_error(struct ps_queue *q, uint64_t req_id, uint32_t code, const char *msg);
bool ps_queue_empty(const struct ps_queue *q);
/* Too much is queued (a client that does not read its replies): its connection is not read either. */
bool ps_queue_full(const struct ps_queue *q);
/* Write what socket fd takes. 0, or -1 (errno) when the connection must go. */
int ps_queue_flush(struct ps_queue *q, int fd);
/* Everything still queued dropped (the connection is closed); the pieces array stays for reuse until ps_queue_free. */
void ps_queue_drop(struct ps_queue *q);
void ps_queue_free(struct ps_queue *q);

#endif /* LR_PS_QUEUE_H */
