/* src_lrps.c: an lr-pageserver as lr-lazyd's page source (source.h), inside the event loop (see remote.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "blocks.h"
#include "guard.h"
#include "lazyd.h"
#include "lr_proto_io.h"
#include "remote.h"
#include "uffd.h"

#define LR_MAX_BAD_BLOCKS 64           /* checksum failures in transit tolerated (each refetched) */
#define LR_SWEEP_INFLIGHT (8u << 20)   /* bytes asked for at once after the bulk stream ended */
#define LR_BACKOFF_MIN_MS 100
#define LR_BACKOFF_MAX_MS 2000
#define LR_IO_TIMEOUT_MS 10000
#define LR_CHAN_BATCH (64u << 10)       /* bytes of frames handled per wakeup before faults get a turn */
#define LR_STALL_MS 5000               /* waiting for data this long with none arriving: the connection is dead */

/* Something asked for has not arrived yet: pages on the urgent channel, or a bulk stream being read. */
static bool waiting(const struct lr_remote *r)
{
	return r->inflight_bytes || (r->bulk_started && !r->bulk_ended && !r->bulk_paused);
}

/* About to ask for data: a quiet period starts now unless one is already running. */
static void expect(struct lr_remote *r)
{
	if (!waiting(r))
		r->wait_ns = lr_now_ns();
}

/* Silence that means the connection is dead: LR_STALL_MS, or the source timeout when shorter. */
static uint64_t stall_ms(const struct lr_remote *r)
{
	return r->timeout_ms < LR_STALL_MS ? r->timeout_ms : LR_STALL_MS;
}

static int send_frame(struct lr_lazyd *d, int fd, uint16_t type, const void *p, uint32_t len, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	uint16_t flags = type == LR_GET_PAGES || type == LR_BULK_START ? r->want : 0;
	/* A full send buffer means the peer has stopped acknowledging: wait no longer than a stall. */
	return lr_send_frame(fd, type, flags, ++r->next_req, p, len, lr_net_now_ns() + stall_ms(r) * 1000000ULL, err);
}

/* The connection is gone: forget what was asked for, reconnect from remote_tick. */
static void lost(struct lr_lazyd *d, const char *why)
{
	struct lr_remote *r = d->remote;
	struct lr_error ignored;
	struct lr_chan *chans[] = {&r->urgent, &r->bulk};

	if (!r->connected)
		return;
	for (int i = 0; i < 2; i++)
		if (chans[i]->rec.fd >= 0) {
			if (i == 0 || !r->bulk_paused)
				lr_loop_del(d->epfd, &chans[i]->rec, &ignored);
			close(chans[i]->rec.fd);
			chans[i]->rec.fd = -1;
			chans[i]->start = chans[i]->end = 0;
		}
	r->connected = r->bulk_started = r->bulk_ended = r->bulk_paused = false;
	memset(r->inflight, 0, d->index.hdr->checksum_count);
	if (r->hooks.lost)
		r->hooks.lost(r->hooks.ctx);
	r->inflight_bytes = 0;
	r->lost_at_ns = lr_now_ns();
	r->retry_at_ns = r->lost_at_ns;
	r->backoff_ms = LR_BACKOFF_MIN_MS;
	lr_log(d, 0, "lost the page server %s: %s; reconnecting for up to %llu s", r->addr.text, why,
	       (unsigned long long)(r->timeout_ms / 1000));
}

static int on_chan(struct lr_lazyd *d, struct lr_chan *c, bool bulk, struct lr_error *err);

/*
 * A frame that cannot be right arrived from a server that proved it holds the secret: bytes damaged on the
 * way (TCP's checksum misses some), or a confused peer. Drop the connection and reconnect, at most
 * LR_MAX_BAD_BLOCKS times in all (checksum failures included); then it is an error.
 */
static int damaged(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	if (++r->bad_blocks > LR_MAX_BAD_BLOCKS)
		return lr_error_set(err, 0, "%s (after %" PRIu64 " damaged frames or blocks from the page server)",
				    err->msg, r->bad_blocks - 1);
	char why[sizeof(err->msg) + 32];
	snprintf(why, sizeof(why), "damaged frame: %s", err->msg);
	lost(d, why);
	return 0;
}

