/* index.c: mapping and validating the lazy index written by lazyrestore/lazyindex.py. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "lr_cleanup.h"
#include "lr_index_reader.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the index is little-endian");

static int is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

uint64_t lr_block_count(uint64_t start, uint64_t len, uint32_t block_size)
{
	if (!len)
		return 0;
	return (start + len - 1) / block_size - start / block_size + 1;
}

static int check_header(const struct lr_index *idx, const char *path, uint32_t page_size, struct lr_error *err)
{
	const struct lr_index_header *h = idx->hdr;
	uint64_t body, want;

	if (memcmp(h->magic, LR_INDEX_MAGIC, sizeof(h->magic)))
		return lr_error_set(err, 0, "%s: bad magic (not a lazyrestore index)", path);
	if (h->version != LR_INDEX_VERSION || h->header_size != sizeof(*h) ||
	    h->record_size != sizeof(struct lr_index_record))
		return lr_error_set(err, 0, "%s: unsupported layout (version %u, header %u B, record %u B; expected %u, %zu, %zu)",
				    path, h->version, h->header_size, h->record_size, LR_INDEX_VERSION, sizeof(*h),
				    sizeof(struct lr_index_record));
	if (h->page_size != page_size)
		return lr_error_set(err, 0, "%s: page size %u, this machine uses %u", path, h->page_size, page_size);
	if (!is_pow2(h->block_size) || h->block_size < h->page_size)
		return lr_error_set(err, 0, "%s: block_size %u is not a power of two >= page size", path, h->block_size);
	/* Bound the counts before multiplying so the size arithmetic cannot overflow. */
	if (h->record_count > idx->size / sizeof(struct lr_index_record) ||
	    h->checksum_count > idx->size / sizeof(uint64_t))
		return lr_error_set(err, 0, "%s: counts exceed the file size", path);
	body = sizeof(*h) + h->record_count * sizeof(struct lr_index_record) + h->checksum_count * sizeof(uint64_t);
	want = body + sizeof(uint64_t);
	if (idx->size != want)
		return lr_error_set(err, 0, "%s: size %zu bytes does not match its header (%lu expected)", path, idx->size,
				    (unsigned long)want);
	uint64_t trailer;
	memcpy(&trailer, (const char *)idx->map + body, sizeof(trailer));
	if (trailer != XXH3_64bits(idx->map, body))
		return lr_error_set(err, 0, "%s: checksum mismatch: the file was modified or damaged", path);
	return 0;
}

static int check_record(const struct lr_index *idx, size_t i, uint64_t *next_sum, const char *path,
			struct lr_error *err)
{
	const struct lr_index_header *h = idx->hdr;
	const struct lr_index_record *r = &idx->recs[i];
	uint64_t nblocks;

	if ((r->flags & ~(LR_RANGE_LAZY | LR_RANGE_UNVERIFIED | LR_RANGE_LIVE)) || r->reserved)
		return lr_error_set(err, 0, "%s: record %zu: unknown flags %#x or reserved field set", path, i, r->flags);
	if ((r->flags & LR_RANGE_LIVE) && (r->flags & (LR_RANGE_LAZY | LR_RANGE_UNVERIFIED)) != LR_RANGE_LAZY)
		return lr_error_set(err, 0, "%s: record %zu: flags %#x: a live record must be lazy and not unverified", path,
				    i, r->flags);
	if (!r->nr_pages || r->start % h->page_size || r->offset % h->page_size ||
	    r->nr_pages > (UINT64_MAX - r->start) / h->page_size || r->offset > UINT64_MAX - r->nr_pages * h->page_size)
		return lr_error_set(err, 0, "%s: record %zu: empty, unaligned or beyond the address space", path, i);
	if (r->first_checksum != *next_sum)
		return lr_error_set(err, 0, "%s: record %zu: first checksum %lu, expected %lu", path, i,
				    (unsigned long)r->first_checksum, (unsigned long)*next_sum);
	nblocks = lr_block_count(r->start, r->nr_pages * h->page_size, h->block_size);
	if (nblocks > h->checksum_count - *next_sum)
		return lr_error_set(err, 0, "%s: record %zu: needs more checksums than the file has", path, i);
	if (i && (idx->recs[i - 1].pid > r->pid ||
		  (idx->recs[i - 1].pid == r->pid && lr_record_end(idx, &idx->recs[i - 1]) > r->start)))
		return lr_error_set(err, 0, "%s: record %zu: out of order or overlapping the previous record", path, i);
	*next_sum += nblocks;
	return 0;
}

static int check_records(struct lr_index *idx, const char *path, struct lr_error *err)
{
	uint64_t next_sum = 0, lazy = 0, eager = 0;

	for (size_t i = 0; i < idx->hdr->record_count; i++) {
		if (check_record(idx, i, &next_sum, path, err))
			return -1;
		if (idx->recs[i].flags & LR_RANGE_UNVERIFIED)
			idx->unverified++;
		if (idx->recs[i].flags & LR_RANGE_LIVE)
			idx->live++;
		if (idx->recs[i].flags & LR_RANGE_LAZY)
			lazy += idx->recs[i].nr_pages;
		else
			eager += idx->recs[i].nr_pages;
	}
	if (next_sum != idx->hdr->checksum_count)
		return lr_error_set(err, 0, "%s: records use %lu checksums, the header counts %lu", path,
				    (unsigned long)next_sum, (unsigned long)idx->hdr->checksum_count);
	if (lazy != idx->hdr->lazy_pages || eager != idx->hdr->eager_pages)
		return lr_error_set(err, 0, "%s: header page counts differ from the records", path);
	return 0;
}

int lr_index_open(struct lr_index *idx, const char *path, uint32_t page_size, struct lr_error *err)
{
	LR_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	memset(idx, 0, sizeof(*idx));
	if (fd < 0)
		return lr_error_set(err, errno, "open %s", path);
	if (fstat(fd, &st))
		return lr_error_set(err, errno, "stat %s", path);
	if ((size_t)st.st_size < sizeof(struct lr_index_header) + sizeof(uint64_t))
		return lr_error_set(err, 0, "%s: truncated (%ld bytes)", path, (long)st.st_size);
	idx->size = (size_t)st.st_size;
	idx->map = mmap(NULL, idx->size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (idx->map == MAP_FAILED) {
		idx->map = NULL;
		return lr_error_set(err, errno, "mmap %s", path);
	}
	idx->hdr = idx->map;
	if (check_header(idx, path, page_size, err))
		goto fail;
	/* Only now are the counts known to fit in the file. */
	idx->recs = (const void *)((const char *)idx->map + sizeof(struct lr_index_header));
	idx->sums = (const void *)(idx->recs + idx->hdr->record_count);
	if (check_records(idx, path, err))
		goto fail;
	return 0;
fail:
	lr_index_close(idx);
	return -1;
}

void lr_index_close(struct lr_index *idx)
{
	if (idx->map)
		munmap(idx->map, idx->size);
	memset(idx, 0, sizeof(*idx));
}

size_t lr_index_pid_records(const struct lr_index *idx, uint32_t pid, size_t *first)
{
	size_t lo = 0, hi = idx->hdr->record_count, end;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (idx->recs[mid].pid < pid)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (end = lo; end < idx->hdr->record_count && idx->recs[end].pid == pid; end++)
		;
	*first = lo;
	return end - lo;
}
