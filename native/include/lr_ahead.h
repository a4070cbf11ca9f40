/*
 * lr_ahead.h: a thread that verifies page bytes ahead of the drain.
 *
 * Placing a chunk costs three passes over its bytes: mapping the page cache
 * pages (MADV_POPULATE_READ), checking their XXH3 checksums, and UFFDIO_COPY.
 * The first two do not depend on the restored tree, so one thread does them
 * for the lazy records in index order, at most `lead` bytes ahead of where the
 * drain has got to, and marks each verified checksum block (lr_pages_mark).
 * The event loop then only copies; a block the thread has not reached yet is
 * verified by the loop itself as before. Only mapped (leased) files are done
 * here: their bytes cannot change between the check and the copy.
 */
#ifndef LR_AHEAD_H
#define LR_AHEAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"
#include "lr_pages.h"

struct lr_ahead {
	const struct lr_index *idx;
	struct lr_pages *pages;      /* lr_pages_prepare'd: its tables no longer change */
	uint64_t lead_blocks;        /* how far ahead of the drain, in checksum blocks */
	_Atomic uint64_t reached;    /* checksum index the drain has got to */
	_Atomic uint64_t wake_at;    /* the sleeping thread wants a signal once reached gets here (UINT64_MAX: awake) */
	_Atomic bool stop;
	pthread_mutex_t mu;          /* with cv: the thread sleeps while far enough ahead */
	pthread_cond_t cv;
	pthread_t thread;
	bool running;
};

/* Start the thread (signals stay with the other threads). lead: bytes ahead of the drain. */
int lr_ahead_start(struct lr_ahead *a, const struct lr_index *idx, struct lr_pages *pages, uint64_t lead,
		   struct lr_error *err);

/* The drain has got to checksum index `sum`: let the thread go on from there. */
void lr_ahead_reached(struct lr_ahead *a, uint64_t sum);

/* Stop and join the thread (no-op when it was not started). */
void lr_ahead_stop(struct lr_ahead *a);

#endif /* LR_AHEAD_H */