static void clear_inflight(struct lr_remote *r, const struct lr_index *idx, const struct lr_pages_hdr *h)
{
	const struct lr_index_record *rec = &idx->recs[h->record];
	for (uint32_t k = 0; k < h->nblocks; k++) {
		uint8_t *f = &r->inflight[rec->first_checksum + h->first_block + k];
		if (*f) {
			*f = 0;
			r->inflight_bytes -= r->inflight_bytes < idx->hdr->block_size ? r->inflight_bytes : idx->hdr->block_size;
		}
	}
}

void lr_remote_measured(struct lr_lazyd *d, uint64_t bytes, uint64_t ns, const char *how)
{
	struct lr_remote *r = d->remote;
	struct lr_error err;
	r->measured = true;
	d->stats.link_bps = ns ? bytes * 1000000000ULL / ns : 0;
	if (!strcmp(d->cfg.compress, "auto") && d->stats.link_bps < LR_COMPRESS_BELOW_BPS && !d->cfg.drain_rate) {
		r->want |= LR_F_COMPRESS;
		if (r->bulk_started && r->connected &&
		    lr_send_frame(r->urgent.rec.fd, LR_TUNE, r->want, ++r->next_req, NULL, 0,
				  lr_now_ns() + stall_ms(r) * 1000000ULL, &err))
			lost(d, err.msg);
	}
	d->stats.compress = r->want & LR_F_COMPRESS;
	lr_log(d, 1, "link %.1f MB/s (%llu bytes %s): page data %s", (double)d->stats.link_bps / 1e6,
	       (unsigned long long)bytes, how, d->stats.compress ? "compressed (zstd)" : "as it is, zero blocks compressed");
}

/*
 * --compress auto with nothing fetched ahead: the bulk stream measures the link. What waited in the socket
 * buffers (the stream was paused, or lr-lazyd was busy) arrives at memory speed, so the first
 * LR_MEASURE_SKIP_NS after the stream (re)starts are not counted.
 */
#define LR_MEASURE_SKIP_NS (10ULL * 1000000ULL)

static void measure_bulk(struct lr_lazyd *d, uint32_t wire)
{
	struct lr_remote *r = d->remote;
	uint64_t now = lr_now_ns();
	if (r->measured || strcmp(d->cfg.compress, "auto"))
		return;
	if (!r->bulk_t0)
		r->bulk_t0 = now + LR_MEASURE_SKIP_NS;
	if (now < r->bulk_t0)
		return;
	r->bulk_wire += wire;
	if (r->bulk_wire >= LR_MEASURE_BYTES)
		lr_remote_measured(d, r->bulk_wire, r->bulk_active_ns + (now - r->bulk_t0), "streamed");
}

static int on_pages(struct lr_lazyd *d, struct lr_chan *c, bool bulk, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	struct lr_pages_hdr h;
	const char *data, *payload = c->payload;
	uint32_t len = c->hdr.length;
	uint64_t a, placed = 0;

	if (bulk)
		measure_bulk(d, len);
	if (lr_remote_inflate(r, c->hdr.flags, &payload, &len, err))
		return damaged(d, err);
	if (lr_pages_frame_check(&d->index, payload, len, &h, &a, &data, err)) {
		if (err->errnum != EBADMSG)
			return damaged(d, err);
		if (++r->bad_blocks > LR_MAX_BAD_BLOCKS)
			return -1;
		lr_log(d, 0, "%s; asking for it again", err->msg);
		clear_inflight(r, &d->index, &h);
		if (r->hooks.failed && r->hooks.failed(r->hooks.ctx, &h, err))
			return -1;
		return 0; /* the pages stay pending: the fault retries / the sweep asks again */
	}
	clear_inflight(r, &d->index, &h);
	*(bulk ? &r->bulk_bytes : &r->urgent_bytes) += h.data_len;
	/* the prefetch layer places what it asked for itself */
	int ahead = r->hooks.arrived ? r->hooks.arrived(r->hooks.ctx, &h, a, data, c->hdr.length, err) : 0;
	if (ahead < 0 ||
	    (!ahead && d->src.sink.deliver(d->src.sink.ctx, (uint32_t)h.record, a, a + h.data_len, data, &placed, err)))
		return -1;
	*(bulk ? &d->stats.drain_bytes : &d->stats.fault_bytes) += placed;
	return 0;
}

