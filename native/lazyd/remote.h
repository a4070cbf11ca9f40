/*
 * remote.h: lr-lazyd's remote page source, an lr-pageserver (lr_proto.h).
 *
 * Before listening, the daemon fetches the checkpoint's files into its images
 * dir (metadata whole; pages files sparse, with only their eager ranges
 * filled and verified). Then faults are served by GET_PAGES on the urgent
 * channel (the fault waits, deferred, until the bytes arrive), and after
 * "restore finished" the bulk channel streams everything else; each PAGES
 * frame is verified block by block against the index and placed into every
 * task that still needs those pages. What the stream could not place is asked
 * for again at its end. A dropped connection is re-established (with backoff)
 * until --source-timeout; past it the daemon fails and its guardian kills the
 * tree: the checkpoint on the source is untouched.
 */
#ifndef LR_REMOTE_H
#define LR_REMOTE_H

#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "lr_error.h"
#include "lr_net.h"
#include "lr_proto.h"
#include "lr_zpages.h"

struct lr_lazyd;

struct lr_chan {               /* one connection's receive side: bytes [start, end) of buf not yet parsed */
	struct lr_fdrec rec;
	struct lr_frame hdr;       /* the frame chan_next returned */
	const char *payload;       /* its payload, inside buf: valid until the next chan_next */
	char *buf;                 /* LR_CHAN_BUF bytes: several frames per recv */
	size_t start, end;
	uint64_t rx_ns;            /* when bytes last arrived */
};

/* Room for the largest frame plus what one recv may bring beyond it. */
#define LR_CHAN_BUF ((size_t)LR_FRAME_MAX + sizeof(struct lr_frame) + (1u << 20))

/* chan.c. Non-blocking: 1 with a whole frame in c->hdr / c->payload, 0 for more later, -1 when the connection is
 * gone (or a header is malformed). */
int lr_chan_next(struct lr_chan *c, struct lr_error *err);
/* A whole frame waits in c's buffer. */
bool lr_chan_has_frame(const struct lr_chan *c);
/* The ERROR frame in c as err (returns -1). */
int lr_chan_refused(const struct lr_chan *c, struct lr_error *err);
/* That refusal was of a request that may have been damaged on the way (not the secret, version or session). */
bool lr_chan_retryable(const struct lr_chan *c);

/*
 * What the prefetch layer over this source (src_prefetch.c) sees before the rest: called by src_lrps.c when set
 * (ctx is the layer's), so the layer is not called by name.
 */
struct lr_remote_hooks {
	void *ctx;
	/* PAGES arrived, checked: 1 when the layer asked for them ahead and took them (placed what it places),
	 * 0 when they go to the sink as usual, -1 on error. wire: the payload's size on the link. */
	int (*arrived)(void *ctx, const struct lr_pages_hdr *h, uint64_t a, const char *data, uint32_t wire,
		       struct lr_error *err);
	/* A frame failed its checksum (its pages stay pending). */
	int (*failed)(void *ctx, const struct lr_pages_hdr *h, struct lr_error *err);
	/* The connection was lost: what was asked for is forgotten. */
	void (*lost)(void *ctx);
	/* The bulk stream waits (the working set first). */
	bool (*busy)(void *ctx);
};

struct lr_remote {
	struct lr_addr addr;
	uint8_t secret[LR_SECRET_SIZE];
	uint8_t checkpoint_id[16];
	uint64_t session;
	struct lr_chan urgent, bulk;
	bool connected;
	bool bulk_started, bulk_ended;
	bool bulk_paused;          /* --drain-rate: the bulk channel is out of the event loop for now */
	uint8_t *inflight;         /* per checksum index: asked for on the urgent channel */
	uint64_t inflight_bytes;
	uint64_t next_req;
	uint64_t lost_at_ns;       /* 0 while connected */
	uint64_t retry_at_ns;      /* next reconnection attempt */
	uint64_t backoff_ms;
	uint64_t timeout_ms;       /* --source-timeout */
	uint64_t reconnects, bad_blocks, requests, bulk_bytes, urgent_bytes;
	uint64_t hint_at_ns;       /* last HINT sent */
	uint64_t wait_ns;          /* when lr-lazyd last began waiting for data with nothing outstanding */
	uint64_t stalls;           /* connections given up for silence */
	uint16_t want;             /* flags of GET_PAGES and BULK_START: LR_F_ZSTD, and LR_F_COMPRESS on a slow link */
	ZSTD_DCtx *zdx;            /* inflating LR_F_ZSTD frames into zbuf */
	char *zbuf;
	uint64_t zstd_frames;      /* PAGES frames that came compressed */
	bool measured;             /* --compress auto: the link was measured (fetched ahead, or the bulk stream) */
	uint64_t bulk_wire, bulk_t0; /* ... the bulk stream's bytes counted, when the running stretch began ... */
	uint64_t bulk_active_ns;   /* ... and how long it ran before that stretch */
	uint64_t wire_bytes;       /* PAGES payload bytes as they crossed the link */
	bool committed;            /* the server answered COMMIT: this restore's tree may run (commit.c) */
	struct lr_remote_hooks hooks;
};

