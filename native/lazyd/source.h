/*
 * source.h: where lr-lazyd's page bytes come from. One interface, one implementation per kind, chosen once at
 * start by lr_src_choose (source.c) from the options:
 *
 *   src_local.c     the checkpoint's pages files (the default)
 *   src_lrps.c      an lr-pageserver (--source; remote.h), with
 *   src_prefetch.c  the working set fetched ahead as a layer over it: blocks kept in the local pages files
 *   src_criu.c      CRIU's own page server (--criu-page-server; criu_ps.h)
 *
 * The rest of the daemon calls the table, never a kind by name. A source answers a range now (the bytes,
 * verified) or later: then it asked for them, and when they arrive it hands them to its sink (struct lr_sink,
 * place.c's in the daemon, a fake one in a test), which places them into every task that still needs them.
 * Fetching and placing never call each other by name (as CRIU's page_read and its io_complete callback).
 *
 * Every source checks what it delivers (the index's checksums; CRIU's page server without them: see criu_ps.h).
 * Calls that may fail return -1 with err; only main prints.
 */
#ifndef LR_SOURCE_H
#define LR_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

#include "lr_error.h"
#include "uffd.h"

struct lr_lazyd;
struct lr_stats;
struct lr_wset;

/* Why a range is asked for. */
enum lr_get {
	LR_GET_FAULT, /* a fault waits on it: ask first, and tell a stream to move there */
	LR_GET_DRAIN, /* the background drain */
	LR_GET_HERE,  /* the working set before the tree asks: only bytes already here; nothing is asked for */
};

/* What get answers; above the lr_uffd_rc values, so lr_place (place.c) returns either. */
enum lr_src_rc {
	LR_SRC_NOW = 0,               /* *data holds the verified bytes of [a, b), valid until the next get */
	LR_SRC_WAIT = LR_UFFD_GONE + 1, /* on their way (or asked for once the source is back): the sink gets them */
	LR_SRC_ASKED,                 /* as LR_SRC_WAIT, and a request for some of them went out just now */
};

/* Where bytes that arrive later go. Each call gets ctx. */
struct lr_sink {
	void *ctx;
	/* The verified bytes of record rec at checkpoint addresses [a, b): into every task that still needs them;
	 * *placed: the bytes placed. */
	int (*deliver)(void *ctx, uint32_t rec, uint64_t a, uint64_t b, const char *data, uint64_t *placed,
		       struct lr_error *err);
	/* Some task still needs a page of record rec within [a, b). */
	bool (*wanted)(void *ctx, uint32_t rec, uint64_t a, uint64_t b);
	/* The working set's windows whose bytes are here (get LR_GET_HERE): placed now. */
	int (*place_here)(void *ctx, struct lr_error *err);
	/* Milliseconds until the drain may place more (0: now): a stream the source reads pauses meanwhile. */
	int (*drain_wait_ms)(void *ctx);
};

struct lr_src_ops;

struct lr_src {
	const struct lr_src_ops *ops;
	struct lr_lazyd *d;           /* the daemon: index, pages files, buffer, stats, event loop, options */
	struct lr_sink sink;
};

/*
 * One kind of source. NULL members: nothing to do (or, for get, never NULL). Flags describe the kind for the
 * checks and policies that differ by it.
 */
struct lr_src_ops {
	const char *name;
	bool unverified_ok;           /* serves an index without checksums (pages checked by TCP only) */
	bool live_ok;                 /* serves a live checkpoint (pages read from a stopped tree) */
	bool yield_to_faults;         /* a stream the drain holds back for a burst of faults (drain.c) */
	/* Before the index is opened (the checkpoint fetched into images_dir, for lr-pageserver). */
	int (*open)(struct lr_src *s, struct lr_error *err);
	/* The index is open: plan the working set at wset (NULL: none; missing_ok: a missing file is no plan), open
	 * the pages files the source reads. */
	int (*prepare)(struct lr_src *s, const char *wset, bool missing_ok, struct lr_error *err);
	/* Before listening: this restore may run its tree (lr-pageserver: COMMIT, commit.c). */
	int (*commit)(struct lr_src *s, struct lr_error *err);
	/* Failing before the tree could run (why: the error): tell the source it never will (ABORT). Best effort. */
	void (*abort_unrun)(struct lr_src *s, const char *why);
	/* In the event loop, listening (after the guardian's fork): connect, open leases, start threads. */
	int (*start)(struct lr_src *s, struct lr_error *err);
	/* The bytes of record rec at checkpoint addresses [a, b): an lr_src_rc, or -1. */
	int (*get)(struct lr_src *s, uint32_t rec, uint64_t a, uint64_t b, enum lr_get why, const char **data,
		   struct lr_error *err);
	/* Sources that answer later: the most pages the drain asks for at once; NULL: get answers now, and the
	 * drain places runs itself. */
	uint64_t (*sweep_pages)(const struct lr_src *s);
	/* The drain's turn: 1 when the source used it (a paused stream resumed), 0 when the drain goes on. */
	int (*resume)(struct lr_src *s, struct lr_error *err);
	/* Enough is in flight (or the source is not ready for the drain yet): the drain asks for nothing now. */
	bool (*window_full)(const struct lr_src *s);
	/* CRIU sent "restore finished". */
	int (*finished)(struct lr_src *s, struct lr_error *err);
	/* Every turn of the event loop: buffered frames, reconnection, requests sent ahead. */
	int (*tick)(struct lr_src *s, struct lr_error *err);
	/* Milliseconds until tick has something to do (-1: nothing); *ready: it has now (frames are buffered). */
	int (*wait_ms)(const struct lr_src *s, bool *ready);
	/* Every page placed (w: this restore's working set, or NULL): 1 when the source keeps the working set (the
	 * caller does not store it beside the checkpoint), 0 otherwise. Logs its own outcome; never fails. */
	int (*done)(struct lr_src *s, const struct lr_wset *w);
	/* Its counters into the stats line. */
	void (*stats)(const struct lr_src *s, struct lr_stats *st);
	void (*close)(struct lr_src *s);
};

extern const struct lr_src_ops lr_src_local_ops, lr_src_lrps_ops, lr_src_prefetch_ops, lr_src_criu_ops;

/* source.c: the kind the options ask for, its sink set, and open it. */
int lr_src_choose(struct lr_lazyd *d, struct lr_sink sink, struct lr_error *err);

#endif /* LR_SOURCE_H */