static int on_frame(struct lr_lazyd *d, struct lr_chan *c, bool bulk, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	switch (c->hdr.type) {
	case LR_PAGES:
		return on_pages(d, c, bulk, err);
	case LR_BULK_END:
		r->bulk_ended = bulk;
		lr_log(d, 1, "bulk stream complete: %" PRIu64 " bytes streamed, %" PRIu64 " on request",
		       r->bulk_bytes, r->urgent_bytes);
		return bulk ? 0 : lr_error_set(err, 0, "the page server sent BULK_END on the urgent channel");
	case LR_ERROR:
		return lr_chan_refused(c, err) && lr_chan_retryable(c) ? damaged(d, err) : -1;
	default:
		lr_error_set(err, 0, "unexpected %s frame from the page server on the %s channel",
			     lr_frame_name(c->hdr.type), bulk ? "bulk" : "urgent");
		return damaged(d, err);
	}
}

/* Stop reading the bulk channel until the drain rate allows more (the drain's turn resumes it: lrps_resume). */
static int pause_bulk(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	if (r->bulk_paused)
		return 0;
	r->bulk_paused = true;
	uint64_t now = lr_now_ns();
	if (r->bulk_t0 && now > r->bulk_t0) /* the link is measured while the stream runs */
		r->bulk_active_ns += now - r->bulk_t0;
	r->bulk_t0 = 0;
	return lr_loop_del(d->epfd, &r->bulk.rec, err);
}

static int resume_bulk(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	expect(r);
	r->bulk_paused = false;
	if (lr_loop_add(d->epfd, &r->bulk.rec, err))
		return -1;
	return lr_chan_has_frame(&r->bulk) ? on_chan(d, &r->bulk, true, err) : 0;
}

/* The frames that have arrived, up to LR_CHAN_BATCH bytes of them: then back to the loop (faults first). */
static int on_chan(struct lr_lazyd *d, struct lr_chan *c, bool bulk, struct lr_error *err)
{
	uint64_t taken = 0;
	while (taken < LR_CHAN_BATCH && d->remote->connected) {
		if (bulk && d->src.sink.drain_wait_ms(d->src.sink.ctx))
			return pause_bulk(d, err); /* --drain-rate: TCP holds the server back meanwhile */
		int rc = lr_chan_next(c, err);
		struct lr_error why;
		if (rc < 0 && c->end - c->start >= sizeof(c->hdr) && lr_frame_check(&c->hdr, LR_FRAME_MAX, &why))
			return damaged(d, err); /* a malformed header: the handshake proved the peer, so damage */
		if (rc < 0) {
			lost(d, err->msg);
			return 0;
		}
		if (rc == 0)
			return 0;
		taken += sizeof(c->hdr) + c->hdr.length;
		if (lr_frame_sum_check(&c->hdr, c->payload, err))
			return damaged(d, err); /* a DONE, BULK_END or ERROR damaged on the way */
		if (on_frame(d, c, bulk, err))
			return -1;
	}
	return 0;
}

static bool buffered(const struct lr_lazyd *d)
{
	const struct lr_remote *r = d->remote;
	return r && r->connected && (lr_chan_has_frame(&r->urgent) || (!r->bulk_paused && lr_chan_has_frame(&r->bulk)));
}

static int pump(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	if (!buffered(d))
		return 0;
	if (lr_chan_has_frame(&r->urgent) && on_chan(d, &r->urgent, false, err))
		return -1;
	return r->connected && !r->bulk_paused && lr_chan_has_frame(&r->bulk) ? on_chan(d, &r->bulk, true, err) : 0;
}

static int on_urgent(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	return on_chan(d, lr_container_of(rec, struct lr_chan, rec), false, err);
}

static int on_bulk(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	return on_chan(d, lr_container_of(rec, struct lr_chan, rec), true, err);
}

