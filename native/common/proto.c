/* proto.c: frames: building, checking, summing, naming, blocking I/O. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "lr_net.h"
#include "lr_proto_io.h"

void lr_frame_make(struct lr_frame *f, uint16_t type, uint16_t flags, uint32_t length, uint64_t req_id)
{
	*f = (struct lr_frame){LR_PROTO_MAGIC, type, flags, length, 0, req_id};
}

int lr_frame_check(const struct lr_frame *f, uint32_t max_len, struct lr_error *err)
{
	if (f->magic != LR_PROTO_MAGIC)
		return lr_error_set(err, 0, "bad frame magic %#x (expected %#x: not a lazyrestore peer?)", f->magic,
				    LR_PROTO_MAGIC);
	if (f->sum && !(f->flags & LR_F_SUM))
		return lr_error_set(err, 0, "frame %s: sum field is %#x without LR_F_SUM, expected 0",
				    lr_frame_name(f->type), f->sum);
	if (!f->type || f->type >= LR_FRAME_TYPES)
		return lr_error_set(err, 0, "unknown frame type %u", f->type);
	if (f->length > max_len)
		return lr_error_set(err, 0, "frame %s of %u bytes exceeds the limit of %u", lr_frame_name(f->type),
				    f->length, max_len);
	return 0;
}

uint32_t lr_frame_sum(const struct lr_frame *f, const void *payload)
{
	struct lr_frame h = *f;
	h.sum = 0;
	return (uint32_t)XXH3_64bits_withSeed(payload, f->length, XXH3_64bits(&h, sizeof(h)));
}

void lr_frame_seal(struct lr_frame *f, const void *payload)
{
	f->flags |= LR_F_SUM;
	f->sum = lr_frame_sum(f, payload);
}

int lr_frame_sum_check(const struct lr_frame *f, const void *payload, struct lr_error *err)
{
	if (!(f->flags & LR_F_SUM) || lr_frame_sum(f, payload) == f->sum)
		return 0;
	lr_error_set(err, 0, "%s frame of %u bytes fails its checksum (damaged on the way)", lr_frame_name(f->type),
		     f->length);
	return lr_error_class(err, EBADMSG);
}

const char *lr_frame_name(uint32_t type)
{
	static const char *const names[LR_FRAME_TYPES] = {
		[LR_HELLO] = "HELLO", [LR_CHALLENGE] = "CHALLENGE", [LR_AUTH] = "AUTH", [LR_WELCOME] = "WELCOME",
		[LR_LIST] = "LIST", [LR_FILES] = "FILES", [LR_GET_FILE] = "GET_FILE", [LR_FILE_DATA] = "FILE_DATA",
		[LR_GET_PAGES] = "GET_PAGES", [LR_PAGES] = "PAGES", [LR_HINT] = "HINT", [LR_BULK_START] = "BULK_START",
		[LR_BULK_END] = "BULK_END", [LR_DONE] = "DONE", [LR_ERROR] = "ERROR",
		[LR_WORKINGSET] = "WORKINGSET", [LR_TUNE] = "TUNE", [LR_COMMIT] = "COMMIT", [LR_ABORT] = "ABORT"};
	return type < LR_FRAME_TYPES && names[type] ? names[type] : "unknown";
}

const char *lr_error_code_name(uint32_t code)
{
	static const char *const names[] = {
		[LR_ERR_PROTOCOL] = "protocol", [LR_ERR_VERSION] = "version", [LR_ERR_AUTH] = "auth",
		[LR_ERR_TOO_BIG] = "too-big", [LR_ERR_RANGE] = "range", [LR_ERR_NO_FILE] = "no-file",
		[LR_ERR_IO] = "io", [LR_ERR_TIMEOUT] = "timeout", [LR_ERR_SESSION] = "session",
		[LR_ERR_DAMAGED] = "damaged", [LR_ERR_BUSY] = "busy"};
	return code < sizeof(names) / sizeof(names[0]) && names[code] ? names[code] : "unknown";
}

size_t lr_error_frame_build(void *buf, size_t size, uint32_t code, const char *msg)
{
	struct lr_error_frame e = {code, 0};
	size_t n = strlen(msg);

	if (size < sizeof(e))
		return 0;
	if (n > size - sizeof(e))
		n = size - sizeof(e);
	memcpy(buf, &e, sizeof(e));
	memcpy((char *)buf + sizeof(e), msg, n);
	return sizeof(e) + n;
}

int lr_send_frame(int fd, uint16_t type, uint16_t flags, uint64_t req_id, const void *payload, uint32_t len,
		  unsigned long long deadline_ns, struct lr_error *err)
{
	struct lr_frame f;
	lr_frame_make(&f, type, flags, len, req_id);
	lr_frame_seal(&f, payload);
	if (lr_net_send_all(fd, &f, sizeof(f), deadline_ns, err))
		return -1;
	return len ? lr_net_send_all(fd, payload, len, deadline_ns, err) : 0;
}

/* An ERROR frame (its first n bytes): EPROTO when the server refused a request damaged on the way (it closes
 * the connection: worth another), else the refusal as it is. */
static int peer_error(const struct lr_frame *f, const char *payload, uint32_t n, struct lr_error *err)
{
	struct lr_error_frame e;
	if (n < sizeof(e)) {
		lr_error_set(err, 0, "the server sent a malformed ERROR frame");
		return lr_error_class(err, EPROTO);
	}
	if (n == f->length && lr_frame_sum_check(f, payload, err))
		return lr_error_class(err, EPROTO);
	memcpy(&e, payload, sizeof(e));
	lr_error_set(err, 0, "the server refused: %s error: %.*s", lr_error_code_name(e.code), (int)(n - sizeof(e)),
		     payload + sizeof(e));
	return lr_error_class(err, e.code == LR_ERR_DAMAGED ? EPROTO : 0);
}

int lr_recv_frame(int fd, uint16_t want, struct lr_frame *f, void *buf, uint32_t cap, unsigned long long deadline_ns,
		  struct lr_error *err)
{
	if (lr_net_recv_all(fd, f, sizeof(*f), deadline_ns, err))
		return -1;
	if (lr_frame_check(f, LR_FRAME_MAX, err))
		return lr_error_class(err, EPROTO);
	if (f->type == LR_ERROR) {
		char msg[600];
		uint32_t n = f->length < sizeof(msg) ? f->length : (uint32_t)sizeof(msg);
		if (lr_net_recv_all(fd, msg, n, deadline_ns, err))
			return -1;
		return peer_error(f, msg, n, err);
	}
	if (f->type != want || f->length > cap) {
		lr_error_set(err, 0, "expected a %s frame of at most %u bytes from the server, got %s of %u",
			     lr_frame_name(want), cap, lr_frame_name(f->type), f->length);
		return lr_error_class(err, EPROTO);
	}
	if (f->length && lr_net_recv_all(fd, buf, f->length, deadline_ns, err))
		return -1;
	return lr_frame_sum_check(f, buf, err);
}
