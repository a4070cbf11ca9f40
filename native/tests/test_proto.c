/*
 * test_proto.c: unit tests for native/common/proto.c's frame checksums (LR_F_SUM, lr_proto.h): the sum of
 * known frames (the same values tests/integration/wire.py computes), every flipped bit of a sealed frame
 * caught, and lr_recv_frame over a socket pair: a damaged payload is EBADMSG with the stream still in step, a
 * damaged header or a DAMAGED refusal is EPROTO.
 *
 * Prints "N passed, M failed"; the exit status is non-zero when anything failed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "lr_net.h"
#include "lr_proto_io.h"

struct wire_frame {
	struct lr_frame h;
	char payload[64];
};

static struct wire_frame sealed(uint16_t type, uint16_t flags, uint64_t req_id, const char *payload, uint32_t len)
{
	struct wire_frame w;
	memset(&w, 0, sizeof(w));
	memcpy(w.payload, payload, len);
	lr_frame_make(&w.h, type, flags, len, req_id);
	lr_frame_seal(&w.h, w.payload);
	return w;
}

/* The values wire.frame_sum gives (XXH3-64 of the payload seeded with XXH3-64 of the header, low 32 bits). */
static void known_sums(void)
{
	struct wire_frame files = sealed(LR_FILES, 0, 7, "hello", 5), done = sealed(LR_DONE, 0, 3, "", 0);
	CHECK(files.h.flags == LR_F_SUM && files.h.sum == 0xc9cefe34u);
	CHECK(done.h.flags == LR_F_SUM && done.h.sum == 0xa98aa238u);
}

/* Every single bit flipped in a sealed frame, header or payload, is caught by the header check or the sum. */
static void every_bit_flip_is_caught(void)
{
	struct wire_frame w = sealed(LR_FILE_DATA, LR_F_MORE, 42, "lazyrestore/index.bin bytes", 27);
	struct lr_error err;
	unsigned missed = 0, bits = (unsigned)(sizeof(w.h) + w.h.length) * 8;

	CHECK(!lr_frame_check(&w.h, LR_FRAME_MAX, &err) && !lr_frame_sum_check(&w.h, w.payload, &err));
	for (unsigned bit = 0; bit < bits; bit++) {
		struct wire_frame d = w;
		((unsigned char *)&d)[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		bool length_changed = d.h.length != w.h.length; /* the receiver reads another frame: bounded here */
		if (length_changed || lr_frame_check(&d.h, LR_FRAME_MAX, &err))
			continue;
		if (!lr_frame_sum_check(&d.h, d.payload, &err))
			missed++;
		else if (err.errnum != EBADMSG)
			missed++;
	}
	CHECK(missed == 0);
}

/* Unflagged, the sum field must be 0; unflagged with 0, nothing is checked (a version 1 peer's frames). */
static void unflagged_frames(void)
{
	struct lr_frame f;
	struct lr_error err;
	lr_frame_make(&f, LR_LIST, 0, 0, 1);
	CHECK(!lr_frame_check(&f, LR_REQUEST_MAX, &err) && !lr_frame_sum_check(&f, "", &err));
	f.sum = 0x1234;
	CHECK(lr_frame_check(&f, LR_REQUEST_MAX, &err) && strstr(err.msg, "without LR_F_SUM"));
}

static void send_bytes(int fd, const void *p, size_t n)
{
	CHECK(write(fd, p, n) == (ssize_t)n);
}

/* A damaged frame read whole (EBADMSG), then the next one read as it is: the stream stays in step. */
static void damaged_payload_keeps_the_stream_in_step(int sv[2])
{
	struct wire_frame a = sealed(LR_FILE_DATA, 0, 5, "manifest", 8), b = sealed(LR_FILE_DATA, 0, 6, "again", 5);
	struct lr_frame f;
	struct lr_error err;
	char buf[64];

	a.payload[3] ^= 0x01;
	send_bytes(sv[0], &a, sizeof(a.h) + a.h.length);
	send_bytes(sv[0], &b, sizeof(b.h) + b.h.length);
	CHECK(lr_recv_frame(sv[1], LR_FILE_DATA, &f, buf, sizeof(buf), lr_net_now_ns() + 1000000000ULL, &err) &&
	      err.errnum == EBADMSG && strstr(err.msg, "fails its checksum"));
	CHECK(!lr_recv_frame(sv[1], LR_FILE_DATA, &f, buf, sizeof(buf), lr_net_now_ns() + 1000000000ULL, &err) &&
	      f.req_id == 6 && !memcmp(buf, "again", 5));
}

/* A damaged header, and the server's refusal of a damaged request, are EPROTO (connect again). */
static void damaged_header_and_refusal_are_eproto(int sv[2])
{
	struct wire_frame a = sealed(LR_FILES, 0, 5, "x", 1);
	char refusal[64];
	size_t n = lr_error_frame_build(refusal, sizeof(refusal), LR_ERR_DAMAGED, "GET_FILE frame fails its checksum");
	struct wire_frame e = sealed(LR_ERROR, 0, 7, refusal, (uint32_t)n);
	struct lr_frame f;
	struct lr_error err;
	char buf[64];

	a.h.magic ^= 0x100;
	send_bytes(sv[0], &a, sizeof(a.h));
	CHECK(lr_recv_frame(sv[1], LR_FILES, &f, buf, sizeof(buf), lr_net_now_ns() + 1000000000ULL, &err) &&
	      err.errnum == EPROTO && strstr(err.msg, "magic"));
	send_bytes(sv[0], &e, sizeof(e.h) + e.h.length);
	CHECK(lr_recv_frame(sv[1], LR_FILE_DATA, &f, buf, sizeof(buf), lr_net_now_ns() + 1000000000ULL, &err) &&
	      err.errnum == EPROTO && strstr(err.msg, "damaged error"));
}

int main(void)
{
	int sv[2];

	known_sums();
	every_bit_flip_is_caught();
	unflagged_frames();
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		perror("socketpair");
		return 2;
	}
	damaged_payload_keeps_the_stream_in_step(sv);
	damaged_header_and_refusal_are_eproto(sv);
	close(sv[0]);
	close(sv[1]);
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