static int add_channels(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	r->urgent.rec.on_read = r->urgent.rec.on_hup = on_urgent;
	r->bulk.rec.on_read = r->bulk.rec.on_hup = on_bulk;
	r->bulk.rec.background = true;
	if (lr_loop_add(d->epfd, &r->urgent.rec, err) || lr_loop_add(d->epfd, &r->bulk.rec, err))
		return -1;
	r->connected = true;
	r->lost_at_ns = 0;
	r->urgent.rx_ns = r->bulk.rx_ns = r->wait_ns = lr_now_ns();
	return 0;
}

/* The bulk channel's handshake right after the fetch met a damaged frame: the urgent channel goes too, and
 * remote_tick connects both again, as after a lost connection. */
static void lost_at_start(struct lr_lazyd *d, const char *why)
{
	struct lr_remote *r = d->remote;
	close(r->urgent.rec.fd);
	r->urgent.rec.fd = -1;
	r->bad_blocks++;
	r->lost_at_ns = r->retry_at_ns = lr_now_ns();
	r->backoff_ms = LR_BACKOFF_MIN_MS;
	lr_log(d, 0, "lost the page server %s: damaged frame: %s; reconnecting for up to %llu s", r->addr.text, why,
	       (unsigned long long)(r->timeout_ms / 1000));
}

static int remote_start(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	r->inflight = calloc(d->index.hdr->checksum_count ? d->index.hdr->checksum_count : 1, 1);
	r->urgent.buf = r->urgent.buf ? r->urgent.buf : malloc(LR_CHAN_BUF); /* COMMIT may have made it */
	r->bulk.buf = malloc(LR_CHAN_BUF);
	if (!r->inflight || !r->urgent.buf || !r->bulk.buf)
		return lr_error_set(err, ENOMEM, "remote page source buffers");
	r->bulk.rec.fd = lr_remote_handshake(r, LR_CHANNEL_BULK, d->index.hdr->checkpoint_id, (int)r->timeout_ms, err);
	if (r->bulk.rec.fd >= 0)
		return add_channels(d, err);
	if (err->errnum != EBADMSG && err->errnum != EPROTO)
		return -1;
	lost_at_start(d, err->msg);
	return 0;
}

int lr_remote_ask(struct lr_lazyd *d, const struct lr_page_req *q, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	const struct lr_index_record *x = &d->index.recs[q->record];
	if (!r->connected)
		return 0;
	for (uint32_t k = 0; k < q->nblocks; k++)
		if (!r->inflight[x->first_checksum + q->first_block + k]) {
			r->inflight[x->first_checksum + q->first_block + k] = 1;
			r->inflight_bytes += d->index.hdr->block_size;
		}
	expect(r);
	r->requests++;
	if (send_frame(d, r->urgent.rec.fd, LR_GET_PAGES, q, sizeof(*q), err))
		lost(d, err->msg);
	return 0;
}

static int remote_want(struct lr_lazyd *d, uint32_t rec, uint64_t a, uint64_t b, bool hint, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	const struct lr_index_record *x = &d->index.recs[rec];
	uint64_t bs = d->index.hdr->block_size;
	uint32_t per = LR_PAGES_MAX_DATA / (uint32_t)bs, k0, k1, k, g0, g1;

	if (!r->connected)
		return 0; /* asked for again once reconnected */
	lr_blocks_of(&d->index, x, a, b, &k0, &k1);
	for (k = k0; lr_blocks_next(r->inflight + x->first_checksum, &k, k1, per, 1, &g0, &g1);) {
		struct lr_page_req q = {rec, g0, g1 - g0};
		expect(r);
		r->inflight_bytes += (uint64_t)q.nblocks * bs;
		r->requests++;
		if (send_frame(d, r->urgent.rec.fd, LR_GET_PAGES, &q, sizeof(q), err)) {
			lost(d, err->msg);
			return 0;
		}
	}
	if (hint && r->bulk_started && lr_now_ns() - r->hint_at_ns > 1000000ULL) {
		struct lr_page_req q = {rec, k0, 1};
		r->hint_at_ns = lr_now_ns();
		if (send_frame(d, r->urgent.rec.fd, LR_HINT, &q, sizeof(q), err))
			lost(d, err->msg);
	}
	return 0;
}

