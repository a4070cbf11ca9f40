/* blocks.c: grouping a record's blocks into requests (see blocks.h); a leaf. */
#include "blocks.h"

void lr_blocks_of(const struct lr_index *idx, const struct lr_index_record *x, uint64_t a, uint64_t b, uint32_t *k0,
		  uint32_t *k1)
{
	const uint64_t bs = idx->hdr->block_size, base = x->start / bs * bs;
	*k0 = (uint32_t)((a - base) / bs);
	*k1 = (uint32_t)((b - 1 - base) / bs) + 1;
}

bool lr_blocks_next(uint8_t *flags, uint32_t *k, uint32_t k1, uint32_t max, uint8_t mark, uint32_t *g0, uint32_t *g1)
{
	while (*k < k1 && flags[*k]) /* asked for already */
		(*k)++;
	if (*k >= k1)
		return false;
	*g0 = *k;
	while (*k < k1 && *k - *g0 < max && !flags[*k])
		flags[(*k)++] = mark;
	*g1 = *k;
	return true;
}