/* The source is lr_src_lrps_ops (source.h, src_lrps.c); these are its parts the other files use. */

/* Connect, authenticate and fetch the checkpoint into cfg.images_dir (before the index is opened). */
int lr_remote_fetch(struct lr_lazyd *d, struct lr_error *err);
/* GET_PAGES for exactly q (its blocks marked in flight), unless the connection is down. */
int lr_remote_ask(struct lr_lazyd *d, const struct lr_page_req *q, struct lr_error *err);
/* "restore finished": start the bulk stream (from the first pending page). */
int lr_remote_bulk_start(struct lr_lazyd *d, struct lr_error *err);
/* chan.c. Blocking: read the urgent channel until a frame of type `type` answering req_id arrives (other frames, such
 * as PAGES asked for earlier, are skipped), by until_ns. An ERROR is an error; *refused (unless NULL) tells a
 * refusal by the server's word from one of a request damaged on the way. */
int lr_remote_await(struct lr_lazyd *d, uint16_t type, uint64_t req_id, uint64_t until_ns, bool *refused,
		    struct lr_error *err);

/*
 * commit.c: this restore's tree and the page server. COMMIT once the checkpoint is fetched, before lr-lazyd
 * reports listening (CRIU's restore starts only after that): the server answers when no other destination
 * holds the tree. A lost connection is made again and COMMIT sent again within --source-timeout; a refusal
 * (ERROR busy) is an error. Nothing to do without a page server.
 */
int lr_remote_commit(struct lr_lazyd *d, struct lr_error *err);
/*
 * Best effort, before exiting: ABORT ("this tree never ran and never will") when this restore committed and
 * its tree cannot have run: CRIU's restore closed its connection before "restore finished", or CRIU never
 * connected (none waits to be accepted either). Never once "restore finished" arrived. Waits up to
 * LR_ABORT_WAIT_MS for the answer; why is logged with it.
 */
void lr_remote_abort_unrun(struct lr_lazyd *d, const char *why);

#define LR_MEASURE_BYTES (16u << 20)        /* the link is measured over this much page data */
#define LR_COMPRESS_BELOW_BPS (250ULL << 20) /* zstd -1 packs pages faster than this on one core */
/* The link carried `bytes` in `ns`: --compress auto turns compression on below LR_COMPRESS_BELOW_BPS. */
void lr_remote_measured(struct lr_lazyd *d, uint64_t bytes, uint64_t ns, const char *how);

/* A PAGES payload as sent: a LR_F_ZSTD one is inflated into r->zbuf and *payload / *len point there. */
int lr_remote_inflate(struct lr_remote *r, uint16_t flags, const char **payload, uint32_t *len, struct lr_error *err);

/* remote_fetch.c: one authenticated channel (blocking socket); checks the checkpoint id when expect_cid is set. */
int lr_remote_handshake(struct lr_remote *r, uint32_t channel, const uint8_t *expect_cid, int timeout_ms,
			struct lr_error *err);

/*
 * The FILES entry at *at of a list of len bytes: whole, of a known kind, with a name safe to create in the
 * images dir (copied NUL-terminated into name); *at moves past it. Pure: no I/O.
 */
int lr_file_entry_next(const char *list, uint32_t len, uint32_t *at, struct lr_file_entry *e,
		       char name[LR_NAME_MAX + 1], struct lr_error *err);

/*
 * A PAGES payload checked against the index: record and blocks in range, length
 * right, every checksum the index's, every block's bytes hashing to it (errnum
 * EBADMSG for bytes that do not). Sets *a to the first checkpoint address and
 * *data to the bytes.
 */
struct lr_index;
int lr_pages_frame_check(const struct lr_index *idx, const char *payload, uint32_t len, struct lr_pages_hdr *h,
			 uint64_t *a, const char **data, struct lr_error *err);

#endif /* LR_REMOTE_H */
