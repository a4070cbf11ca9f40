/* zpages.c: zstd-compressed PAGES payloads (lr_zpages.h). */
#include <inttypes.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "lr_proto.h"
#include "lr_zpages.h"

bool lr_zero_block(struct lr_zero_sum *z, uint64_t sum, uint64_t len)
{
	static const char zeros[64 << 10];
	if (z->len != len) {
		XXH3_state_t st;
		XXH3_64bits_reset(&st);
		for (uint64_t left = len; left;) {
			uint64_t n = left < sizeof(zeros) ? left : sizeof(zeros);
			XXH3_64bits_update(&st, zeros, n);
			left -= n;
		}
		z->len = len;
		z->sum = XXH3_64bits_digest(&st);
	}
	return sum == z->sum;
}

size_t lr_zpages_compress(ZSTD_CCtx *cx, const void *prefix, size_t prefix_len, const void *data, size_t len,
			  char *out, size_t cap)
{
	if (cap < prefix_len)
		return 0;
	memcpy(out, prefix, prefix_len);
	size_t n = ZSTD_compressCCtx(cx, out + prefix_len, cap - prefix_len, data, len, LR_ZSTD_LEVEL);
	if (ZSTD_isError(n) || n >= len)
		return 0;
	return prefix_len + n;
}

int lr_zpages_inflate(ZSTD_DCtx *dx, const char *payload, uint32_t len, char *out, size_t cap, uint32_t *out_len,
		      struct lr_error *err)
{
	struct lr_pages_hdr h;
	if (len < sizeof(h))
		return lr_error_set(err, 0, "compressed PAGES frame of %u bytes is too short", len);
	memcpy(&h, payload, sizeof(h));
	uint64_t prefix = sizeof(h) + (uint64_t)h.nblocks * 8;
	if (prefix > len || h.data_len > LR_PAGES_MAX_DATA || prefix + h.data_len > cap)
		return lr_error_set(err, 0, "compressed PAGES frame: %u blocks, %" PRIu64 " data bytes in %u bytes",
				    h.nblocks, h.data_len, len);
	unsigned long long size = ZSTD_getFrameContentSize(payload + prefix, len - prefix);
	if (size != h.data_len)
		return lr_error_set(err, 0, "compressed PAGES frame: zstd frame of %llu bytes, expected %" PRIu64,
				    size, h.data_len);
	memcpy(out, payload, prefix);
	size_t n = ZSTD_decompressDCtx(dx, out + prefix, h.data_len, payload + prefix, len - prefix);
	if (ZSTD_isError(n) || n != h.data_len)
		return lr_error_set(err, 0, "compressed PAGES frame does not inflate: %s",
				    ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short");
	*out_len = (uint32_t)(prefix + n);
	return 0;
}