/* Where the bulk stream should begin: the first pending page of the first task that has one. */
static struct lr_page_req first_pending(const struct lr_lazyd *d)
{
	for (size_t i = 0; i < d->ntasks; i++) {
		const struct lr_spans *s = &d->tasks[i]->spans;
		for (size_t k = s->cursor; !d->tasks[i]->gone && k < s->n; k++) {
			struct lr_run run;
			if (!lr_spans_run_in(s, k, 0, s->v[k].npages, &run))
				continue;
			const struct lr_index_record *x = &d->index.recs[s->v[k].rec];
			uint64_t bs = d->index.hdr->block_size, src = s->v[k].src + run.page * d->page_size;
			return (struct lr_page_req){s->v[k].rec, (uint32_t)((src - x->start / bs * bs) / bs), 1};
		}
	}
	return (struct lr_page_req){0, 0, 1};
}

int lr_remote_bulk_start(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	if (!r->connected || r->bulk_started || !d->cfg.drain || (r->hooks.busy && r->hooks.busy(r->hooks.ctx)))
		return 0; /* the working set first: the prefetch layer starts the stream once it is in */
	struct lr_page_req q = first_pending(d);
	if (!d->drain_epoch_ns)
		d->drain_epoch_ns = lr_now_ns();
	expect(r);
	if (send_frame(d, r->bulk.rec.fd, LR_BULK_START, &q, sizeof(q), err)) {
		lost(d, err->msg);
		return 0;
	}
	r->bulk_started = true;
	return 0;
}

static int remote_wait_ms(const struct lr_lazyd *d)
{
	const struct lr_remote *r = d->remote;
	if (!r || r->connected)
		return -1;
	uint64_t now = lr_now_ns();
	return r->retry_at_ns > now ? (int)((r->retry_at_ns - now) / 1000000ULL) + 1 : 0;
}

/*
 * A committed restore commits again on its new session: the server dropped it as holder when the old one
 * ended. *refused: another destination took the tree meanwhile (this one must not run it any more).
 */
static int recommit(struct lr_lazyd *d, bool *refused, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	uint64_t id = ++r->next_req, until = lr_now_ns() + 1000 * 1000000ULL;

	if (!r->committed)
		return 0;
	if (lr_send_frame(r->urgent.rec.fd, LR_COMMIT, 0, id, NULL, 0, until, err) ||
	    lr_remote_await(d, LR_COMMIT, id, until, refused, err))
		return -1;
	lr_log(d, 0, "committed again on session %llu", (unsigned long long)r->session);
	return 0;
}

static int reconnect(struct lr_lazyd *d, bool *refused, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	const uint8_t *cid = d->index.hdr->checkpoint_id;
	r->session = 0;
	r->urgent.rec.fd = lr_remote_handshake(r, LR_CHANNEL_URGENT, cid, 1000, err);
	if (r->urgent.rec.fd < 0)
		return -1;
	r->urgent.start = r->urgent.end = 0;
	if (recommit(d, refused, err) ||
	    (r->bulk.rec.fd = lr_remote_handshake(r, LR_CHANNEL_BULK, cid, 1000, err)) < 0) {
		close(r->urgent.rec.fd);
		r->urgent.rec.fd = -1;
		return -1;
	}
	return add_channels(d, err);
}

/*
 * Connected, waiting for data, and nothing has arrived for LR_STALL_MS (at most the source timeout): a
 * partition or a peer that stopped answering; TCP alone would wait many minutes. Drop it and reconnect.
 */
static void check_stall(struct lr_lazyd *d, uint64_t now)
{
	struct lr_remote *r = d->remote;
	uint64_t quiet = r->wait_ns;
	if (r->urgent.rx_ns > quiet)
		quiet = r->urgent.rx_ns;
	if (r->bulk.rx_ns > quiet)
		quiet = r->bulk.rx_ns;
	if (!waiting(r) || (now - quiet) / 1000000ULL < stall_ms(r))
		return;
	char why[96];
	snprintf(why, sizeof(why), "nothing received for %.1f s while waiting for pages", (double)(now - quiet) / 1e9);
	r->stalls++;
	lost(d, why);
}

