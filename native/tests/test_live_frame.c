/*
 * test_live_frame.c: lr-lazyd's check of a PAGES frame (lr_pages_frame_check, remote_fetch.c) for live
 * records (LR_RANGE_LIVE: the index has no checksums; the server sends those it computed as it read the
 * stopped tree) and for the others (the sums sent must be the index's): a live frame whose bytes match the
 * sums sent is taken, one damaged on the way is EBADMSG; a frame of an image record is taken only with the
 * index's sums. And lr_index_open: a live record must be lazy and not unverified, and is counted.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "check.h"
#include "lazyd.h"
#include "remote.h"

#define PS 4096u
#define BS 16384u

/* remote_fetch.c logs through lr-lazyd's lr_log (log.c, not linked); the check never calls it. */
void lr_log(const struct lr_lazyd *d, int level, const char *fmt, ...)
{
	(void)d;
	(void)level;
	(void)fmt;
}

/* Two records of 8 pages (2 blocks each): 0 an image record with the sums of `image`, 1 a live one (sums 0). */
static char *make_index(const char *image, uint32_t live_flags, size_t *size)
{
	*size = sizeof(struct lr_index_header) + 2 * sizeof(struct lr_index_record) + 4 * 8 + 8;
	char *buf = calloc(1, *size);
	struct lr_index_header *h = (void *)buf;
	struct lr_index_record *r = (void *)(h + 1);
	uint64_t *sums = (void *)(r + 2);
	*h = (struct lr_index_header){.version = LR_INDEX_VERSION, .header_size = sizeof(*h), .record_size = sizeof(*r),
				      .page_size = PS, .block_size = BS, .task_count = 1, .record_count = 2,
				      .checksum_count = 4, .lazy_pages = 16};
	memcpy(h->magic, LR_INDEX_MAGIC, 8);
	r[0] = (struct lr_index_record){1, LR_RANGE_LAZY, 0x10000, 8, 1, 0, 0, 0};
	r[1] = (struct lr_index_record){1, live_flags, 0x20000, 8, 0, 0, 0, 2};
	sums[0] = XXH3_64bits(image, BS);
	sums[1] = XXH3_64bits(image + BS, BS);
	uint64_t trailer = XXH3_64bits(buf, *size - 8);
	memcpy(buf + *size - 8, &trailer, 8);
	return buf;
}

static int open_index(struct lr_index *idx, const char *bytes, size_t size, struct lr_error *err)
{
	char path[] = "/tmp/lr-test-live-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0 || write(fd, bytes, size) != (ssize_t)size)
		return lr_error_set(err, errno, "temporary index");
	close(fd);
	int rc = lr_index_open(idx, path, PS, err);
	unlink(path);
	return rc;
}

/* A PAGES payload for blocks 0-1 of rec: data, and the sums given (NULL: computed over data). */
static char *make_frame(uint64_t rec, const char *data, const uint64_t *sums, uint32_t *len)
{
	struct lr_pages_hdr h = {rec, 0, 2, 2 * BS};
	*len = sizeof(h) + 16 + 2 * BS;
	char *p = malloc(*len);
	uint64_t s[2] = {XXH3_64bits(data, BS), XXH3_64bits(data + BS, BS)};
	memcpy(p, &h, sizeof(h));
	memcpy(p + sizeof(h), sums ? sums : s, 16);
	memcpy(p + sizeof(h) + 16, data, 2 * BS);
	return p;
}

static int check(const struct lr_index *idx, const char *payload, uint32_t len, struct lr_error *err)
{
	struct lr_pages_hdr h;
	uint64_t a;
	const char *data;
	return lr_pages_frame_check(idx, payload, len, &h, &a, &data, err);
}

static void frames(void)
{
	struct lr_index idx;
	struct lr_error err;
	size_t size;
	uint32_t len;
	char *image = malloc(2 * BS), *live = malloc(2 * BS);
	for (uint32_t i = 0; i < 2 * BS; i++) {
		image[i] = (char)(i * 7 + 1);
		live[i] = (char)(i * 13 + 5);
	}
	char *bytes = make_index(image, LR_RANGE_LAZY | LR_RANGE_LIVE, &size);
	CHECK(open_index(&idx, bytes, size, &err) == 0);
	CHECK(idx.live == 1 && idx.unverified == 0);

	char *f = make_frame(1, live, NULL, &len); /* live: the server's sums over what it read */
	CHECK(check(&idx, f, len, &err) == 0);
	f[len - 1] ^= 1; /* damaged on the way */
	CHECK(check(&idx, f, len, &err) == -1 && err.errnum == EBADMSG);
	free(f);
	uint64_t zero[2] = {0, 0}; /* the index's (zero) sums prove nothing about live bytes */
	f = make_frame(1, live, zero, &len);
	CHECK(check(&idx, f, len, &err) == -1 && err.errnum == EBADMSG);
	free(f);

	f = make_frame(0, image, NULL, &len); /* an image record: the index's sums */
	CHECK(check(&idx, f, len, &err) == 0);
	free(f);
	f = make_frame(0, live, NULL, &len); /* consistent in itself, but not the index's bytes */
	CHECK(check(&idx, f, len, &err) == -1 && err.errnum == EBADMSG);
	free(f);
	lr_index_close(&idx);
	free(bytes);
	free(image);
	free(live);
}

/* A live record must be lazy and verified (LR_RANGE_UNVERIFIED is CRIU's page server's, no sums at all). */
static void flags(void)
{
	static const uint32_t bad[] = {LR_RANGE_LIVE, LR_RANGE_LIVE | LR_RANGE_UNVERIFIED,
				       LR_RANGE_LIVE | LR_RANGE_LAZY | LR_RANGE_UNVERIFIED};
	char image[2 * BS] = {0};
	struct lr_index idx;
	struct lr_error err;
	size_t size;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *bytes = make_index(image, bad[i], &size);
		struct lr_index_header *h = (void *)bytes;
		if (!(bad[i] & LR_RANGE_LAZY)) { /* keep the header's page counts right */
			h->lazy_pages = 8;
			h->eager_pages = 8;
			uint64_t trailer = XXH3_64bits(bytes, size - 8);
			memcpy(bytes + size - 8, &trailer, 8);
		}
		CHECK(open_index(&idx, bytes, size, &err) == -1 && strstr(err.msg, "a live record must be lazy"));
		free(bytes);
	}
}

int main(void)
{
	frames();
	flags();
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
