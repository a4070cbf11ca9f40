/*
 * blocks.h: a record's checksum blocks grouped into requests, the one loop behind every page source that asks
 * for blocks (CRIU's page server, lr-pageserver, the working set fetched ahead).
 *
 * Blocks are numbered from the block holding the record's first byte (index.h); flags has one byte per block of
 * the record (a source's in-flight table from the record's first_checksum on). A group is a run of blocks whose
 * flag is 0, at most max long; its flags are set to mark as it is taken, so a block is never asked for twice.
 */
#ifndef LR_BLOCKS_H
#define LR_BLOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include "lr_index_reader.h"

/* The blocks of record x covering checkpoint addresses [a, b) (a < b): [*k0, *k1). */
void lr_blocks_of(const struct lr_index *idx, const struct lr_index_record *x, uint64_t a, uint64_t b, uint32_t *k0,
		  uint32_t *k1);
/* The next group at or after *k and before k1: [*g0, *g1), its flags set to mark, *k past it; false when none. */
bool lr_blocks_next(uint8_t *flags, uint32_t *k, uint32_t k1, uint32_t max, uint8_t mark, uint32_t *g0, uint32_t *g1);

#endif /* LR_BLOCKS_H */
