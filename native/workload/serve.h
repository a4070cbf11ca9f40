/*
 * serve.h: lr-workload --serve N: a key-value table over the main region and a server answering requests over
 * it, so that the time a restored workload takes to its first correct answer can be measured.
 *
 * Where: the abstract unix socket "@lr-workload-kv-N" of the network namespace the workload runs in (restored
 * into another one, it answers there). Not TCP: CRIU 4.1.1 cannot checkpoint any INET socket on Linux >= 6.16,
 * whose getsockopt(SO_PASSCRED/SO_PASSSEC) on one fails with EOPNOTSUPP (CRIU issues #2705, #2718; the fix came
 * after 4.1.1). Unix sockets keep those options and CRIU restores a listening one as it was.
 *
 * Table: nkeys records of KV_RECORD bytes, KV_PER_PAGE to a page, filling the region. Key k lives in slot
 * (k * stride) mod nkeys; stride is odd, coprime with nkeys and near nkeys / phi, so consecutive keys land
 * on pages far apart: a request for many consecutive keys touches as many scattered pages, the same ones
 * in every run. A record is self-describing: word 0 is its key, words 1..7 the xorshift stream started at
 * seed ^ (k * KV_GOLDEN) ^ KV_SALT (lr_xorshift, writers.h). The client computes any answer from key
 * numbers alone, so one wrong byte read from memory shows.
 *
 * Protocol: one request per connection, one line each way, lines end in '\n' (the client closes):
 *   GET <first_key> <count>\n   ->   OK <count> <checksum: 16 hex digits>\n
 *   anything else / a bad range ->   ERR <reason>\n
 * checksum: h = KV_HASH_INIT; for each key first .. first + count - 1, for each of its 8 words w:
 * h = (h ^ w) * KV_HASH_PRIME (mod 2^64). count is 1 .. KV_MAX_COUNT, first + count <= nkeys.
 * On start the workload prints "kv listening unix=@lr-workload-kv-N keys=NKEYS stride=STRIDE".
 */
#ifndef LR_SERVE_H
#define LR_SERVE_H

#include <stddef.h>
#include <stdint.h>

#define KV_RECORD 64u                  /* bytes per record */
#define KV_WORDS (KV_RECORD / 8u)      /* 64-bit words per record */
#define KV_GOLDEN 0x9E3779B97F4A7C15ULL
#define KV_SALT 0x4B565F5245434F52ULL  /* "KV_RECOR": keeps records apart from lr-workload's other pages */
#define KV_HASH_INIT 0xCBF29CE484222325ULL
#define KV_HASH_PRIME 0x100000001B3ULL
#define KV_MAX_COUNT (1u << 20)        /* keys per request: bounds the time one request holds the server */
#define KV_NAME_PREFIX "lr-workload-kv-" /* the abstract socket's name: this, then N */

/* Where each key lives. */
struct kv_layout {
	uint64_t nkeys;   /* records in the table */
	uint64_t stride;  /* slot = key * stride mod nkeys */
	uint64_t inverse; /* key = slot * inverse mod nkeys */
	uint64_t seed;
	size_t per_page;  /* records per page */
};

/* Reads one record as the process sees it now: 0, or -1 if its page is not mapped. */
struct kv_source {
	int (*read)(void *ctx, uint64_t slot, uint64_t rec[KV_WORDS]);
	void *ctx;
};

/* The layout of a table filling npages pages of page_size bytes; -1 (errno EINVAL) if it is empty. */
int kv_layout_init(struct kv_layout *t, size_t npages, size_t page_size, uint64_t seed);
/* The contents of page `page` of the table: per_page records, w holds per_page * KV_WORDS words. */
void kv_page_generate(const struct kv_layout *t, size_t page, uint64_t *w);
/*
 * Listen on the abstract unix socket KV_NAME_PREFIX n, print the "kv listening" line and answer requests from
 * a thread of its own, reading records through src. t must outlive the process. 0, or -1 with the failed call
 * reported on stderr.
 */
int kv_serve_start(unsigned long n, const struct kv_layout *t, struct kv_source src);

#endif /* LR_SERVE_H */
