/* src_criu.c: CRIU's page server as lr-lazyd's page source (source.h), inside the event loop (see criu_ps.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "blocks.h"
#include "criu_ps.h"
#include "lazyd.h"
#include "lr_net.h"

#define CPS_REQ_MAX_BLOCKS 16u       /* blocks per GET: 1 MiB with 64 KiB blocks */
#define CPS_WINDOW (8u << 20)        /* bytes the drain keeps asked for; a fault's GET waits behind at most this */
#define CPS_IO_TIMEOUT_MS 10000

struct cps_req {                     /* one GET in flight; replies come in the order GETs were sent */
	uint32_t rec;
	uint32_t k0, k1;             /* its blocks of the record (in-flight flags) */
	uint64_t vaddr;              /* first page not received yet */
	uint64_t npages;             /* pages not received yet */
	bool urgent;                 /* for a fault (else the drain) */
};

struct lr_cps {
	struct lr_addr addr;
	struct lr_fdrec rec;
	char *buf;                   /* received bytes [start, end) not used yet */
	size_t start, end, cap;
	struct cps_req *q;           /* ring of GETs in flight */
	size_t head, len, qcap;
	uint8_t *inflight;           /* per checksum block: asked for */
	uint64_t inflight_bytes, requests, bytes;
	uint64_t verified, cut;      /* blocks checked against the index; block parts a partial reply cut (unchecked) */
};

/* A header with cmd and the rest as given, its padding zero (the header goes on the wire as it is in memory). */
static struct page_server_iov psi(uint32_t cmd, uint64_t nr_pages, uint64_t vaddr, uint64_t dst_id)
{
	struct page_server_iov pi;
	memset(&pi, 0, sizeof(pi));
	pi.cmd = cmd;
	pi.nr_pages = nr_pages;
	pi.vaddr = vaddr;
	pi.dst_id = dst_id;
	return pi;
}

static int send_get(struct lr_lazyd *d, const struct cps_req *q, struct lr_error *err)
{
	struct lr_cps *c = d->cps;
	struct page_server_iov pi = psi(PS_IOV_GET, q->npages, q->vaddr, d->index.recs[q->rec].pid);
	c->requests++;
	return lr_net_send_all(c->rec.fd, &pi, sizeof(pi), lr_net_now_ns() + CPS_IO_TIMEOUT_MS * 1000000ULL, err);
}

static int push(struct lr_lazyd *d, struct cps_req q, struct lr_error *err)
{
	struct lr_cps *c = d->cps;
	if (c->len == c->qcap) {
		size_t ncap = c->qcap ? c->qcap * 2 : 256;
		struct cps_req *nq = malloc(ncap * sizeof(*nq));
		if (!nq)
			return lr_error_set(err, ENOMEM, "CRIU page server request queue");
		for (size_t i = 0; i < c->len; i++)
			nq[i] = c->q[(c->head + i) % c->qcap];
		free(c->q);
		c->q = nq;
		c->qcap = ncap;
		c->head = 0;
	}
	c->q[(c->head + c->len++) % c->qcap] = q;
	return send_get(d, &q, err);
}

static int cps_want(struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b, bool urgent, struct lr_error *err)
{
	struct lr_cps *c = d->cps;
	const struct lr_index_record *x = &d->index.recs[rec];
	const uint64_t bs = d->index.hdr->block_size, base = x->start / bs * bs, end = lr_record_end(&d->index, x);
	uint32_t k, k1, g0, g1;

	lr_blocks_of(&d->index, x, a, b, &k, &k1);
	while (lr_blocks_next(c->inflight + x->first_checksum, &k, k1, CPS_REQ_MAX_BLOCKS, 1, &g0, &g1)) {
		struct cps_req q = {rec, g0, g1, 0, 0, urgent};
		uint64_t lo = base + (uint64_t)q.k0 * bs, hi = base + (uint64_t)q.k1 * bs;
		q.vaddr = lo < x->start ? x->start : lo;
		q.npages = ((hi > end ? end : hi) - q.vaddr) / d->page_size;
		c->inflight_bytes += q.npages * d->page_size;
		if (push(d, q, err))
			return -1;
	}
	return 0;
}

/* The blocks of record x wholly inside the reply's [a, b) against the index (a block a partial reply cut is placed
 * unverified, and counted). */
static int check_blocks(struct lr_lazyd *d, const struct lr_index_record *x, uint64_t a, uint64_t b, const char *data,
			struct lr_error *err)
{
	const uint64_t bs = d->index.hdr->block_size, base = x->start / bs * bs, end = lr_record_end(&d->index, x);
	for (uint64_t k = (a - base) / bs; base + k * bs < b; k++) {
		uint64_t lo = base + k * bs, hi = lo + bs;
		lo = lo < x->start ? x->start : lo;
		hi = hi > end ? end : hi;
		if (lo < a || hi > b) {
			d->cps->cut++;
			continue;
		}
		if (XXH3_64bits(data + (lo - a), hi - lo) != d->index.sums[x->first_checksum + k])
			return lr_error_set(err, 0, "CRIU's page server %s sent pages of pid %u at %#" PRIx64 "-%#" PRIx64
					    " that do not match the index's checksum: it serves another dump than -D's (or a "
					    "damaged one)", d->cps->addr.text, x->pid, lo, hi);
		d->cps->verified++;
	}
	return 0;
}

