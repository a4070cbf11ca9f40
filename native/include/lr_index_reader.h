/*
 * lr_index_reader.h: loading and validating the lazy index (see lr_index.h).
 * Nothing in the file is trusted until lr_index_open has checked all of it.
 */
#ifndef LR_INDEX_READER_H
#define LR_INDEX_READER_H

#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index.h"

struct lr_index {
	void *map;                             /* the whole file, read only */
	size_t size;
	const struct lr_index_header *hdr;
	const struct lr_index_record *recs;    /* hdr->record_count records */
	const uint64_t *sums;                  /* hdr->checksum_count checksums */
	uint64_t unverified;                   /* records flagged LR_RANGE_UNVERIFIED */
	uint64_t live;                         /* records flagged LR_RANGE_LIVE */
};

/* Map and validate PATH; page_size is this machine's (the index must match). */
int lr_index_open(struct lr_index *idx, const char *path, uint32_t page_size, struct lr_error *err);
void lr_index_close(struct lr_index *idx);

/* Records of one pid: sets *first and returns how many (0 when none). */
size_t lr_index_pid_records(const struct lr_index *idx, uint32_t pid, size_t *first);

/* Number of block_size-aligned windows that [start, start + len) touches. */
uint64_t lr_block_count(uint64_t start, uint64_t len, uint32_t block_size);

static inline uint64_t lr_record_end(const struct lr_index *idx, const struct lr_index_record *r)
{
	return r->start + r->nr_pages * idx->hdr->page_size;
}

#endif /* LR_INDEX_READER_H */
