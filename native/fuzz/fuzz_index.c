/*
 * fuzz_index.c: lr_index_open (native/common/index.c) on arbitrary files, then
 * what the daemons do with an index it accepted: lr_index_pid_records for every
 * pid, lr_block_count and the checksum slice of every record, checked against
 * what lr_index.h promises a reader.
 *
 * The input is written to a memfd and opened by path (/proc/self/fd/N), at this
 * machine's page size and, when the header names another power of two, at that one
 * too (an index made on a 16 or 64 KiB page machine). An input whose trailer is
 * wrong is opened again with the trailer fixed, so that mutations get past the
 * checksum to the record checks.
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "fuzz.h"
#include "lr_index_reader.h"

#define PAGE_SIZE_OFFSET 20 /* struct lr_index_header.page_size */
#define TRAILER_SIZE 8

static int memfd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	memfd = memfd_create("lr-fuzz-index", MFD_CLOEXEC);
	FUZZ_CHECK(memfd >= 0);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	return 0;
}

/* The records of r->pid, as lr_index_pid_records finds them, include r and nothing of another pid. */
static void check_pid(const struct lr_index *idx, size_t i)
{
	uint32_t pid = idx->recs[i].pid;
	size_t first, n = lr_index_pid_records(idx, pid, &first);

	FUZZ_CHECK(n > 0 && first <= i && i < first + n && first + n <= idx->hdr->record_count);
	FUZZ_CHECK(idx->recs[first].pid == pid && idx->recs[first + n - 1].pid == pid);
	FUZZ_CHECK(first == 0 || idx->recs[first - 1].pid < pid);
}

/* Every record owns the next checksums, all inside the file, and lies inside the address space. */
static void check_accepted(const struct lr_index *idx)
{
	const struct lr_index_header *h = idx->hdr;
	uint64_t next = 0;
	volatile uint64_t sink = 0;

	for (uint64_t i = 0; i < h->record_count; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		uint64_t nb = lr_block_count(r->start, r->nr_pages * h->page_size, h->block_size);
		FUZZ_CHECK(r->first_checksum == next && nb > 0 && lr_record_end(idx, r) > r->start);
		sink += idx->sums[r->first_checksum] + idx->sums[r->first_checksum + nb - 1];
		next += nb;
		if (i == 0 || idx->recs[i - 1].pid != r->pid)
			check_pid(idx, i);
	}
	FUZZ_CHECK(next == h->checksum_count);
	FUZZ_CHECK((const char *)(idx->sums + next) + TRAILER_SIZE == (const char *)idx->map + idx->size);
	size_t first;
	FUZZ_CHECK(lr_index_pid_records(idx, UINT32_MAX, &first) <= h->record_count); /* past every pid */
	(void)sink;
}

static void open_one(const uint8_t *data, size_t size, uint32_t page_size)
{
	struct lr_index idx;
	struct lr_error err;

	FUZZ_CHECK(ftruncate(memfd, 0) == 0 && pwrite(memfd, data, size, 0) == (ssize_t)size);
	if (lr_index_open(&idx, path, page_size, &err))
		return;
	check_accepted(&idx);
	lr_index_close(&idx);
}

/* At this machine's page size, and at the header's when that is another plausible one. */
static void open_all(const uint8_t *data, size_t size)
{
	uint32_t ps = (uint32_t)sysconf(_SC_PAGESIZE), hps = 0;

	open_one(data, size, ps);
	if (size >= PAGE_SIZE_OFFSET + 4)
		memcpy(&hps, data + PAGE_SIZE_OFFSET, 4);
	if (hps != ps && hps >= 512 && hps <= (1u << 16) && !(hps & (hps - 1)))
		open_one(data, size, hps);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	open_all(data, size);
	if (size < TRAILER_SIZE)
		return 0;
	uint64_t want = XXH3_64bits(data, size - TRAILER_SIZE), have;
	memcpy(&have, data + size - TRAILER_SIZE, TRAILER_SIZE);
	if (have == want)
		return 0;
	uint8_t *fixed = malloc(size);
	FUZZ_CHECK(fixed != NULL);
	memcpy(fixed, data, size - TRAILER_SIZE);
	memcpy(fixed + size - TRAILER_SIZE, &want, TRAILER_SIZE);
	open_all(fixed, size);
	free(fixed);
	return 0;
}