/* The reply at the head of the buffer answers the oldest GET: checked, placed, the rest asked for again. */
static int take_reply(struct lr_lazyd *d, const struct page_server_iov *pi, const char *data, struct lr_error *err)
{
	struct lr_cps *c = d->cps;
	struct cps_req q = c->q[c->head];
	const struct lr_index_record *x = &d->index.recs[q.rec];
	uint64_t placed, len = pi->nr_pages * d->page_size;

	c->head = (c->head + 1) % c->qcap;
	c->len--;
	if (!(x->flags & LR_RANGE_UNVERIFIED) && check_blocks(d, x, q.vaddr, q.vaddr + len, data, err))
		return -1;
	if (d->src.sink.deliver(d->src.sink.ctx, q.rec, q.vaddr, q.vaddr + len, data, &placed, err))
		return -1;
	*(q.urgent ? &d->stats.fault_bytes : &d->stats.drain_bytes) += placed;
	c->bytes += len;
	c->inflight_bytes -= len;
	if (pi->nr_pages < q.npages) { /* the server's page buffer ended there: ask for the rest */
		q.vaddr += len;
		q.npages -= pi->nr_pages;
		return push(d, q, err);
	}
	for (uint32_t k = q.k0; k < q.k1; k++)
		c->inflight[d->index.recs[q.rec].first_checksum + k] = 0;
	return 0;
}

/* 1 when a whole reply was used, 0 when more bytes are needed, -1 on a reply that answers nothing asked. */
static int next_reply(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_cps *c = d->cps;
	struct page_server_iov pi;
	size_t have = c->end - c->start;

	if (have < sizeof(pi))
		return 0;
	memcpy(&pi, c->buf + c->start, sizeof(pi));
	if (!c->len)
		return lr_error_set(err, 0, "CRIU's page server %s sent a reply to nothing asked", c->addr.text);
	const struct cps_req *q = &c->q[c->head];
	if ((pi.cmd & PS_CMD_MASK) != PS_IOV_ADD_F || !pi.nr_pages || pi.nr_pages > q->npages || pi.vaddr != q->vaddr ||
	    pi.dst_id != d->index.recs[q->rec].pid)
		return lr_error_set(err, 0, "CRIU's page server %s answered cmd %#x, %" PRIu64 " pages at %#" PRIx64
				    " of pid %" PRIu64 "; asked for %" PRIu64 " pages at %#" PRIx64 " of pid %u (lr-lazyd "
				    "speaks CRIU 4.2's %zu-byte header; CRIU 4.1's was 24 bytes)", c->addr.text, pi.cmd,
				    pi.nr_pages, pi.vaddr, pi.dst_id, q->npages, q->vaddr, d->index.recs[q->rec].pid,
				    sizeof(pi));
	size_t need = sizeof(pi) + (size_t)pi.nr_pages * d->page_size; /* nr_pages <= q->npages: checked above */
	if (have < need)
		return 0;
	c->start += need;
	return take_reply(d, &pi, c->buf + c->start - need + sizeof(pi), err) ? -1 : 1;
}

static int take_replies(struct lr_lazyd *d, struct lr_error *err)
{
	int rc;
	while ((rc = next_reply(d, err)) > 0)
		;
	return rc;
}

/* CRIU's page server makes a pipe of PIPE_MAX_SIZE (1024) pages for each client when it connects; with
 * fs.pipe-max-size below that, every read fails ("splice: Bad file descriptor" in its log) and it hangs up. A hint
 * for the error when this host's limit is below it (the page server may run here, as in CRIU's own remote tests). */
static const char *pipe_max_hint(void)
{
	unsigned long limit = 0;
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "re");
	int got = f ? fscanf(f, "%lu", &limit) : 0;
	if (f)
		fclose(f);
	return got == 1 && limit < 1024UL * (unsigned long)sysconf(_SC_PAGESIZE)
		       ? "; if it runs on this host: fs.pipe-max-size here is below the 4 MiB it needs for each client "
			 "(sysctl -w fs.pipe-max-size=4194304)"
		       : "";
}

/* One receive per wakeup (the socket is level-triggered: what is left wakes the loop again, after the faults). */
static int on_read(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	struct lr_cps *c = d->cps;
	size_t max_reply = sizeof(struct page_server_iov) + CPS_REQ_MAX_BLOCKS * (size_t)d->index.hdr->block_size;
	(void)rec;

	if (c->start && c->cap - c->end < max_reply) {
		memmove(c->buf, c->buf + c->start, c->end - c->start);
		c->end -= c->start;
		c->start = 0;
	}
	ssize_t n = recv(c->rec.fd, c->buf + c->end, c->cap - c->end, MSG_DONTWAIT);
	if (n == 0)
		return lr_error_set(err, 0, "CRIU's page server %s closed the connection (its dump ended or failed) "
				    "before every page was placed%s", c->addr.text, pipe_max_hint());
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : lr_error_set(err, errno, "receive from CRIU's page "
									     "server %s", c->addr.text);
	c->end += (size_t)n;
	return take_replies(d, err) < 0 ? -1 : 0;
}

