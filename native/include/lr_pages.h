/*
 * lr_pages.h: page bytes from the checkpoint's pages-N.img files, verified.
 *
 * Bytes are read into the caller's buffer (never placed straight from a shared
 * mapping of the file, so a file changed under us cannot slip past the check)
 * and every checksum block they touch is verified before they are returned.
 */
#ifndef LR_PAGES_H
#define LR_PAGES_H

#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"

struct lr_pages {
	int dirfd;           /* the images directory */
	const char *dir;     /* its path, for messages */
	int *fds;            /* by pages_id; -1 = not opened yet */
	uint64_t *sizes;     /* file sizes, for bounds checks */
	uint32_t nfds;
};

int lr_pages_open(struct lr_pages *p, const char *dir, struct lr_error *err);
void lr_pages_close(struct lr_pages *p);

/*
 * Read the bytes of record `rec` covering checkpoint addresses [src, src + len)
 * (within the record), expanded to whole checksum blocks, into buf (at least
 * len + 2 * block_size bytes), verify them, and set *at to where src's byte is
 * in buf.
 */
int lr_pages_read(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec, uint64_t src,
		  uint64_t len, void *buf, size_t buf_size, size_t *at, struct lr_error *err);

#endif /* LR_PAGES_H */
