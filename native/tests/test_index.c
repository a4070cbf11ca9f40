/*
 * test_index.c: run lr_index_open (native/common/index.c) on one file.
 *
 * Usage: test_index PATH
 * Prints "ok records=R checksums=C lazy=L eager=E tasks=T" and exits 0 when the
 * index is accepted (L and E are summed from the records, T is the header's
 * task_count), or "error: <message>" and exits 1 when it is rejected.
 * Exit 2: bad usage; exit 3: an accepted index whose records do not read back
 * consistently (lr_index_pid_records, record bounds): a bug in the reader.
 */
#include <stdio.h>
#include <string.h>

#include "lr_index_reader.h"

static int consistent(const struct lr_index *idx)
{
	const struct lr_index_header *h = idx->hdr;
	size_t expect = sizeof(*h) + h->record_count * sizeof(struct lr_index_record) + h->checksum_count * 8 + 8;

	if (idx->size != expect || (const char *)idx->recs != (const char *)idx->map + sizeof(*h) ||
	    (const char *)idx->sums != (const char *)(idx->recs + h->record_count)) {
		printf("error: internal: mapped layout does not match the header\n");
		return 0;
	}
	/* Every pid's records come back from lr_index_pid_records as one run. */
	for (size_t i = 0; i < h->record_count;) {
		size_t first = (size_t)-1, n = lr_index_pid_records(idx, idx->recs[i].pid, &first), j = i;
		while (j < h->record_count && idx->recs[j].pid == idx->recs[i].pid)
			j++;
		if (first != i || n != j - i) {
			printf("error: internal: lr_index_pid_records(%u) = %zu at %zu, expected %zu at %zu\n",
			       idx->recs[i].pid, n, first, j - i, i);
			return 0;
		}
		i = j;
	}
	/* Checksums are used in order without gaps and end where the array does. */
	uint64_t next = 0;
	for (size_t i = 0; i < h->record_count; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		if (r->first_checksum != next || lr_record_end(idx, r) <= r->start) {
			printf("error: internal: record %zu accepted with inconsistent checksums or bounds\n", i);
			return 0;
		}
		next += lr_block_count(r->start, r->nr_pages * h->page_size, h->block_size);
	}
	if (next != h->checksum_count) {
		printf("error: internal: records use %lu checksums of %lu\n", (unsigned long)next,
		       (unsigned long)h->checksum_count);
		return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	struct lr_index idx;
	struct lr_error err;

	if (argc != 2) {
		fprintf(stderr, "usage: %s INDEX\n", argv[0]);
		return 2;
	}
	memset(&err, 0, sizeof(err));
	if (lr_index_open(&idx, argv[1], 4096, &err)) {
		printf("error: %s\n", err.msg);
		return 1;
	}
	if (!consistent(&idx)) {
		lr_index_close(&idx);
		return 3;
	}
	uint64_t lazy = 0, eager = 0;
	for (size_t i = 0; i < idx.hdr->record_count; i++) {
		if (idx.recs[i].flags & LR_RANGE_LAZY)
			lazy += idx.recs[i].nr_pages;
		else
			eager += idx.recs[i].nr_pages;
	}
	printf("ok records=%lu checksums=%lu lazy=%lu eager=%lu tasks=%u\n", (unsigned long)idx.hdr->record_count,
	       (unsigned long)idx.hdr->checksum_count, (unsigned long)lazy, (unsigned long)eager, idx.hdr->task_count);
	lr_index_close(&idx);
	return 0;
}
