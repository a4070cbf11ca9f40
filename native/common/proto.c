/* proto.c: frames: building, checking, naming, blocking I/O. */
#include <stdio.h>
#include <string.h>

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
	if (f->reserved)
		return lr_error_set(err, 0, "frame %s: reserved field is %u, expected 0", lr_frame_name(f->type),
				    f->reserved);
	if (!f->type || f->type >= LR_FRAME_TYPES)
		return lr_error_set(err, 0, "unknown frame type %u", f->type);
	if (f->length > max_len)
		return lr_error_set(err, 0, "frame %s of %u bytes exceeds the limit of %u", lr_frame_name(f->type),
				    f->length, max_len);
	return 0;
}

const char *lr_frame_name(uint32_t type)
{
	static const char *const names[LR_FRAME_TYPES] = {
		[LR_HELLO] = "HELLO", [LR_CHALLENGE] = "CHALLENGE", [LR_AUTH] = "AUTH", [LR_WELCOME] = "WELCOME",
		[LR_LIST] = "LIST", [LR_FILES] = "FILES", [LR_GET_FILE] = "GET_FILE", [LR_FILE_DATA] = "FILE_DATA",
		[LR_GET_PAGES] = "GET_PAGES", [LR_PAGES] = "PAGES", [LR_HINT] = "HINT", [LR_BULK_START] = "BULK_START",
		[LR_BULK_END] = "BULK_END", [LR_DONE] = "DONE", [LR_ERROR] = "ERROR",
		[LR_WORKINGSET] = "WORKINGSET", [LR_TUNE] = "TUNE"};
	return type < LR_FRAME_TYPES && names[type] ? names[type] : "unknown";
}

const char *lr_error_code_name(uint32_t code)
{
	static const char *const names[] = {
		[LR_ERR_PROTOCOL] = "protocol", [LR_ERR_VERSION] = "version", [LR_ERR_AUTH] = "auth",
		[LR_ERR_TOO_BIG] = "too-big", [LR_ERR_RANGE] = "range", [LR_ERR_NO_FILE] = "no-file",
		[LR_ERR_IO] = "io", [LR_ERR_TIMEOUT] = "timeout", [LR_ERR_SESSION] = "session"};
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
	if (lr_net_send_all(fd, &f, sizeof(f), deadline_ns, err))
		return -1;
	return len ? lr_net_send_all(fd, payload, len, deadline_ns, err) : 0;
}

static int peer_error(const char *payload, uint32_t len, struct lr_error *err)
{
	struct lr_error_frame e;
	if (len < sizeof(e))
		return lr_error_set(err, 0, "the server sent a malformed ERROR frame");
	memcpy(&e, payload, sizeof(e));
	int n = (int)(len - sizeof(e));
	return lr_error_set(err, 0, "the server refused: %s error: %.*s", lr_error_code_name(e.code), n,
			    payload + sizeof(e));
}

int lr_recv_frame(int fd, uint16_t want, struct lr_frame *f, void *buf, uint32_t cap, unsigned long long deadline_ns,
		  struct lr_error *err)
{
	if (lr_net_recv_all(fd, f, sizeof(*f), deadline_ns, err) || lr_frame_check(f, LR_FRAME_MAX, err))
		return -1;
	if (f->type == LR_ERROR) {
		char msg[600];
		uint32_t n = f->length < sizeof(msg) ? f->length : (uint32_t)sizeof(msg);
		if (lr_net_recv_all(fd, msg, n, deadline_ns, err))
			return -1;
		return peer_error(msg, n, err);
	}
	if (f->type != want)
		return lr_error_set(err, 0, "expected a %s frame from the server, got %s", lr_frame_name(want),
				    lr_frame_name(f->type));
	if (f->length > cap)
		return lr_error_set(err, 0, "%s frame of %u bytes from the server exceeds %u", lr_frame_name(f->type),
				    f->length, cap);
	return f->length ? lr_net_recv_all(fd, buf, f->length, deadline_ns, err) : 0;
}
