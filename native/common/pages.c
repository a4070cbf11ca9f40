#define _GNU_SOURCE
/* pages.c: reading and verifying page bytes from pages-N.img files. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "lr_pages.h"

#define LR_MAX_PAGES_ID (1u << 20) /* CRIU numbers pages files from 1; far fewer in practice */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* Set by SIGIO: a writer wants one of our leased files (the only file-scope state: a signal flag). */
static volatile sig_atomic_t lease_broken;

void lr_pages_lease_broken(int sig)
{
	(void)sig;
	lease_broken = 1;
}

bool lr_pages_lease_was_broken(void)
{
	return lease_broken;
}

int lr_pages_open(struct lr_pages *p, const char *dir, bool map, struct lr_error *err)
{
	memset(p, 0, sizeof(*p));
	p->dir = dir;
	p->map = map;
	p->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->dirfd < 0)
		return lr_error_set(err, errno, "open images directory %s", dir);
	return 0;
}

void lr_pages_close(struct lr_pages *p)
{
	for (uint32_t i = 0; i < p->nfds; i++) {
		if (p->maps[i])
			munmap((void *)p->maps[i], p->sizes[i]);
		if (p->fds[i] >= 0)
			close(p->fds[i]); /* releases the lease */
	}
	free(p->fds);
	free(p->sizes);
	free(p->maps);
	free((void *)p->verified);
	if (p->dirfd >= 0)
		close(p->dirfd);
	memset(p, 0, sizeof(*p));
	p->dirfd = -1;
}

static int grow(struct lr_pages *p, uint32_t id, struct lr_error *err)
{
	uint32_t n = id + 1;
	int *fds = realloc(p->fds, n * sizeof(*fds));
	if (!fds)
		return lr_error_set(err, ENOMEM, "pages file table");
	p->fds = fds;
	uint64_t *sizes = realloc(p->sizes, n * sizeof(*sizes));
	if (!sizes)
		return lr_error_set(err, ENOMEM, "pages file table");
	p->sizes = sizes;
	const char **maps = realloc(p->maps, n * sizeof(*maps));
	if (!maps)
		return lr_error_set(err, ENOMEM, "pages file table");
	p->maps = maps;
	for (uint32_t i = p->nfds; i < n; i++) {
		p->fds[i] = -1;
		p->maps[i] = NULL;
	}
	p->nfds = n;
	return 0;
}

/* Map file `id` under a read lease; on any failure it stays in read mode (still safe, one copy more). */
static void try_map(struct lr_pages *p, uint32_t id)
{
	if (!p->sizes[id] || fcntl(p->fds[id], F_SETLEASE, F_RDLCK))
		return;
	void *m = mmap(NULL, p->sizes[id], PROT_READ, MAP_SHARED, p->fds[id], 0);
	if (m == MAP_FAILED) {
		fcntl(p->fds[id], F_SETLEASE, F_UNLCK);
		return;
	}
	p->maps[id] = m;
}

static int pages_fd(struct lr_pages *p, uint32_t id, struct lr_error *err)
{
	char name[32];
	struct stat st;

	if (id >= LR_MAX_PAGES_ID)
		return lr_error_set(err, 0, "index refers to pages-%u.img: id out of range", id);
	if (id < p->nfds && p->fds[id] >= 0)
		return p->fds[id];
	if (p->prepared) /* the tables are shared with the verify-ahead thread now: no growing */
		return lr_error_set(err, 0, "pages-%u.img was not opened up front", id);
	if (id >= p->nfds && grow(p, id, err))
		return -1;
	snprintf(name, sizeof(name), "pages-%u.img", id);
	int fd = openat(p->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lr_error_set(err, errno, "open %s/%s", p->dir, name);
	if (fstat(fd, &st)) {
		close(fd);
		return lr_error_set(err, errno, "stat %s/%s", p->dir, name);
	}
	p->fds[id] = fd;
	p->sizes[id] = (uint64_t)st.st_size;
	if (p->map)
		try_map(p, id);
	return fd;
}

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (size_t)n;
	}
	return 0;
}

/* Check the blocks of rec in [a, b) (block aligned or clipped to rec), whose bytes are at buf. With
 * flags (mapped bytes only), blocks marked verified are skipped and good ones are marked. */
static int verify(const struct lr_index *idx, const struct lr_index_record *rec, uint64_t a, uint64_t b,
		  const char *buf, _Atomic uint8_t *flags, const char *dir, struct lr_error *err)
{
	uint32_t bs = idx->hdr->block_size;
	uint64_t base = rec->start / bs * bs;

	for (uint64_t x = a; x < b;) {
		uint64_t stop = (x / bs + 1) * bs;
		if (stop > b)
			stop = b;
		uint64_t sum = rec->first_checksum + (x - base) / bs;
		if (flags && atomic_load_explicit(&flags[sum], memory_order_acquire)) {
			x = stop;
			continue;
		}
		if (XXH3_64bits(buf + (x - a), stop - x) != idx->sums[sum])
			return lr_error_set(err, 0, "%s/pages-%u.img: page data at offset %" PRIu64 " (pid %u, address %#" PRIx64
					    ") fails its checksum: the file is corrupt",
					    dir, rec->pages_id, rec->offset + (x - rec->start), rec->pid, x);
		if (flags)
			atomic_store_explicit(&flags[sum], 1, memory_order_release);
		x = stop;
	}
	return 0;
}

