/*
 * test_wset.c: unit tests for native/common/wset.c: merging working sets across restores, and parsing
 * (every damaged file refused, a good one read back as written).
 *
 * Prints "N passed, M failed"; the exit status is non-zero when anything failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lr_wset.h"

/* One restore's working set: pages addrs[i] of record 0 faulted at times 10 * (i + 1) us. */
static void one_restore(struct lr_wset *w, const uint64_t *addrs, size_t n)
{
	struct lr_error err;
	lr_wset_init(w, NULL);
	w->hdr.restores = 1;
	w->hdr.page_size = 4096;
	for (size_t i = 0; i < n; i++) {
		struct lr_wset_entry e = {(uint32_t)(10 * (i + 1)), 0, addrs[i], 1, 1};
		CHECK(!lr_wset_push(w, &e, &err));
	}
}

static const struct lr_wset_entry *find(const struct lr_wset *w, uint64_t addr)
{
	for (size_t i = 0; i < w->n; i++)
		if (w->v[i].addr == addr)
			return &w->v[i];
	return NULL;
}

static void merge_one(struct lr_wset *into, const uint64_t *addrs, size_t n)
{
	struct lr_wset add;
	struct lr_error err;
	one_restore(&add, addrs, n);
	CHECK(!lr_wset_merge(into, &add, &err));
	lr_wset_fini(&add);
}

static void test_merge(void)
{
	struct lr_wset w;
	const uint64_t first[] = {0x3000, 0x1000, 0x2000}, second[] = {0x2000, 0x4000, 0x4000};
	const uint64_t other[] = {0x9000};

	lr_wset_init(&w, NULL);
	merge_one(&w, first, 3);
	CHECK(w.n == 3 && w.hdr.restores == 1 && w.hdr.count == 3);
	CHECK(w.v[0].addr == 0x3000 && w.v[1].addr == 0x1000 && w.v[2].addr == 0x2000); /* fault order kept */

	merge_one(&w, second, 3); /* 0x4000 twice in one restore (two tasks): one page, one hit */
	CHECK(w.n == 4 && w.hdr.restores == 2);
	CHECK(find(&w, 0x2000) && find(&w, 0x2000)->hits == 2 && find(&w, 0x2000)->last == 2);
	CHECK(find(&w, 0x2000)->t_us == 10); /* the newest restore's time */
	CHECK(find(&w, 0x4000) && find(&w, 0x4000)->hits == 1 && find(&w, 0x4000)->last == 2);
	CHECK(find(&w, 0x1000) && find(&w, 0x1000)->hits == 1 && find(&w, 0x1000)->last == 1);
	for (size_t i = 1; i < w.n; i++)
		CHECK(w.v[i - 1].t_us <= w.v[i].t_us);

	/* Pages no restore among the last LR_WSET_KEEP_RESTORES faulted on are dropped. */
	for (unsigned r = 0; r < LR_WSET_KEEP_RESTORES - 2; r++)
		merge_one(&w, other, 1);
	CHECK(find(&w, 0x1000) != NULL); /* last 1 of 4 restores: kept */
	merge_one(&w, other, 1);
	CHECK(find(&w, 0x1000) == NULL && find(&w, 0x3000) == NULL); /* last 1 of 5: dropped */
	CHECK(find(&w, 0x2000) != NULL && find(&w, 0x9000)->hits == LR_WSET_KEEP_RESTORES - 1);
	lr_wset_fini(&w);
}

static void test_cap(void)
{
	struct lr_wset w, big;
	struct lr_error err;
	lr_wset_init(&w, NULL);
	lr_wset_init(&big, NULL);
	big.hdr.restores = 1;
	int pushed = 0;
	for (uint64_t i = 0; i < LR_WSET_MAX_ENTRIES + 10ULL; i++) {
		struct lr_wset_entry e = {(uint32_t)i, 0, i * 4096, 1, 1};
		pushed |= lr_wset_push(&big, &e, &err);
	}
	CHECK(pushed == 0);
	CHECK(!lr_wset_merge(&w, &big, &err));
	CHECK(w.n == LR_WSET_MAX_ENTRIES && w.v[w.n - 1].t_us == LR_WSET_MAX_ENTRIES - 1); /* the earliest kept */
	lr_wset_fini(&w);
	lr_wset_fini(&big);
}

/* bytes, with the uint32 at offset `at` set to v */
static void put32(char *bytes, size_t at, uint32_t v)
{
	memcpy(bytes + at, &v, sizeof(v));
}

static void test_parse(void)
{
	struct lr_wset w, back;
	struct lr_error err;
	char *bytes;
	size_t len;
	const uint64_t addrs[] = {0x1000, 0x5000};
	const size_t entry0 = sizeof(struct lr_wset_hdr), entry1 = entry0 + sizeof(struct lr_wset_entry);

	one_restore(&w, addrs, 2);
	CHECK(!lr_wset_encode(&w, &bytes, &len, &err));
	CHECK(len == 64 + 2 * 24);
	CHECK(!lr_wset_parse(&back, bytes, len, NULL, "good", &err) && back.n == 2 && back.v[1].addr == 0x5000);
	lr_wset_fini(&back);

	struct {
		const char *what;
		size_t at;        /* uint32 to change (or SIZE_MAX: cut the file to `value` bytes) */
		uint32_t value;
		const char *said;
	} bad[] = {
		{"short", SIZE_MAX, 10, "shorter than its"},
		{"truncated", SIZE_MAX, 64 + 24 + 3, "bytes for 2 entries"},
		{"magic", 0, 0x4b4b4b4b, "not a version 2"},
		{"version", 8, 1, "not a version 2"},
		{"reserved", 60, 7, "damaged header"},
		{"no restores", 56, 0, "damaged header"},
		{"out of order", entry1, 1, "out of order"},
		{"no hits", entry0 + 16, 0, "hits 0"},
		{"last beyond restores", entry0 + 20, 2, "last 2 of 1"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *copy = malloc(len);
		memcpy(copy, bytes, len);
		size_t n = len;
		if (bad[i].at == SIZE_MAX)
			n = bad[i].value;
		else
			put32(copy, bad[i].at, bad[i].value);
		int rc = lr_wset_parse(&back, copy, n, NULL, bad[i].what, &err);
		CHECK(rc == -1 && back.n == 0 && strstr(err.msg, bad[i].said));
		if (rc != -1 || !strstr(err.msg, bad[i].said))
			printf("  case %s: %s\n", bad[i].what, rc ? err.msg : "accepted");
		lr_wset_fini(&back);
		free(copy);
	}
	free(bytes);
	lr_wset_fini(&w);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	test_merge();
	test_cap();
	test_parse();
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
