/*
 * lr_index.h: the lazy index, written by Python (lazyrestore/lazyindex.py) after
 * every checkpoint as DIR/lazyrestore/index.bin, read by lr-lazyd and lr-pageserver.
 *
 * All fields are little-endian; the layout is fixed and packed by construction
 * (every field naturally aligned, no padding).
 *
 *   struct lr_index_header                   80 bytes
 *   struct lr_index_record [record_count]    48 bytes each, sorted by (pid, start),
 *                                            never overlapping, never crossing a VMA
 *   uint64_t checksums [checksum_count]      XXH3-64 (seed 0) of each checksum block
 *   uint64_t trailer                         XXH3-64 (seed 0) of every byte before it
 *
 * Checksum blocks: the block_size-aligned windows of the address space, clipped
 * to the record. A record covering [start, start + nr_pages * page_size) owns
 *   nblocks = (align_up(end, block_size) - align_down(start, block_size)) / block_size
 * checksums starting at first_checksum; records use the checksum array in order,
 * without gaps. Block k of a record covers
 *   [max(start, align_down(start) + k * block_size), min(end, align_down(start) + (k + 1) * block_size))
 * whose bytes sit in pages-<pages_id>.img at offset + (block_start - start).
 *
 * Records with LR_RANGE_LAZY are placed by lr-lazyd on demand; the others are
 * restored by CRIU itself (eager) and are indexed so every page byte can be
 * verified end to end. LR_RANGE_LIVE records (below) live in no pages file. Pages absent from every record are holes: zero on restore.
 *
 * A reader must check: magic, version, header_size, record_size, page_size and
 * block_size (powers of two, block_size >= page_size), the file size against
 * the counts, the trailer, and every record (alignment, order, checksum range)
 * before trusting any of it.
 */
#ifndef LR_INDEX_H
#define LR_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define LR_INDEX_MAGIC "LRINDEX\0" /* 8 bytes, NUL included */
#define LR_INDEX_VERSION 1
#define LR_INDEX_NAME "lazyrestore/index.bin"
#define LR_RANGE_LAZY (1u << 0) /* placed by lr-lazyd; else restored eagerly by CRIU */
/* No checksums (they are 0): the bytes come from CRIU's page server (`criu dump --lazy-pages`), which has
 * none to give. Only lr-lazyd --criu-page-server accepts such records; every other reader refuses them. */
#define LR_RANGE_UNVERIFIED (1u << 1)
/* Live (with LR_RANGE_LAZY only): the bytes are read from the source tree's memory while it is stopped, by
 * lr-pageserver --live, which checksums them as it reads them and sends those sums in each PAGES frame. The
 * record's checksums are 0 and its pages_id and offset unused (written 0): no pages file holds it. Only
 * lr-pageserver --live serves such records and only lr-lazyd --source restores them; others refuse them. A live
 * record may span never-touched holes of its (private anonymous) VMA: they read as zeros, and lr-lazyd maps
 * all-zero pages as zero pages (lr_uffd_place), so they stay unallocated. */
#define LR_RANGE_LIVE (1u << 2)

struct lr_index_header {
	char magic[8];             /* LR_INDEX_MAGIC */
	uint32_t version;          /* LR_INDEX_VERSION */
	uint32_t header_size;      /* sizeof(struct lr_index_header) */
	uint32_t record_size;      /* sizeof(struct lr_index_record) */
	uint32_t page_size;        /* bytes per page at checkpoint time */
	uint32_t block_size;       /* bytes per checksum block (default 65536) */
	uint32_t task_count;       /* processes in pstree.img, zombies included */
	uint64_t record_count;     /* records that follow the header */
	uint64_t checksum_count;   /* checksums that follow the records */
	uint64_t lazy_pages;       /* sum of nr_pages over LR_RANGE_LAZY records */
	uint64_t eager_pages;      /* sum of nr_pages over the other records */
	uint8_t checkpoint_id[16]; /* random; equals manifest.json's checkpoint_id */
};

struct lr_index_record {
	uint32_t pid;            /* pid inside the checkpoint (pstree.img), as CRIU sends it */
	uint32_t flags;          /* LR_RANGE_* */
	uint64_t start;          /* first virtual address, page aligned */
	uint64_t nr_pages;       /* > 0 */
	uint32_t pages_id;       /* the bytes live in pages-<pages_id>.img */
	uint32_t reserved;       /* 0 */
	uint64_t offset;         /* byte offset of the first page in that file */
	uint64_t first_checksum; /* index of the record's first block checksum */
};

_Static_assert(sizeof(struct lr_index_header) == 80, "lr_index_header is 80 bytes");
_Static_assert(sizeof(struct lr_index_record) == 48, "lr_index_record is 48 bytes");
_Static_assert(offsetof(struct lr_index_header, record_count) == 32, "header layout");
_Static_assert(offsetof(struct lr_index_header, checkpoint_id) == 64, "header layout");
_Static_assert(offsetof(struct lr_index_record, offset) == 32, "record layout");

#endif /* LR_INDEX_H */
