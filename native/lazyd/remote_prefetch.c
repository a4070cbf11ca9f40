/* remote_prefetch.c: fetching the working set ahead from the page server, before CRIU starts (prefetch.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lazyd.h"
#include "lr_cleanup.h"
#include "lr_net.h"
#include "lr_proto_io.h"
#include "prefetch.h"
#include "remote.h"

#define LR_PREFETCH_DEPTH 16 /* GET_PAGES in flight: the link stays busy, the server's queue stays short */

enum { BLOCK_NONE = 0, BLOCK_LOCAL = 1, BLOCK_ASKED = 2 };

struct fetch {
	struct lr_page_req *q;     /* every request, in working-set order */
	size_t n, cap, sent, got;
	int out_fd;                /* the pages file last written */
	uint32_t out_id;
};

static int push(struct fetch *f, struct lr_page_req q, struct lr_error *err)
{
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 256;
		struct lr_page_req *v = realloc(f->q, cap * sizeof(*v));
		if (!v)
			return lr_error_set(err, ENOMEM, "prefetch requests");
		f->q = v;
		f->cap = cap;
	}
	f->q[f->n++] = q;
	return 0;
}

/* The requests for the blocks of every window, each block once, at most LR_PAGES_MAX_DATA per request. */
static int plan_requests(struct lr_prefetch *p, const struct lr_index *idx, struct fetch *f, struct lr_error *err)
{
	uint64_t bs = idx->hdr->block_size;
	uint32_t per = LR_PAGES_MAX_DATA / (uint32_t)bs;
	for (size_t i = 0; i < p->n + p->nprobe; i++) {
		const struct lr_window *w = i < p->n ? &p->v[i] : &p->probe[i - p->n];
		const struct lr_index_record *x = &idx->recs[w->record];
		uint64_t base = x->start / bs * bs;
		uint32_t k = (uint32_t)((w->a - base) / bs), k1 = (uint32_t)((w->b - 1 - base) / bs) + 1;
		while (k < k1) {
			if (p->local[x->first_checksum + k]) {
				k++;
				continue;
			}
			struct lr_page_req q = {w->record, k, 0};
			while (k < k1 && q.nblocks < per && !p->local[x->first_checksum + k]) {
				p->local[x->first_checksum + k++] = BLOCK_ASKED;
				q.nblocks++;
			}
			if (push(f, q, err))
				return -1;
		}
	}
	return 0;
}

static void mark(struct lr_prefetch *p, const struct lr_index *idx, const struct lr_page_req *q, uint8_t state)
{
	const struct lr_index_record *x = &idx->recs[q->record];
	for (uint32_t k = 0; k < q->nblocks; k++)
		p->local[x->first_checksum + q->first_block + k] = state;
}

/* Write verified bytes of record h->record at checkpoint address a into its pages file. */
static int store(struct fetch *f, int dirfd, const struct lr_index *idx, const struct lr_pages_hdr *h, uint64_t a,
		 const char *data, struct lr_error *err)
{
	const struct lr_index_record *r = &idx->recs[h->record];
	char name[32];
	snprintf(name, sizeof(name), "pages-%u.img", r->pages_id);
	if (f->out_fd < 0 || f->out_id != r->pages_id) {
		if (f->out_fd >= 0)
			close(f->out_fd);
		f->out_fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
		f->out_id = r->pages_id;
		if (f->out_fd < 0)
			return lr_error_set(err, errno, "open %s for the working set", name);
	}
	if (pwrite(f->out_fd, data, h->data_len, (off_t)(r->offset + (a - r->start))) != (ssize_t)h->data_len)
		return lr_error_set(err, errno ? errno : EIO, "write the working set into %s", name);
	return 0;
}

