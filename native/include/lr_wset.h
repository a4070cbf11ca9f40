/*
 * lr_wset.h: a checkpoint's working set: the pages its lazy restores faulted on first, in fault order, as
 * checkpoint addresses (the lazy index's address space, so it applies whatever the restored layout).
 *
 * lr-lazyd records one per restore (--profile); the checkpoint keeps their merge in
 * lazyrestore/workingset (written by lr-lazyd for local images, by lr-pageserver when a remote restore
 * is DONE); a later restore fetches and places those pages before the tree asks (--prefetch).
 *
 * File (little-endian): struct lr_wset_hdr, then `count` struct lr_wset_entry, ordered by t_us.
 * A working set is only ever a hint: every byte placed is still checked against the index; a damaged,
 * stale or foreign file is refused as a whole (lr_wset_parse) and the restore goes on without it.
 * lazyrestore/workingset.py reads the same format.
 */
#ifndef LR_WSET_H
#define LR_WSET_H

#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"

#define LR_WSET_MAGIC "LRWSET1"
#define LR_WSET_VERSION 2u
#define LR_WSET_NAME "lazyrestore/workingset"  /* beside the checkpoint, relative to its images dir */
#define LR_WSET_MAX_ENTRIES (1u << 18)         /* pages a file may hold (4 MiB of entries) */
#define LR_WSET_KEEP_RESTORES 4u               /* a page none of the last 4 restores faulted on is dropped */

struct lr_wset_hdr {
	char magic[8];            /* LR_WSET_MAGIC, NUL-padded */
	uint32_t version;         /* LR_WSET_VERSION */
	uint32_t page_size;
	uint8_t checkpoint_id[16];
	uint64_t count;           /* entries that follow */
	uint64_t faults_seen;     /* faults on lazy pages in the latest restore (may exceed what was recorded) */
	uint32_t max_faults;      /* the bounds the latest recording had */
	uint32_t max_ms;
	uint32_t restores;        /* restores merged into this working set */
	uint32_t reserved;        /* 0 */
};

struct lr_wset_entry {
	uint32_t t_us;            /* when the page was first faulted on, microseconds after lr-lazyd started */
	uint32_t record;          /* index record holding the page */
	uint64_t addr;            /* the page's checkpoint address */
	uint32_t hits;            /* restores that faulted on it */
	uint32_t last;            /* the latest of them (1 .. restores) */
};

_Static_assert(sizeof(struct lr_wset_hdr) == 64, "lr_wset_hdr is 64 bytes");
_Static_assert(sizeof(struct lr_wset_entry) == 24, "lr_wset_entry is 24 bytes");

struct lr_wset {
	struct lr_wset_hdr hdr;   /* hdr.count is kept equal to n */
	struct lr_wset_entry *v;
	size_t n, cap;
};

/* An empty working set of the checkpoint idx describes. */
void lr_wset_init(struct lr_wset *w, const struct lr_index *idx);
/* Append an entry (no checks: the recorder's addresses come from the index). */
int lr_wset_push(struct lr_wset *w, const struct lr_wset_entry *e, struct lr_error *err);
/*
 * Parse len bytes of a working-set file named `where` into w, checking all of it: magic, version, sizes,
 * order, and (with idx) that it is this checkpoint's and every entry a page-aligned lazy page of one of its
 * records. On failure w is left empty and err says what was wrong.
 */
int lr_wset_parse(struct lr_wset *w, const void *data, size_t len, const struct lr_index *idx, const char *where,
		  struct lr_error *err);
/* lr_wset_parse of the file at path; errnum ENOENT when there is none. */
int lr_wset_load(struct lr_wset *w, const char *path, const struct lr_index *idx, struct lr_error *err);
/*
 * Merge the working set of newer restores `add` into `into` (of the same checkpoint; an empty `into` is
 * fine): pages of both keep add's time, their hits add up; pages only `into` has stay while one of the last
 * LR_WSET_KEEP_RESTORES restores faulted on them. Ordered by time, at most LR_WSET_MAX_ENTRIES.
 */
int lr_wset_merge(struct lr_wset *into, const struct lr_wset *add, struct lr_error *err);
/* Order the entries by time (then address), as a file holds them. */
void lr_wset_sort(struct lr_wset *w);
/* The file's bytes (header and entries) in a new buffer. */
int lr_wset_encode(const struct lr_wset *w, char **out, size_t *len, struct lr_error *err);
/* Write to path through path.part, fsync and rename: readers see the old file or the new one. */
int lr_wset_write(const struct lr_wset *w, const char *path, struct lr_error *err);
void lr_wset_fini(struct lr_wset *w);

#endif /* LR_WSET_H */
