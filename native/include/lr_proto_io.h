/*
 * lr_proto_io.h: building and checking frames (lr_proto.h), and the blocking
 * frame I/O the client uses for its handshake and fetches. The checks here
 * are the only place a received frame header is trusted from.
 */
#ifndef LR_PROTO_IO_H
#define LR_PROTO_IO_H

#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_proto.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format is little-endian, as this host");

void lr_frame_make(struct lr_frame *f, uint16_t type, uint16_t flags, uint32_t length, uint64_t req_id);

/* Magic, sum field (0 unless LR_F_SUM), known type, and length at most max_len. */
int lr_frame_check(const struct lr_frame *f, uint32_t max_len, struct lr_error *err);

/* The checksum of f (its `length` payload bytes at payload), as LR_F_SUM defines it (lr_proto.h). */
uint32_t lr_frame_sum(const struct lr_frame *f, const void *payload);
/* Flag f LR_F_SUM and fill its sum (flags, length and req_id set first: the sum covers them). */
void lr_frame_seal(struct lr_frame *f, const void *payload);
/* 0 when f is not flagged LR_F_SUM or its payload matches its sum; else an error with errnum EBADMSG. */
int lr_frame_sum_check(const struct lr_frame *f, const void *payload, struct lr_error *err);

const char *lr_frame_name(uint32_t type);
const char *lr_error_code_name(uint32_t code);

/* Payload of an ERROR frame: code and message (truncated to fit). */
size_t lr_error_frame_build(void *buf, size_t size, uint32_t code, const char *msg);

/* Blocking: send one frame (header + payload), sealed (LR_F_SUM). */
int lr_send_frame(int fd, uint16_t type, uint16_t flags, uint64_t req_id, const void *payload, uint32_t len,
		  unsigned long long deadline_ns, struct lr_error *err);

/*
 * Blocking: receive one frame of type `want` into buf (payload at most cap).
 * An ERROR frame from the peer becomes an error naming its code and message;
 * any other type is a protocol error. errnum EBADMSG: the whole frame was read
 * but fails its LR_F_SUM checksum (the stream is in step: ask again); EPROTO:
 * a malformed header, another type, or a refusal of a damaged request (ERROR
 * LR_ERR_DAMAGED) (the stream cannot be trusted: connect again).
 */
int lr_recv_frame(int fd, uint16_t want, struct lr_frame *f, void *buf, uint32_t cap, unsigned long long deadline_ns,
		  struct lr_error *err);

#endif /* LR_PROTO_IO_H */