/* Map the page cache pages of [off, off + len) in one call rather than a fault each (a hint: failure is harmless). */
static void populate(const char *map, uint64_t off, uint64_t len, uint64_t page_size)
{
	uint64_t lo = off / page_size * page_size;
	madvise((void *)(map + lo), off + len - lo, MADV_POPULATE_READ);
}

/* Every block of rec in [a, b) already verified in its mapping (by the verify-ahead thread)? */
static bool all_verified(const struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec,
			 uint64_t a, uint64_t b)
{
	uint32_t bs = idx->hdr->block_size;
	uint64_t base = rec->start / bs * bs;

	if (!p->verified)
		return false;
	for (uint64_t k = (a - base) / bs; k <= (b - 1 - base) / bs; k++)
		if (!atomic_load_explicit(&p->verified[rec->first_checksum + k], memory_order_acquire))
			return false;
	return true;
}

/* The block-aligned span [*a, *b) of the record covering [src, src + len), and its file offset. */
static int span_of(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec, uint64_t src,
		   uint64_t len, uint64_t *a, uint64_t *b, uint64_t *off, struct lr_error *err)
{
	uint32_t bs = idx->hdr->block_size;
	uint64_t end = lr_record_end(idx, rec);

	if (src < rec->start || len > end - src)
		return lr_error_set(err, 0, "read %#" PRIx64 "+%" PRIu64 " outside record of pid %u", src, len, rec->pid);
	*a = src / bs * bs < rec->start ? rec->start : src / bs * bs;
	*b = (src + len + bs - 1) / bs * bs > end ? end : (src + len + bs - 1) / bs * bs;
	if (pages_fd(p, rec->pages_id, err) < 0)
		return -1;
	*off = rec->offset + (*a - rec->start);
	if (*off > p->sizes[rec->pages_id] || *b - *a > p->sizes[rec->pages_id] - *off)
		return lr_error_set(err, 0, "%s/pages-%u.img: truncated (needs bytes up to %" PRIu64 ", has %" PRIu64 ")",
				    p->dir, rec->pages_id, *off + (*b - *a), p->sizes[rec->pages_id]);
	return 0;
}

int lr_pages_read(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec, uint64_t src,
		  uint64_t len, void *buf, size_t buf_size, size_t *at, struct lr_error *err)
{
	uint64_t a, b, off;

	if (span_of(p, idx, rec, src, len, &a, &b, &off, err))
		return -1;
	if (b - a > buf_size)
		return lr_error_set(err, 0, "read of %" PRIu64 " bytes exceeds the buffer", b - a);
	int rc = read_full(p->fds[rec->pages_id], buf, b - a, off);
	if (rc)
		return lr_error_set(err, -rc, "read %s/pages-%u.img at %" PRIu64, p->dir, rec->pages_id, off);
	if (verify(idx, rec, a, b, buf, NULL, p->dir, err))
		return -1;
	*at = src - a;
	return 0;
}

int lr_pages_get(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec, uint64_t src,
		 uint64_t len, void *buf, size_t buf_size, const char **data, struct lr_error *err)
{
	uint64_t a, b, off;
	size_t at;

	if (span_of(p, idx, rec, src, len, &a, &b, &off, err))
		return -1;
	const char *map = p->maps[rec->pages_id];
	if (!map) {
		if (lr_pages_read(p, idx, rec, src, len, buf, buf_size, &at, err))
			return -1;
		*data = (const char *)buf + at;
		return 0;
	}
	if (!all_verified(p, idx, rec, a, b)) {
		populate(map, off, b - a, idx->hdr->page_size);
		if (verify(idx, rec, a, b, map + off, p->verified, p->dir, err))
			return -1;
	}
	*data = map + off + (src - a);
	return 0;
}

int lr_pages_prepare(struct lr_pages *p, const struct lr_index *idx, struct lr_error *err)
{
	for (uint64_t i = 0; i < idx->hdr->record_count; i++) /* a live record is in no pages file */
		if (!(idx->recs[i].flags & LR_RANGE_LIVE) && pages_fd(p, idx->recs[i].pages_id, err) < 0)
			return -1;
	p->nverified = idx->hdr->checksum_count;
	p->verified = calloc(p->nverified ? p->nverified : 1, 1);
	if (!p->verified)
		return lr_error_set(err, ENOMEM, "verified-block flags for %" PRIu64 " blocks", p->nverified);
	p->prepared = true;
	return 0;
}

void lr_pages_check_ahead(struct lr_pages *p, const struct lr_index *idx, const struct lr_index_record *rec,
			  uint64_t k0, uint64_t k1)
{
	uint32_t bs = idx->hdr->block_size;
	uint64_t base = rec->start / bs * bs, end = lr_record_end(idx, rec), a, b, off;
	struct lr_error ignored;

	a = base + k0 * bs < rec->start ? rec->start : base + k0 * bs;
	b = base + k1 * bs > end ? end : base + k1 * bs;
	if (!p->prepared || a >= b || rec->pages_id >= p->nfds || !p->maps[rec->pages_id] ||
	    span_of(p, idx, rec, a, b - a, &a, &b, &off, &ignored))
		return;
	const char *map = p->maps[rec->pages_id];
	populate(map, off, b - a, idx->hdr->page_size);
	for (uint64_t x = a; x < b;) { /* block by block, so one bad block does not hold back the others */
		uint64_t stop = (x / bs + 1) * bs < b ? (x / bs + 1) * bs : b;
		verify(idx, rec, x, stop, map + off + (x - a), p->verified, p->dir, &ignored);
		x = stop;
	}
}
