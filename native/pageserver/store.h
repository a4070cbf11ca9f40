/*
 * store.h: where lr-pageserver gets the pages of a PAGES frame.
 *
 * One interface, an ops table, and a store of each kind behind it: the image store (store_images.c: the
 * pages-N.img files; checksums from the index, bytes sent with sendfile) and the live store (store_live.c,
 * --live: the stopped source tree's memory, read and checksummed per frame). The catalog opens the checkpoint's
 * store once at start (ps_store_open, store.c), which serves each record from the store its flags name
 * (LR_RANGE_LIVE records from the live one, all others from the image one). The request and bulk code only ever
 * hold that one store and call its table: nothing outside the stores knows which kind served a frame but by
 * the name the store gives (ps_pages.store, for errors).
 */
#ifndef LR_STORE_H
#define LR_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lr_error.h"
#include "lr_index_reader.h"

/*
 * One PAGES frame's blocks: [first, first + nblocks) of record rec, the bytes [a, b). The store allocates the
 * frame: `head` bytes for the caller's headers, then the nblocks checksums (u64, filled by the store), then,
 * when it read them (`read`), the b - a page bytes; otherwise the bytes are [off, off + b - a) of fd, to be
 * sent with sendfile. The frame is the caller's once get returns 0.
 */
struct ps_pages {
	const struct lr_index_record *rec;
	uint32_t first, nblocks;
	uint64_t a, b;
	size_t head;
	char *frame;                /* out */
	bool read;                  /* out: the bytes follow the checksums in frame */
	int fd;                     /* out, when !read */
	uint64_t off;
	const char *store;          /* out: the name of the kind of store that read it, or failed to */
};

struct ps_store;

struct ps_store_ops {
	const char *name;
	/* The frame of p, or -1 (ENOMEM: out of memory; ESRCH: the source tree is gone; else it could not be read). */
	int (*get)(struct ps_store *st, struct ps_pages *p, struct lr_error *err);
	void (*close)(struct ps_store *st);
};

struct ps_store {               /* the first member of each kind's own struct */
	const struct ps_store_ops *ops;
};

/* The checkpoint's store: the image store, and with pidmap (else NULL) the live store too. */
struct ps_store *ps_store_open(int dirfd, const char *dir, const struct lr_index *idx, const char *pidmap,
			       struct lr_error *err);

/* The pages files of every record that is not live, opened and checked against the index (dirfd: the images). */
struct ps_store *ps_store_images_open(int dirfd, const char *dir, const struct lr_index *idx, struct lr_error *err);

/* The live tree of pidmap (livepids.c's format) for the index's LR_RANGE_LIVE records: every task opened. */
struct ps_store *ps_store_live_open(const char *pidmap, const struct lr_index *idx, struct lr_error *err);

/* livepids.c: the pid map, "VPID HOSTPID\n" per task (VPID as in the index's records). */
struct ps_live_pid {
	uint32_t vpid;
	pid_t pid;
};

/* Parse path strictly (sorted by vpid into *out, malloc'ed); every LR_RANGE_LIVE record's pid must be there. */
int ps_live_pids_load(const char *path, const struct lr_index *idx, struct ps_live_pid **out, size_t *n,
		      struct lr_error *err);

#endif /* LR_STORE_H */
