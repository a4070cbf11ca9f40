/*
 * test_src_local.c: a page source driven into a fake sink (source.h), with no daemon around it: src_local.c over
 * a pages file and an index of its own, and the block-grouping helper (blocks.c) choosing what to ask for. What
 * arrives in the sink must be the file's bytes, exactly the ranges asked for; a damaged pages file must fail its
 * checksum; "restore finished" must ask the sink to place the working set.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "blocks.h"
#include "check.h"
#include "lazyd.h"

#define PS 4096u
#define BS 16384u
#define NPAGES 16u /* 4 blocks */
#define NBLOCKS (NPAGES * PS / BS)
#define START 0x40000u
#define MAX_ARRIVALS 16

struct arrival {
	uint32_t rec;
	uint64_t a, b;
	char *bytes;
};

struct fake_sink {
	struct arrival got[MAX_ARRIVALS];
	size_t n;
	unsigned place_here_calls;
};

static int fake_deliver(void *ctx, uint32_t rec, uint64_t a, uint64_t b, const char *data, uint64_t *placed,
			struct lr_error *err)
{
	struct fake_sink *f = ctx;
	if (f->n == MAX_ARRIVALS || !(f->got[f->n].bytes = malloc(b - a)))
		return lr_error_set(err, ENOMEM, "fake sink");
	memcpy(f->got[f->n].bytes, data, b - a);
	f->got[f->n].rec = rec;
	f->got[f->n].a = a;
	f->got[f->n++].b = b;
	*placed = b - a;
	return 0;
}

static bool fake_wanted(void *ctx, uint32_t rec, uint64_t a, uint64_t b)
{
	(void)ctx;
	(void)rec;
	return a < b;
}

static int fake_place_here(void *ctx, struct lr_error *err)
{
	(void)err;
	((struct fake_sink *)ctx)->place_here_calls++;
	return 0;
}

static int fake_drain_wait_ms(void *ctx)
{
	(void)ctx;
	return 0;
}

static void sink_clear(struct fake_sink *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->got[i].bytes);
	memset(f, 0, sizeof(*f));
}

/* What place.c does with a source's answer, reduced to the sink: bytes here now are delivered at once. */
static int fetch(struct lr_src *s, uint32_t rec, uint64_t a, uint64_t b, enum lr_get why, struct lr_error *err)
{
	const char *data;
	uint64_t placed;
	int rc = s->ops->get(s, rec, a, b, why, &data, err);
	if (rc != LR_SRC_NOW)
		return rc;
	return s->sink.deliver(s->sink.ctx, rec, a, b, data, &placed, err) ? -1 : LR_SRC_NOW;
}

/* The checkpoint: pages-1.img holding `image`, and an index of one lazy record of pid 1 with its block sums. */
static int write_file(const char *dir, const char *name, const void *bytes, size_t len)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "we");
	int bad = !f || fwrite(bytes, 1, len, f) != len;
	return (f && fclose(f)) || bad ? -1 : 0;
}

static int write_checkpoint(const char *dir, const char *image)
{
	size_t size = sizeof(struct lr_index_header) + sizeof(struct lr_index_record) + NBLOCKS * 8 + 8;
	char *buf = calloc(1, size);
	if (!buf)
		return -1;
	struct lr_index_header *h = (void *)buf;
	struct lr_index_record *r = (void *)(h + 1);
	uint64_t *sums = (void *)(r + 1);
	*h = (struct lr_index_header){.version = LR_INDEX_VERSION, .header_size = sizeof(*h), .record_size = sizeof(*r),
				      .page_size = PS, .block_size = BS, .task_count = 1, .record_count = 1,
				      .checksum_count = NBLOCKS, .lazy_pages = NPAGES};
	memcpy(h->magic, LR_INDEX_MAGIC, 8);
	r[0] = (struct lr_index_record){1, LR_RANGE_LAZY, START, NPAGES, 1, 0, 0, 0};
	for (unsigned k = 0; k < NBLOCKS; k++)
		sums[k] = XXH3_64bits(image + (size_t)k * BS, BS);
	uint64_t trailer = XXH3_64bits(buf, size - 8);
	memcpy(buf + size - 8, &trailer, 8);
	int rc = write_file(dir, "index.bin", buf, size) || write_file(dir, "pages-1.img", image, NPAGES * PS);
	free(buf);
	return rc;
}

/* A daemon with only what a local source uses: options, the index, the pages files and the buffer. */
static int open_source(struct lr_lazyd *d, struct fake_sink *f, const char *dir, bool map, struct lr_error *err)
{
	char path[256];
	memset(d, 0, sizeof(*d));
	d->cfg.images_dir = dir;
	d->cfg.map = map;
	d->page_size = PS;
	d->pages.dirfd = -1;
	d->buf_size = NPAGES * PS + 2 * BS;
	d->src = (struct lr_src){&lr_src_local_ops, d,
				 (struct lr_sink){f, fake_deliver, fake_wanted, fake_place_here, fake_drain_wait_ms}};
	snprintf(path, sizeof(path), "%s/index.bin", dir);
	if (!(d->buf = malloc(d->buf_size)) || lr_index_open(&d->index, path, PS, err))
		return -1;
	return d->src.ops->prepare(&d->src, NULL, false, err) || d->src.ops->start(&d->src, err) ? -1 : 0;
}

static void close_source(struct lr_lazyd *d)
{
	lr_pages_close(&d->pages);
	lr_index_close(&d->index);
	free(d->buf);
}

static bool arrived(const struct fake_sink *f, size_t i, uint64_t a, uint64_t b, const char *image)
{
	return i < f->n && f->got[i].rec == 0 && f->got[i].a == a && f->got[i].b == b &&
	       !memcmp(f->got[i].bytes, image + (a - START), b - a);
}

