/* wset.c: reading, checking, merging and writing a checkpoint's working set (lr_wset.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lr_cleanup.h"
#include "lr_wset.h"

void lr_wset_init(struct lr_wset *w, const struct lr_index *idx)
{
	*w = (struct lr_wset){0};
	memcpy(w->hdr.magic, LR_WSET_MAGIC, sizeof(LR_WSET_MAGIC));
	w->hdr.version = LR_WSET_VERSION;
	if (idx) {
		w->hdr.page_size = idx->hdr->page_size;
		memcpy(w->hdr.checkpoint_id, idx->hdr->checkpoint_id, sizeof(w->hdr.checkpoint_id));
	}
}

/* Room for n entries; w->v is allocated afterwards even for none (memcpy and qsort take no NULL). */
static int reserve(struct lr_wset *w, size_t n, struct lr_error *err)
{
	if (n <= w->cap && w->v)
		return 0;
	size_t cap = w->cap ? w->cap : 1024;
	while (cap < n)
		cap *= 2;
	struct lr_wset_entry *v = realloc(w->v, cap * sizeof(*v));
	if (!v)
		return lr_error_set(err, ENOMEM, "working set of %zu entries", n);
	w->v = v;
	w->cap = cap;
	return 0;
}

int lr_wset_push(struct lr_wset *w, const struct lr_wset_entry *e, struct lr_error *err)
{
	if (reserve(w, w->n + 1, err))
		return -1;
	w->v[w->n++] = *e;
	w->hdr.count = w->n;
	return 0;
}

/* Entry i names a page-aligned lazy page inside its record. */
static int check_entry(const struct lr_wset *w, size_t i, const struct lr_index *idx, const char *where,
		       struct lr_error *err)
{
	const struct lr_wset_entry *e = &w->v[i];
	if (e->record >= idx->hdr->record_count)
		return lr_error_set(err, 0, "working set %s: entry %zu names record %u, the index has %" PRIu64, where, i,
				    e->record, idx->hdr->record_count);
	const struct lr_index_record *r = &idx->recs[e->record];
	if (!(r->flags & LR_RANGE_LAZY) || e->addr % idx->hdr->page_size || e->addr < r->start ||
	    e->addr >= lr_record_end(idx, r))
		return lr_error_set(err, 0, "working set %s: entry %zu (record %u, address %#" PRIx64 ") is not a lazy "
				    "page of the checkpoint", where, i, e->record, e->addr);
	return 0;
}

static int check_header(const struct lr_wset_hdr *h, size_t len, const struct lr_index *idx, const char *where,
			struct lr_error *err)
{
	if (memcmp(h->magic, LR_WSET_MAGIC, sizeof(LR_WSET_MAGIC)) || h->version != LR_WSET_VERSION)
		return lr_error_set(err, 0, "working set %s: not a version %u working set (version %u)", where,
				    LR_WSET_VERSION, h->version);
	if (h->count > LR_WSET_MAX_ENTRIES || len != sizeof(*h) + h->count * sizeof(struct lr_wset_entry))
		return lr_error_set(err, 0, "working set %s: %zu bytes for %" PRIu64 " entries (at most %u)", where, len,
				    h->count, LR_WSET_MAX_ENTRIES);
	if (h->reserved || (h->count && !h->restores))
		return lr_error_set(err, 0, "working set %s: damaged header (restores %u)", where, h->restores);
	if (idx && (memcmp(h->checkpoint_id, idx->hdr->checkpoint_id, 16) || h->page_size != idx->hdr->page_size))
		return lr_error_set(err, 0, "working set %s belongs to another checkpoint", where);
	return 0;
}

int lr_wset_parse(struct lr_wset *w, const void *data, size_t len, const struct lr_index *idx, const char *where,
		  struct lr_error *err)
{
	struct lr_wset_hdr h;

	lr_wset_init(w, idx);
	if (len < sizeof(h))
		return lr_error_set(err, 0, "working set %s: %zu bytes, shorter than its %zu-byte header", where, len,
				    sizeof(h));
	memcpy(&h, data, sizeof(h));
	if (check_header(&h, len, idx, where, err) || reserve(w, h.count, err))
		return -1;
	w->hdr = h;
	w->n = h.count;
	memcpy(w->v, (const char *)data + sizeof(h), w->n * sizeof(*w->v));
	for (size_t i = 0; i < w->n; i++) {
		const struct lr_wset_entry *e = &w->v[i];
		if ((i && e->t_us < w->v[i - 1].t_us) || !e->hits || !e->last || e->last > h.restores) {
			lr_error_set(err, 0, "working set %s: entry %zu is damaged (out of order, or hits %u / last %u of "
				     "%u restores)", where, i, e->hits, e->last, h.restores);
			goto bad;
		}
		if (idx && check_entry(w, i, idx, where, err))
			goto bad;
	}
	return 0;
bad:
	lr_wset_fini(w);
	lr_wset_init(w, idx);
	return -1;
}

