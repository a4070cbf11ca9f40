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

/* Magic, reserved field, known type, and length at most max_len. */
int lr_frame_check(const struct lr_frame *f, uint32_t max_len, struct lr_error *err);

const char *lr_frame_name(uint32_t type);
const char *lr_error_code_name(uint32_t code);

/* Payload of an ERROR frame: code and message (truncated to fit). */
size_t lr_error_frame_build(void *buf, size_t size, uint32_t code, const char *msg);

/* Blocking: send one frame (header + payload). */
int lr_send_frame(int fd, uint16_t type, uint16_t flags, uint64_t req_id, const void *payload, uint32_t len,
		  unsigned long long deadline_ns, struct lr_error *err);

/*
 * Blocking: receive one frame of type `want` into buf (payload at most cap).
 * An ERROR frame from the peer becomes an error naming its code and message;
 * any other type is a protocol error.
 */
int lr_recv_frame(int fd, uint16_t want, struct lr_frame *f, void *buf, uint32_t cap, unsigned long long deadline_ns,
		  struct lr_error *err);

#endif /* LR_PROTO_IO_H */
