/*
 * fuzz_frame.c: one frame as it comes off the network (struct lr_frame, then its
 * payload; the input may go on with more frames) through every check that reads it:
 *   - lr_frame_check, at the server's limit (LR_REQUEST_MAX) and the client's (LR_FRAME_MAX);
 *   - lr-lazyd's receive, lr_recv_frame (ERROR payloads included; a LR_F_SUM frame it takes matches
 *     its checksum), then its payload
 *     parsers: lr_pages_frame_check against the fixture's index (PAGES; a LR_F_ZSTD one inflated by
 *     lr_zpages_inflate first), and
 *     lr_file_entry_next over a FILES list; what they accept is checked to lie
 *     inside the payload and the record;
 *   - lr-pageserver reading the input as requests on an authenticated urgent
 *     connection: conn.c's frame reader, then requests.c (LIST, GET_FILE, GET_PAGES,
 *     HINT, WORKINGSET (merged when its last frame parses), TUNE, DONE, COMMIT, ABORT, and the block ranges
 *     they name).
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fixture.h"
#include "lazyd.h"
#include "lr_proto_io.h"

static struct ps_server server;
static char *recv_buf; /* LR_FRAME_MAX bytes, as lr-lazyd's fetch buffer */
static char *zbuf;     /* LR_FRAME_MAX bytes: an inflated PAGES payload, as lr-lazyd's r->zbuf */
static ZSTD_DCtx *zdx;

/* remote_fetch.c logs through lr-lazyd's lr_log (log.c, not linked); the parsers never call it. */
void lr_log(const struct lr_lazyd *d, int level, const char *fmt, ...)
{
	(void)d;
	(void)level;
	(void)fmt;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fx_server_open(&server);
	recv_buf = malloc(LR_FRAME_MAX);
	zbuf = malloc(LR_FRAME_MAX);
	zdx = ZSTD_createDCtx();
	FUZZ_CHECK(recv_buf != NULL && zbuf != NULL && zdx != NULL);
	return 0;
}

/* The header alone, at both limits: what the server takes, the client (whose limit is larger) takes too. */
static void check_header(const uint8_t *data, size_t size)
{
	struct lr_frame f;
	struct lr_error err;
	if (size < sizeof(f))
		return;
	memcpy(&f, data, sizeof(f));
	bool server_ok = lr_frame_check(&f, LR_REQUEST_MAX, &err) == 0;
	bool client_ok = lr_frame_check(&f, LR_FRAME_MAX, &err) == 0;
	FUZZ_CHECK(!server_ok || client_ok);
}

/* A PAGES payload the client accepts holds exactly its checksums and data, inside one record. */
static void client_pages(const char *p, uint32_t len)
{
	const struct lr_index *idx = &server.index;
	struct lr_pages_hdr h;
	struct lr_error err;
	const char *data;
	uint64_t a;

	if (lr_pages_frame_check(idx, p, len, &h, &a, &data, &err))
		return;
	const struct lr_index_record *r = &idx->recs[h.record];
	FUZZ_CHECK(data == p + sizeof(h) + h.nblocks * 8ULL && data + h.data_len == p + len);
	FUZZ_CHECK(a >= r->start && a + h.data_len <= lr_record_end(idx, r) && h.data_len > 0);
}

/* A name fetch_listed may create: in the images dir or its lazyrestore/ directory, and no dot file. */
static bool in_images_dir(const char *name)
{
	const char *slash = strrchr(name, '/'), *base = slash ? slash + 1 : name;
	if (!base[0] || base[0] == '.')
		return false;
	return !slash || (slash == name + 11 && !strncmp(name, "lazyrestore/", 12));
}

/* Every entry of a FILES list, as fetch_listed walks it. */
static void client_files(const char *p, uint32_t len)
{
	struct lr_file_entry e;
	struct lr_error err;
	char name[LR_NAME_MAX + 1];

	for (uint32_t at = 0; at < len;) {
		uint32_t was = at;
		if (lr_file_entry_next(p, len, &at, &e, name, &err))
			return;
		FUZZ_CHECK(at == was + sizeof(e) + e.name_len && at <= len && strlen(name) == e.name_len);
		FUZZ_CHECK(in_images_dir(name));
	}
}

/* The input as the client receives it: header checked, then the payload (ERROR: the peer's message). */
static void client_side(const uint8_t *data, size_t size)
{
	struct lr_frame f = {0};
	struct lr_error err;
	int sv[2];

	if (size >= sizeof(f))
		memcpy(&f, data, sizeof(f));
	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	fx_send(sv[0], data, size);
	close(sv[0]); /* EOF after the input: a short frame is an error, not a wait */
	int rc = lr_recv_frame(sv[1], f.type, &f, recv_buf, LR_FRAME_MAX, lr_net_now_ns() + 1000000000ULL, &err);
	close(sv[1]);
	if (rc)
		return;
	FUZZ_CHECK(!(f.flags & LR_F_SUM) || lr_frame_sum(&f, recv_buf) == f.sum);
	char *payload = malloc(f.length ? f.length : 1); /* exactly the payload: ASan sees any read past it */
	FUZZ_CHECK(payload != NULL);
	memcpy(payload, recv_buf, f.length);
	uint32_t n;
	if (f.type == LR_PAGES && !(f.flags & LR_F_ZSTD))
		client_pages(payload, f.length);
	else if (f.type == LR_PAGES && !lr_zpages_inflate(zdx, payload, f.length, zbuf, LR_FRAME_MAX, &n, &err))
		client_pages(zbuf, n);
	else if (f.type == LR_FILES)
		client_files(payload, f.length);
	free(payload);
}

/* The input as requests on an urgent connection that finished its handshake. */
static void server_side(const uint8_t *data, size_t size)
{
	int peer;
	struct ps_conn *c = fx_connect(&server, &peer);

	FUZZ_CHECK(c != NULL);
	c->state = PS_READY;
	c->channel = LR_CHANNEL_URGENT;
	c->session = ps_session_new(&server, c);
	FUZZ_CHECK(c->session != NULL);
	fx_send(peer, data, size);
	FUZZ_CHECK(ps_conn_on_read(&server, c) == 0); /* -1 is out of memory */
	fx_teardown(&server, &peer, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_header(data, size);
	client_side(data, size);
	server_side(data, size);
	return 0;
}