static int remote_tick(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	uint64_t now = lr_now_ns();
	if (r && r->connected)
		check_stall(d, now);
	if (!r || r->connected || now < r->retry_at_ns)
		return 0;
	uint64_t lost_for_ns = now - r->lost_at_ns;
	bool refused = false;
	if (!reconnect(d, &refused, err)) {
		r->reconnects++;
		lr_log(d, 0, "reconnected to the page server %s after %.3f s (session %llu)", r->addr.text,
		       (double)lost_for_ns / 1e9, (unsigned long long)r->session);
		return d->finished ? lr_remote_bulk_start(d, err) : 0;
	}
	if (refused)
		return lr_error_set(err, 0, "the page server %s let another destination take the tree while this one was "
				    "disconnected (%s): this restore's tree must not run on", r->addr.text, err->msg);
	bool damage = err->errnum == EBADMSG || err->errnum == EPROTO; /* a handshake frame damaged on the way */
	if (!damage && (strstr(err->msg, "another checkpoint") || strstr(err->msg, "secret") ||
			strstr(err->msg, "server refused")))
		return -1;
	if (lost_for_ns / 1000000ULL >= r->timeout_ms)
		return lr_error_set(err, 0, "page server %s unreachable for %llu s (last: %s): the restored tree is "
				    "stopped; the checkpoint on the source is intact", r->addr.text,
				    (unsigned long long)(r->timeout_ms / 1000), err->msg);
	r->retry_at_ns = now + r->backoff_ms * 1000000ULL;
	r->backoff_ms = r->backoff_ms * 2 > LR_BACKOFF_MAX_MS ? LR_BACKOFF_MAX_MS : r->backoff_ms * 2;
	return 0;
}

/* This restore's working set, in WORKINGSET frames, for the server to store beside the checkpoint. */
static int send_wset(struct lr_lazyd *d, const struct lr_wset *w, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	char *bytes;
	size_t len, off = 0;

	if (lr_wset_encode(w, &bytes, &len, err))
		return -1;
	int rc = 0;
	while (!rc && off < len) {
		uint32_t n = len - off > LR_REQUEST_MAX ? LR_REQUEST_MAX : (uint32_t)(len - off);
		rc = lr_send_frame(r->urgent.rec.fd, LR_WORKINGSET, off + n < len ? LR_F_MORE : 0, ++r->next_req,
				   bytes + off, n, lr_now_ns() + stall_ms(r) * 1000000ULL, err);
		off += n;
	}
	free(bytes);
	return rc;
}

static int remote_done(struct lr_lazyd *d, const struct lr_wset *w, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	uint64_t until = lr_now_ns() + LR_IO_TIMEOUT_MS * 1000000ULL;

	if (!r->connected)
		return lr_error_set(err, 0, "not connected to the page server");
	if ((w && w->n && send_wset(d, w, err)) || send_frame(d, r->urgent.rec.fd, LR_DONE, NULL, 0, err))
		return -1;
	return lr_remote_await(d, LR_DONE, r->next_req, until, NULL, err);
}

static void remote_close(struct lr_lazyd *d)
{
	struct lr_remote *r = d->remote;
	if (!r)
		return;
	if (r->urgent.rec.fd >= 0)
		close(r->urgent.rec.fd);
	if (r->bulk.rec.fd >= 0)
		close(r->bulk.rec.fd);
	free(r->urgent.buf);
	free(r->bulk.buf);
	free(r->inflight);
	free(r->zbuf);
	ZSTD_freeDCtx(r->zdx);
	explicit_bzero(r->secret, sizeof(r->secret));
	free(r);
	d->remote = NULL;
}

/* The guardian first (it must not inherit the page server's sockets), then the checkpoint's files. */
static int lrps_open(struct lr_src *s, struct lr_error *err)
{
	struct lr_lazyd *d = s->d;
	d->remote = calloc(1, sizeof(*d->remote));
	if (!d->remote)
		return lr_error_set(err, ENOMEM, "remote source");
	d->remote->urgent.rec.fd = d->remote->bulk.rec.fd = -1;
	d->remote->timeout_ms = d->cfg.source_timeout_ms;
	if (d->cfg.guard && lr_guard_fork(&d->guard_fd, err))
		return -1;
	return lr_remote_fetch(d, err);
}

