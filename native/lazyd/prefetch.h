/*
 * prefetch.h: planning to place a checkpoint's working set (lr_wset.h) before the tree asks for it.
 *
 * The working set's pages become windows (the --fault-around window of each, clipped to its record,
 * neighbours in time and address joined), in the order they were first faulted on. For local images the
 * bytes are read from the pages files; from a page server they are fetched ahead, with pipelined
 * GET_PAGES while the checkpoint is fetched (before CRIU starts), verified and written into the local
 * pages files, and their blocks marked local so faults on them never go to the network.
 *
 * The windows are placed into every task that still needs them as soon as its userfaultfd arrives
 * (before the tree runs; pages CRIU has not registered yet simply stay pending) and again at "restore
 * finished"; then faults and the drain take over. A working set that is missing, damaged, stale (of
 * another checkpoint) or out of the index is not used, with a warning; every byte placed is checked
 * against the index whatever the working set says.
 */
#ifndef LR_PREFETCH_H
#define LR_PREFETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"
#include "lr_proto.h"
#include "lr_wset.h"

struct lr_window {
	uint32_t record;
	uint32_t order;            /* first fault's rank in the working set */
	uint64_t a, b;             /* checkpoint addresses [a, b) of the record */
};

struct lr_prefetch {
	struct lr_wset used;       /* the working set the windows come from */
	struct lr_window *v;
	size_t n;
	uint8_t *local;            /* remote mode: per checksum index, 1 when the block is in the local pages file */
	uint64_t planned_bytes;    /* bytes the windows cover */
	struct lr_page_req *req;   /* remote mode: GET_PAGES for the windows' blocks, in working-set order */
	size_t nreq, capreq, next; /* ... the next one to send */
	size_t got;                /* replies (or failures) of them so far */
	struct lr_window *byaddr;  /* remote mode: the windows by record and address (finding a frame's windows) */
	struct lr_held {           /* remote mode: a block arrived after restore finished, placed beyond its windows */
		uint32_t record;   /* once the whole working set is in (src_prefetch.c: settle) */
		uint64_t a, len;
		char *bytes;
	} *held;
	size_t nheld, capheld;
	int *wfds;                 /* remote mode: the pages files, open for writing (by pages id; -1 none) */
	uint32_t nwfds;
	uint64_t start_ns;         /* the first request sent */
	uint64_t fetched_bytes;    /* remote mode: bytes fetched ahead */
	uint64_t wire_bytes;       /* what they took on the link (zstd frames are smaller) */
	uint64_t fetch_ns;         /* from the first request to the latest arrival */
	uint32_t restores;         /* restores merged into the working set used */
	char warning[600];         /* why a working set was not used; "" otherwise */
};

/* The working set --prefetch names (NULL for "off"); "auto" is images_dir's, *missing_ok then. */
const char *lr_prefetch_path(const char *mode, const char *images_dir, char *buf, size_t size, bool *missing_ok);
/*
 * Plan from the working set file at path, checked against idx. A missing file (when `missing_ok`) is no
 * plan and no warning; a bad one is a warning and no plan. window: bytes around each page (power of two),
 * join: largest joined window. -1 only when out of memory.
 */
int lr_prefetch_plan(struct lr_prefetch *p, const char *path, bool missing_ok, const struct lr_index *idx,
		     uint64_t window, uint64_t join, bool remote, struct lr_error *err);
/* Every block of record rec covering [a, b) is in the local pages files. */
bool lr_prefetch_is_local(const struct lr_prefetch *p, const struct lr_index *idx, uint32_t rec, uint64_t a,
			  uint64_t b);
void lr_prefetch_fini(struct lr_prefetch *p);
/*
 * What this restore stores as its working set: the faults it recorded, and, when it placed a working set
 * ahead, that one's pages too (they were not faulted on because they were there: without them a page would
 * drop out of the stored working set after LR_WSET_KEEP_RESTORES restores that prefetched it).
 */
int lr_prefetch_carry(const struct lr_prefetch *p, bool placed, const struct lr_wset *faults, struct lr_wset *out,
		      struct lr_error *err);

#endif /* LR_PREFETCH_H */