/* The next reply, in request order; bytes failing their checksum in transit are left to the normal path. */
static int receive(struct lr_prefetch *p, struct fetch *f, struct lr_remote *r, int dirfd, const struct lr_index *idx,
		   char *buf, struct lr_error *err)
{
	const struct lr_page_req *q = &f->q[f->got++];
	struct lr_frame fr;
	struct lr_pages_hdr h;
	const char *data, *payload = buf;
	uint64_t a;

	if (lr_recv_frame(r->urgent.rec.fd, LR_PAGES, &fr, buf, LR_FRAME_MAX,
			  lr_net_now_ns() + r->timeout_ms * 1000000ULL, err) ||
	    lr_remote_inflate(r, fr.flags, &payload, &fr.length, err))
		return -1;
	if (lr_pages_frame_check(idx, payload, fr.length, &h, &a, &data, err)) {
		if (err->errnum != EBADMSG)
			return -1;
		mark(p, idx, q, BLOCK_NONE);
		fprintf(stderr, "lr-lazyd: prefetch: %s; left to be fetched on demand\n", err->msg);
		return 0;
	}
	if (h.record != q->record || h.first_block != q->first_block || h.nblocks != q->nblocks)
		return lr_error_set(err, 0, "page server answered another range than asked for (prefetch)");
	if (store(f, dirfd, idx, &h, a, data, err))
		return -1;
	mark(p, idx, q, BLOCK_LOCAL);
	p->fetched_bytes += h.data_len;
	return 0;
}

int lr_prefetch_fetch(struct lr_prefetch *p, struct lr_remote *r, int dirfd, const struct lr_index *idx, char *buf,
		      struct lr_error *err)
{
	struct fetch f = {.out_fd = -1};
	unsigned long long t0 = lr_net_now_ns();
	uint64_t wire0 = r->wire_bytes;
	int rc = plan_requests(p, idx, &f, err);

	while (!rc && f.got < f.n) {
		while (!rc && f.sent < f.n && f.sent - f.got < LR_PREFETCH_DEPTH) {
			rc = lr_send_frame(r->urgent.rec.fd, LR_GET_PAGES, r->want, 1, &f.q[f.sent], sizeof(f.q[0]),
					   lr_net_now_ns() + r->timeout_ms * 1000000ULL, err);
			f.sent++;
		}
		if (!rc)
			rc = receive(p, &f, r, dirfd, idx, buf, err);
	}
	p->wire_bytes = r->wire_bytes - wire0;
	if (f.out_fd >= 0)
		close(f.out_fd);
	free(f.q);
	p->fetch_ns = lr_net_now_ns() - t0;
	return rc;
}

#define LR_COMPRESS_BELOW_BPS (250ULL << 20) /* zstd -1 packs pages faster than this on one core */

/* --compress: on, off, or (auto) on when the link measured while fetching ahead is slower than zstd. */
static void choose_compression(struct lr_lazyd *d)
{
	struct lr_prefetch *p = &d->prefetch;
	struct lr_remote *r = d->remote;
	if (p->fetch_ns && p->wire_bytes >= LR_PROBE_BYTES / 2)
		d->stats.link_bps = p->wire_bytes * 1000000000ULL / p->fetch_ns;
	if (!strcmp(d->cfg.compress, "auto") && d->stats.link_bps && d->stats.link_bps < LR_COMPRESS_BELOW_BPS)
		r->want |= LR_F_COMPRESS;
	d->stats.compress = r->want & LR_F_COMPRESS;
	lr_log(d, 1, "link %.1f MB/s (measured over %llu bytes): page frames %s", (double)d->stats.link_bps / 1e6,
	       (unsigned long long)p->wire_bytes, d->stats.compress ? "compressed (zstd)" : "as they are, zero blocks compressed");
}

int lr_prefetch_remote(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_prefetch *p = &d->prefetch;
	bool automatic = !strcmp(d->cfg.compress, "auto");

	if (!strcmp(d->cfg.compress, "on"))
		d->remote->want |= LR_F_COMPRESS;
	if (!p->local)
		p->local = calloc(d->index.hdr->checksum_count ? d->index.hdr->checksum_count : 1, 1);
	if (!p->local || (automatic && lr_prefetch_probe(p, &d->index, LR_PROBE_BYTES, err)))
		return p->local ? -1 : lr_error_set(err, ENOMEM, "prefetch bitmap");
	if (p->n || p->nprobe) {
		LR_CLEANUP_CLOSE int dirfd = open(d->cfg.images_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		LR_CLEANUP_FREE char *buf = malloc(LR_FRAME_MAX);
		if (dirfd < 0 || !buf)
			return lr_error_set(err, dirfd < 0 ? errno : ENOMEM, "images directory %s", d->cfg.images_dir);
		if (lr_prefetch_fetch(p, d->remote, dirfd, &d->index, buf, err))
			return -1;
		lr_log(d, 1, "fetched ahead: %llu bytes (%zu working-set windows, %zu probe) in %.1f ms",
		       (unsigned long long)p->fetched_bytes, p->n, p->nprobe, (double)p->fetch_ns / 1e6);
	}
	choose_compression(d);
	return 0;
}