static int cps_start(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_cps *c = calloc(1, sizeof(*c));
	if (!c)
		return lr_error_set(err, ENOMEM, "CRIU page server source");
	d->cps = c;
	c->rec.fd = -1;
	c->cap = sizeof(struct page_server_iov) + CPS_REQ_MAX_BLOCKS * (size_t)d->index.hdr->block_size + (1u << 20);
	c->buf = malloc(c->cap);
	c->inflight = calloc(d->index.hdr->checksum_count ? d->index.hdr->checksum_count : 1, 1);
	if (!c->buf || !c->inflight)
		return lr_error_set(err, ENOMEM, "CRIU page server buffers");
	if (lr_addr_parse(d->cfg.criu_ps, &c->addr, err))
		return -1;
	c->rec.fd = lr_net_connect(&c->addr, CPS_IO_TIMEOUT_MS, err);
	if (c->rec.fd < 0)
		return -1;
	c->rec.on_read = c->rec.on_hup = on_read;
	lr_log(d, 1, "connected to CRIU's page server %s", c->addr.text);
	return lr_loop_add(d->epfd, &c->rec, err);
}

static int cps_done(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_cps *c = d->cps;
	struct page_server_iov pi = psi(PS_IOV_CLOSE, 0, 0, 0);
	unsigned long long until = lr_net_now_ns() + CPS_IO_TIMEOUT_MS * 1000000ULL;
	int32_t status = -1;

	while (c->len) { /* replies to GETs still in flight (pages placed meanwhile) come first */
		struct pollfd p = {c->rec.fd, POLLIN, 0};
		if (lr_net_now_ns() > until)
			return lr_error_set(err, ETIMEDOUT, "CRIU's page server %s: replies still missing", c->addr.text);
		int rc = poll(&p, 1, 100);
		if (rc < 0 && errno != EINTR)
			return lr_error_set(err, errno, "poll for CRIU's page server");
		if (rc > 0 && on_read(d, &c->rec, err))
			return -1;
	}
	if (lr_net_send_all(c->rec.fd, &pi, sizeof(pi), until, err) ||
	    lr_net_recv_all(c->rec.fd, &status, sizeof(status), until, err))
		return -1;
	lr_log(d, 1, "CRIU's page server %s closed with status %d: %" PRIu64 " bytes in %" PRIu64 " requests, %" PRIu64
	       " blocks verified, %" PRIu64 " cut by its page buffer placed unverified", c->addr.text, status, c->bytes, c->requests,
	       c->verified, c->cut);
	return status ? lr_error_set(err, 0, "CRIU's page server %s ended with status %d", c->addr.text, status) : 0;
}

static void cps_close(struct lr_lazyd *d)
{
	struct lr_cps *c = d->cps;
	if (!c)
		return;
	if (c->rec.fd >= 0)
		close(c->rec.fd);
	free(c->buf);
	free(c->q);
	free(c->inflight);
	free(c);
	d->cps = NULL;
}

static int criu_start(struct lr_src *s, struct lr_error *err)
{
	return cps_start(s->d, err);
}

/* Asked for (unless in flight already); nothing is ever here before it arrives. */
static int criu_get(struct lr_src *s, uint32_t rec, uint64_t a, uint64_t b, enum lr_get why, const char **data,
		    struct lr_error *err)
{
	struct lr_cps *c = s->d->cps;
	uint64_t before = c->requests;
	(void)data;
	if (why == LR_GET_HERE)
		return LR_SRC_WAIT;
	if (cps_want(s->d, rec, a, b, why == LR_GET_FAULT, err))
		return -1;
	return c->requests > before ? LR_SRC_ASKED : LR_SRC_WAIT;
}

static uint64_t criu_sweep_pages(const struct lr_src *s)
{
	return CPS_REQ_MAX_BLOCKS * (s->d->index.hdr->block_size / s->d->page_size);
}

/* The drain keeps less than a window asked for: a fault's GET waits behind at most that. */
static bool criu_window_full(const struct lr_src *s)
{
	return s->d->cps->inflight_bytes >= CPS_WINDOW;
}

static int criu_done(struct lr_src *s, const struct lr_wset *w)
{
	struct lr_error err;
	(void)w;
	if (cps_done(s->d, &err))
		lr_log(s->d, 0, "warning: every page is placed, but closing CRIU's page server failed: %s", err.msg);
	return 0;
}

static void criu_close(struct lr_src *s)
{
	cps_close(s->d);
}

const struct lr_src_ops lr_src_criu_ops = {
	.name = "criu-page-server",
	.unverified_ok = true,
	.start = criu_start,
	.get = criu_get,
	.sweep_pages = criu_sweep_pages,
	.window_full = criu_window_full,
	.done = criu_done,
	.close = criu_close,
};