/* Every reason gets the bytes now, any range of the record (within a block, across blocks, all of it). */
static void ranges(const char *dir, const char *image, bool map)
{
	struct lr_lazyd d;
	struct fake_sink f = {0};
	struct lr_error err = {0};
	CHECK(open_source(&d, &f, dir, map, &err) == 0);
	CHECK(fetch(&d.src, 0, START + 5 * PS, START + 6 * PS, LR_GET_FAULT, &err) == LR_SRC_NOW);
	CHECK(fetch(&d.src, 0, START + 3 * PS, START + 9 * PS, LR_GET_DRAIN, &err) == LR_SRC_NOW);
	CHECK(fetch(&d.src, 0, START, START + NPAGES * PS, LR_GET_HERE, &err) == LR_SRC_NOW);
	CHECK(f.n == 3);
	CHECK(arrived(&f, 0, START + 5 * PS, START + 6 * PS, image));
	CHECK(arrived(&f, 1, START + 3 * PS, START + 9 * PS, image));
	CHECK(arrived(&f, 2, START, START + NPAGES * PS, image));
	CHECK(d.src.ops->finished(&d.src, &err) == 0);
	CHECK(f.place_here_calls == 1);
	CHECK(f.n == 3); /* nothing arrives later from local files */
	sink_clear(&f);
	close_source(&d);
}

/* The grouping helper picks what is not in flight, at most max blocks a group, and marks it. */
static void grouping(void)
{
	uint8_t flags[NBLOCKS + 2] = {0, 1, 0, 0, 0, 1};
	uint32_t k = 0, g0, g1;
	CHECK(lr_blocks_next(flags, &k, 6, 2, 7, &g0, &g1) && g0 == 0 && g1 == 1);
	CHECK(lr_blocks_next(flags, &k, 6, 2, 7, &g0, &g1) && g0 == 2 && g1 == 4);
	CHECK(lr_blocks_next(flags, &k, 6, 2, 7, &g0, &g1) && g0 == 4 && g1 == 5);
	CHECK(!lr_blocks_next(flags, &k, 6, 2, 7, &g0, &g1) && k == 6);
	CHECK(flags[0] == 7 && flags[1] == 1 && flags[2] == 7 && flags[3] == 7 && flags[4] == 7 && flags[5] == 1);
	k = 0;
	CHECK(!lr_blocks_next(flags, &k, 6, 2, 7, &g0, &g1)); /* all marked now: nothing is asked twice */
}

/* The helper and the source together, as the drain asks: only the blocks not in flight arrive, each once. */
static void grouped_into_sink(const char *dir, const char *image)
{
	struct lr_lazyd d;
	struct fake_sink f = {0};
	struct lr_error err = {0};
	uint8_t inflight[NBLOCKS] = {0, 1, 0, 0};
	uint32_t k, k1, g0, g1;
	CHECK(open_source(&d, &f, dir, true, &err) == 0);
	lr_blocks_of(&d.index, &d.index.recs[0], START + PS, START + NPAGES * PS - PS, &k, &k1);
	CHECK(k == 0 && k1 == NBLOCKS);
	while (lr_blocks_next(inflight, &k, k1, 2, 1, &g0, &g1))
		CHECK(fetch(&d.src, 0, START + (uint64_t)g0 * BS, START + (uint64_t)g1 * BS, LR_GET_DRAIN, &err) == LR_SRC_NOW);
	CHECK(f.n == 2);
	CHECK(arrived(&f, 0, START, START + BS, image));
	CHECK(arrived(&f, 1, START + 2 * BS, START + 4 * BS, image));
	sink_clear(&f);
	close_source(&d);
}

/* A pages file changed after the index was made: the source refuses its bytes, and nothing arrives. */
static void damaged(const char *dir, char *image, bool map)
{
	struct lr_lazyd d;
	struct fake_sink f = {0};
	struct lr_error err = {0};
	image[2 * BS + 100] ^= 0x5a;
	CHECK(write_file(dir, "pages-1.img", image, NPAGES * PS) == 0);
	CHECK(open_source(&d, &f, dir, map, &err) == 0);
	CHECK(fetch(&d.src, 0, START + 2 * BS, START + 2 * BS + PS, LR_GET_FAULT, &err) == -1);
	CHECK(err.msg[0] != '\0');
	CHECK(fetch(&d.src, 0, START, START + BS, LR_GET_FAULT, &err) == LR_SRC_NOW); /* other blocks are fine */
	CHECK(f.n == 1);
	sink_clear(&f);
	close_source(&d); /* its read lease first: writing a leased file breaks the lease (SIGIO) */
	image[2 * BS + 100] ^= 0x5a;
	CHECK(write_file(dir, "pages-1.img", image, NPAGES * PS) == 0);
}

int main(void)
{
	char dir[] = "/tmp/lr-test-src-XXXXXX";
	char *image = malloc(NPAGES * PS);
	if (!image || !mkdtemp(dir))
		return 1;
	for (size_t i = 0; i < NPAGES * PS; i++)
		image[i] = (char)(i * 7 + i / PS);
	CHECK(write_checkpoint(dir, image) == 0);
	ranges(dir, image, true);
	ranges(dir, image, false);
	grouping();
	grouped_into_sink(dir, image);
	damaged(dir, image, true);
	damaged(dir, image, false);
	char path[256];
	snprintf(path, sizeof(path), "%s/index.bin", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/pages-1.img", dir);
	unlink(path);
	rmdir(dir);
	free(image);
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
