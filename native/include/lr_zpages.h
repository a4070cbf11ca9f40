/*
 * lr_zpages.h: zstd-compressed PAGES frames (LR_F_ZSTD, lr_proto.h).
 *
 * A compressed PAGES payload is struct lr_pages_hdr, the nblocks checksums, then one zstd frame that
 * inflates to exactly data_len bytes. Checksums cover the uncompressed bytes, so the receiver checks the
 * pages exactly as it checks an uncompressed frame. The server compresses a frame when the client allows
 * it (LR_F_ZSTD on the request) and either asked for compression (LR_F_COMPRESS: a slow link) or the frame
 * holds an all-zero block (zero pages are never sent as bytes), and only when that makes it smaller.
 */
#ifndef LR_ZPAGES_H
#define LR_ZPAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zstd.h>

#include "lr_error.h"

#define LR_ZSTD_LEVEL 1  /* fast: the point is to beat the link, not to win on ratio */

struct lr_zero_sum {     /* the checksum of `len` zero bytes, kept by the caller */
	uint64_t len, sum;
};

/* A block of len bytes with checksum sum is all zeros. */
bool lr_zero_block(struct lr_zero_sum *z, uint64_t sum, uint64_t len);
/* prefix (header and checksums) then zstd(data) into out (cap bytes); its length, or 0 when not smaller
 * than prefix_len + len or it does not fit. */
size_t lr_zpages_compress(ZSTD_CCtx *cx, const void *prefix, size_t prefix_len, const void *data, size_t len,
			  char *out, size_t cap);
/* A LR_F_ZSTD payload inflated into out (cap bytes): the header and checksums copied, the data inflated
 * and checked to be exactly data_len bytes; *out_len the uncompressed payload's length. */
int lr_zpages_inflate(ZSTD_DCtx *dx, const char *payload, uint32_t len, char *out, size_t cap, uint32_t *out_len,
		      struct lr_error *err);

#endif /* LR_ZPAGES_H */
