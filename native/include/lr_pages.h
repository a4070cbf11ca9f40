/*
 * lr_pages.h: page bytes from the checkpoint's pages-N.img files, verified.
 *
 * Every checksum block that bytes come from is verified before the bytes are
 * handed out. Two ways to get them:
 * - mapped (default): the file is mapped shared, read-only, and the caller
 *   copies straight from the page cache (one copy fewer). This is only done
 *   under a read lease (F_SETLEASE F_RDLCK): taking it fails while anyone has
 *   the file open for writing, and anyone opening it for writing later is held
 *   off while we get SIGIO, upon which the daemon stops (lr_pages_lease_broken).
 *   So verified bytes cannot change under us before they are copied.
 * - read: pread into the caller's buffer, verified there. Used when no lease
 *   can be had, or when mapping is turned off.
 */
#ifndef LR_PAGES_H
#define LR_PAGES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"

struct lr_pages {
	int dirfd;           /* the images directory */
	const char *dir;     /* its path, for messages */
	int *fds;            /* by pages_id; -1 = not opened yet */
	uint64_t *sizes;     /* file sizes, for bounds checks */
	const char **maps;   /* by pages_id: the mapped file under a read lease, or NULL (read mode) */
	uint32_t nfds;
	bool map;            /* try the mapped way */
	bool prepared;       /* lr_pages_prepare done: every file is open, the tables no longer change */
	_Atomic uint8_t *verified; /* by checksum index: 1 = that block's mapped bytes passed their check */
	uint64_t nverified;
};

int lr_pages_open(struct lr_pages *p, const char *dir, bool map, struct lr_error *err);
void lr_pages_close(struct lr_pages *p);

/*
 * Open (and map) every pages file the index refers to and set up the
 * verified-block flags. Afterwards the file tables are fixed, so other threads
 * may read them (lr_ahead).
 */
int lr_pages_prepare(struct lr_pages *p, const struct lr_index *idx, struct lr_error *err);

/*
 * Verify blocks [k0, k1) of record `rec` in its mapped file, marking each good
 * one. For the verify-ahead thread: a bad or unmapped block is left unmarked
 * (the event loop checks it again and reports it). Thread safe after prepare.
 */
void lr_pages_check_ahead(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec,
			  uint64_t k0, uint64_t k1);

/*
 * Read the bytes of record `rec` covering checkpoint addresses [src, src + len)
 * (within the record), expanded to whole checksum blocks, into buf (at least
 * len + 2 * block_size bytes), verify them, and set *at to where src's byte is
 * in buf.
 */
int lr_pages_read(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec, uint64_t src,
		  uint64_t len, void *buf, size_t buf_size, size_t *at, struct lr_error *err);

/*
 * Verified bytes of record `rec` at checkpoint addresses [src, src + len):
 * *data points into the file's mapping when it has one, else into buf (read
 * as lr_pages_read does).
 */
int lr_pages_get(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec, uint64_t src,
		 uint64_t len, void *buf, size_t buf_size, const char **data, struct lr_error *err);

/* Set from the SIGIO handler: someone wants to write a leased pages file. */
void lr_pages_lease_broken(int sig);
bool lr_pages_lease_was_broken(void);

#endif /* LR_PAGES_H */