static int lrps_prepare(struct lr_src *s, const char *wset, bool missing_ok, struct lr_error *err)
{
	(void)wset;
	(void)missing_ok;
	(void)err;
	if (!strcmp(s->d->cfg.compress, "on"))
		s->d->remote->want |= LR_F_COMPRESS;
	return 0;
}

static int lrps_commit(struct lr_src *s, struct lr_error *err)
{
	return lr_remote_commit(s->d, err);
}

static void lrps_abort_unrun(struct lr_src *s, const char *why)
{
	lr_remote_abort_unrun(s->d, why);
}

static int lrps_start(struct lr_src *s, struct lr_error *err)
{
	return remote_start(s->d, err);
}

/* Asked for on the urgent channel (unless in flight already); nothing is ever here before it arrives. */
static int lrps_get(struct lr_src *s, uint32_t rec, uint64_t a, uint64_t b, enum lr_get why, const char **data,
		    struct lr_error *err)
{
	struct lr_remote *r = s->d->remote;
	uint64_t before = r->inflight_bytes;
	(void)data;
	if (why == LR_GET_HERE)
		return LR_SRC_WAIT;
	if (remote_want(s->d, rec, a, b, why == LR_GET_FAULT, err))
		return -1;
	return r->inflight_bytes > before ? LR_SRC_ASKED : LR_SRC_WAIT;
}

static uint64_t lrps_sweep_pages(const struct lr_src *s)
{
	return LR_PAGES_MAX_DATA / s->d->page_size;
}

/* Called only once the drain rate allows more. */
static int lrps_resume(struct lr_src *s, struct lr_error *err)
{
	struct lr_remote *r = s->d->remote;
	if (!r->connected || !r->bulk_paused)
		return 0;
	return resume_bulk(s->d, err) ? -1 : 1;
}

/* The drain asks for what the bulk stream could not place, once it ended, less than LR_SWEEP_INFLIGHT at once. */
static bool lrps_window_full(const struct lr_src *s)
{
	const struct lr_remote *r = s->d->remote;
	return !r->connected || !r->bulk_ended || r->inflight_bytes >= LR_SWEEP_INFLIGHT;
}

static int lrps_finished(struct lr_src *s, struct lr_error *err)
{
	return lr_remote_bulk_start(s->d, err);
}

static int lrps_tick(struct lr_src *s, struct lr_error *err)
{
	return pump(s->d, err) || remote_tick(s->d, err) ? -1 : 0;
}

static int lrps_wait_ms(const struct lr_src *s, bool *ready)
{
	*ready = buffered(s->d);
	return remote_wait_ms(s->d);
}

/* The server keeps this restore's working set beside the checkpoint. */
static int lrps_done(struct lr_src *s, const struct lr_wset *w)
{
	struct lr_error err;
	if (remote_done(s->d, w, &err))
		lr_log(s->d, 0, "warning: every page is placed, but the page server was not told (%s): it keeps the "
		       "checkpoint as undelivered", err.msg);
	else
		lr_log(s->d, 1, "the page server acknowledged DONE: the checkpoint is delivered");
	return 1;
}

static void lrps_stats(const struct lr_src *s, struct lr_stats *st)
{
	const struct lr_remote *r = s->d->remote;
	if (!r)
		return;
	st->zstd_frames = r->zstd_frames;
	st->wire_bytes = r->wire_bytes;
}

static void lrps_close(struct lr_src *s)
{
	remote_close(s->d);
}

const struct lr_src_ops lr_src_lrps_ops = {
	.name = "lr-pageserver",
	.live_ok = true,
	.yield_to_faults = true,
	.open = lrps_open,
	.prepare = lrps_prepare,
	.commit = lrps_commit,
	.abort_unrun = lrps_abort_unrun,
	.start = lrps_start,
	.get = lrps_get,
	.sweep_pages = lrps_sweep_pages,
	.resume = lrps_resume,
	.window_full = lrps_window_full,
	.finished = lrps_finished,
	.tick = lrps_tick,
	.wait_ms = lrps_wait_ms,
	.done = lrps_done,
	.stats = lrps_stats,
	.close = lrps_close,
};