int lr_wset_load(struct lr_wset *w, const char *path, const struct lr_index *idx, struct lr_error *err)
{
	struct stat st;
	LR_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);

	lr_wset_init(w, idx);
	if (fd < 0 || fstat(fd, &st))
		return lr_error_set(err, errno, "working set %s", path);
	size_t max = sizeof(struct lr_wset_hdr) + (size_t)LR_WSET_MAX_ENTRIES * sizeof(struct lr_wset_entry);
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max)
		return lr_error_set(err, 0, "working set %s: not a regular file of at most %zu bytes", path, max);
	LR_CLEANUP_FREE char *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf)
		return lr_error_set(err, ENOMEM, "working set %s", path);
	ssize_t got = pread(fd, buf, (size_t)st.st_size, 0);
	if (got != (ssize_t)st.st_size)
		return lr_error_set(err, got < 0 ? errno : EIO, "read working set %s", path);
	return lr_wset_parse(w, buf, (size_t)got, idx, path, err);
}

static int by_page(const void *a, const void *b)
{
	const struct lr_wset_entry *x = a, *y = b;
	if (x->record != y->record)
		return x->record < y->record ? -1 : 1;
	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	if (x->last != y->last) /* the newest first: its time wins */
		return x->last > y->last ? -1 : 1;
	return x->t_us < y->t_us ? -1 : x->t_us > y->t_us;
}

static int by_time(const void *a, const void *b)
{
	const struct lr_wset_entry *x = a, *y = b;
	if (x->t_us != y->t_us)
		return x->t_us < y->t_us ? -1 : 1;
	if (x->record != y->record)
		return x->record < y->record ? -1 : 1;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

int lr_wset_merge(struct lr_wset *into, const struct lr_wset *add, struct lr_error *err)
{
	uint32_t base = into->hdr.restores, total = base + add->hdr.restores;
	size_t n = into->n;

	if (reserve(into, into->n + add->n, err))
		return -1;
	for (size_t i = 0; i < add->n; i++) {
		into->v[n] = add->v[i];
		into->v[n++].last += base;
	}
	qsort(into->v, n, sizeof(*into->v), by_page);
	size_t out = 0;
	for (size_t i = 0; i < n;) {
		struct lr_wset_entry e = into->v[i];
		size_t j = i + 1;
		for (; j < n && into->v[j].record == e.record && into->v[j].addr == e.addr; j++)
			if (into->v[j].last <= base || e.last <= base) /* one from each side: restores add up */
				e.hits += into->v[j].hits;
		i = j;
		if (total - e.last < LR_WSET_KEEP_RESTORES)
			into->v[out++] = e;
	}
	qsort(into->v, out, sizeof(*into->v), by_time);
	into->n = out < LR_WSET_MAX_ENTRIES ? out : LR_WSET_MAX_ENTRIES;
	into->hdr.count = into->n;
	into->hdr.restores = total;
	into->hdr.faults_seen = add->hdr.faults_seen;
	into->hdr.max_faults = add->hdr.max_faults;
	into->hdr.max_ms = add->hdr.max_ms;
	return 0;
}

void lr_wset_sort(struct lr_wset *w)
{
	if (w->n)
		qsort(w->v, w->n, sizeof(*w->v), by_time);
}

int lr_wset_encode(const struct lr_wset *w, char **out, size_t *len, struct lr_error *err)
{
	struct lr_wset_hdr h = w->hdr;
	h.count = w->n;
	*len = sizeof(h) + w->n * sizeof(*w->v);
	*out = malloc(*len);
	if (!*out)
		return lr_error_set(err, ENOMEM, "working set of %zu entries", w->n);
	memcpy(*out, &h, sizeof(h));
	if (w->n)
		memcpy(*out + sizeof(h), w->v, w->n * sizeof(*w->v));
	return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

int lr_wset_write(const struct lr_wset *w, const char *path, struct lr_error *err)
{
	char tmp[4096];
	LR_CLEANUP_FREE char *bytes = NULL;
	size_t len;

	if (snprintf(tmp, sizeof(tmp), "%s.part", path) >= (int)sizeof(tmp))
		return lr_error_set(err, ENAMETOOLONG, "working set %s", path);
	if (lr_wset_encode(w, &bytes, &len, err))
		return -1;
	LR_CLEANUP_CLOSE int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return lr_error_set(err, errno, "create %s", tmp);
	if (write_all(fd, bytes, len) || fsync(fd)) {
		int e = errno;
		unlink(tmp);
		return lr_error_set(err, e, "write %s", tmp);
	}
	if (rename(tmp, path)) {
		int e = errno;
		unlink(tmp);
		return lr_error_set(err, e, "rename %s to %s", tmp, path);
	}
	return 0;
}

void lr_wset_fini(struct lr_wset *w)
{
	free(w->v);
	w->v = NULL;
	w->n = w->cap = 0;
	w->hdr.count = 0;
}
