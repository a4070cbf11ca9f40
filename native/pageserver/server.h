/*
 * server.h: lr-pageserver's state, passed explicitly to every part.
 *
 * One epoll loop over the listening socket and every connection. A connection
 * authenticates (handshake.c), then sends requests (requests.c) whose replies
 * are queued as byte buffers and file ranges (queue.h; conn.c sends them, file
 * ranges with sendfile). Page bytes come from a page store (store.h): the pages
 * files, or with --live the stopped source tree. A session (session.c) pairs an
 * urgent and a bulk connection; the bulk one streams every lazy block once
 * (bulk.c). The images are opened read only and never written.
 *
 * Who calls whom (make cycles: no circle): main.c -> conn.c -> handshake.c,
 * requests.c -> session.c, holder.c, workingset.c, bulk.c -> pages.c ->
 * refuse.c -> queue.c and log.c (leaves). A lower file never calls a higher
 * one: a refused connection is marked (refuse.c) and settled by conn.c once
 * the handler returns; a session that ends hands back its bulk connection for
 * conn.c to close.
 */
#ifndef LR_SERVER_H
#define LR_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "lr_error.h"
#include "lr_index_reader.h"
#include "lr_net.h"
#include "lr_proto.h"
#include "lr_wset.h"
#include "lr_zpages.h"
#include "queue.h"
#include "store.h"

struct ps_config {
	const char *images_dir;
	const char *listen;       /* HOST:PORT */
	const char *secret_file;  /* default: IMAGES/lazyrestore/secret */
	const char *log_file;
	const char *live_pids;    /* --live: the pid map of the stopped tree the LR_RANGE_LIVE records are read from */
	const char *held_file;    /* --held-file: exists while a destination may run the live tree (holder.c) */
	int status_fd;            /* one '\0' once listening */
	int events_fd;            /* JSON lines: listening, session, committed, aborted, delivered, ... */
	bool once;                /* exit after the first delivered session */
	int verbose;
	unsigned max_conns;
	unsigned handshake_ms;
	unsigned stall_ms;        /* an authenticated connection not reading its replies is dropped after this */
};

struct ps_file {
	char name[LR_NAME_MAX + 1]; /* relative to the images dir */
	uint64_t size;
	uint32_t kind;              /* enum lr_file_kind */
	int fd;                     /* open from the start: what is listed is what is sent */
};

enum ps_state { PS_HELLO, PS_AUTH, PS_READY };

struct ps_session;

struct ps_conn {
	int fd;
	unsigned id;
	char peer[64];
	enum ps_state state;
	uint32_t channel;
	uint64_t session_id;        /* HELLO's (bulk) */
	struct ps_session *session;
	uint8_t client_nonce[LR_NONCE_SIZE], server_nonce[LR_NONCE_SIZE];
	uint64_t deadline_ns;       /* handshake must be done by then; once refused (closing), the ERROR read */
	struct lr_frame hdr;        /* input: header, then payload into buf */
	uint32_t got;
	char buf[LR_REQUEST_MAX];
	struct ps_queue queue;      /* replies not sent yet (queue.h) */
	uint32_t events;            /* epoll events registered */
	bool closing;               /* close once the queue is sent (after an ERROR or DONE with --once) */
	bool dead;                  /* closed: freed after the current batch */
};

struct ps_session {
	uint64_t id;
	struct ps_conn *urgent, *bulk;
	bool bulk_started, bulk_ended, done;
	uint64_t cursor;            /* record the bulk stream is at */
	uint32_t cursor_block;
	uint8_t *sent;              /* per checksum index: already sent to this session */
	uint64_t blocks_left;       /* lazy blocks not sent yet */
	uint64_t bytes_urgent, bytes_bulk, requests, files;
	uint16_t bulk_want;         /* BULK_START's LR_F_ZSTD / LR_F_COMPRESS: how the stream may be compressed */
	uint64_t zstd_frames, zstd_saved; /* frames sent compressed, and the bytes that saved */
	uint64_t start_ns;
	char *wset_snap;            /* the working set as LIST saw it: what GET_FILE of it sends */
	size_t wset_snap_len;
	char *wset_in;              /* WORKINGSET frames received so far */
	size_t wset_in_len;
	bool wset_in_done;          /* the last one arrived: no more this session */
	bool wset_in_bad;           /* one failed its checksum: the rest is read and dropped */
	bool committed;             /* COMMIT answered, no ABORT since: this session's tree may run (holder.c) */
};

struct ps_server {
	struct ps_config cfg;
	struct lr_index index;
	uint8_t secret[LR_SECRET_SIZE];
	int dirfd;
	struct ps_file *files;
	size_t nfiles;
	struct ps_store *pages;     /* where PAGES frames' pages come from (store.h) */
	uint64_t lazy_blocks;       /* checksum blocks of lazy records */
	int listen_fd, epfd;
	int port;
	struct ps_conn **conns;
	size_t nconns, capconns;
	size_t nopen;               /* connections not closed: what --max-conns limits (conns keeps closed ones until reaped) */
	uint64_t evicted;           /* unauthenticated connections closed to make room for new ones (--max-conns) */
	uint64_t evict_logged_ns;   /* when an eviction was last logged: at most one line a second */
	unsigned next_conn_id;
	uint64_t accept_paused_until; /* accept ran out of descriptors: listener off until then (0: on) */
	struct ps_session **sessions;
	size_t nsessions, capsessions;
	unsigned delivered;
	ZSTD_CCtx *zcx;             /* compressing PAGES frames (lr_zpages.h) */
	char *zin, *zout;           /* a frame's page bytes, and the compressed frame */
	size_t zout_cap;
	struct lr_zero_sum zero;    /* the checksum of an all-zero block */
	struct lr_wset wset;        /* the checkpoint's working set (lazyrestore/workingset), merged as sessions end */
	bool stopping;              /* --once: delivered, finishing */
	bool may_have_run;          /* a session that held the tree ended without DONE (or --held-file was there) */
	uint64_t start_ns;
};

/* log.c: the log (stderr or -o FILE) and the JSON events (--events-fd) */
void ps_log(const struct ps_server *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void ps_event(const struct ps_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* in, JSON-escaped into out (for ps_event's strings). */
const char *ps_json_text(const char *in, char *out, size_t size);

/* holder.c: who may run a live tree. --held-file found at start: a destination of an earlier server may have run it. */
int ps_holder_start(struct ps_server *s, struct lr_error *err);

/* catalog.c: what is served */
int ps_catalog_open(struct ps_server *s, struct lr_error *err);
void ps_catalog_close(struct ps_server *s);
const struct ps_file *ps_catalog_find(const struct ps_server *s, const char *name, size_t len);

/* workingset.c: the checkpoint's working set, served to restores and merged from their WORKINGSET frames */
void ps_wset_open(struct ps_server *s);
/* LIST: snapshot it into the session; appends its entry to the list (grown with realloc) when there is one. */
int ps_wset_list(struct ps_server *s, struct ps_session *ss, char **list, size_t *len);
/* GET_FILE of LR_WSET_NAME: 1 when handled (queued or refused), 0 for another name, -1 out of memory. */
int ps_wset_get(struct ps_server *s, struct ps_conn *c, const char *name, size_t len);
int ps_wset_frame(struct ps_server *s, struct ps_conn *c);
/* A WORKINGSET frame failed its checksum (why): this session's working set is dropped, the session goes on. */
void ps_wset_damaged(struct ps_server *s, struct ps_conn *c, const char *why);
void ps_wset_session_free(struct ps_session *ss);

/* conn.c: connections (the top below main.c: nothing it calls calls it back) */
int ps_conn_accept(struct ps_server *s, struct lr_error *err);
int ps_conn_on_read(struct ps_server *s, struct ps_conn *c);
int ps_conn_on_write(struct ps_server *s, struct ps_conn *c);
/* After c was refused (refuse.c): its ERROR sent as far as the socket takes it; c closed once it is all sent, or
 * when it cannot be. */
void ps_conn_settle(struct ps_server *s, struct ps_conn *c);
void ps_conn_close(struct ps_server *s, struct ps_conn *c);
size_t ps_conn_reap(struct ps_server *s);
int ps_accept_resume(struct ps_server *s); /* listener back on after pause; -1 with errno */
int ps_conn_update_events(struct ps_server *s, struct ps_conn *c);

/* refuse.c: c refused: ERROR code msg queued, c closing (its deadline: the time to read it). Nothing is sent or
 * closed: the handler returns and conn.c settles c (ps_conn_settle). ps_conn_fail logs it and sends a
 * "rejected" event first. */
void ps_conn_refuse(const struct ps_server *s, struct ps_conn *c, uint32_t code, const char *msg);
void ps_conn_fail(const struct ps_server *s, struct ps_conn *c, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* handshake.c: a frame of a connection not authenticated yet: 0, or -1 when its reply could not be queued (out of
 * memory): the caller closes c. */
int ps_handshake_frame(struct ps_server *s, struct ps_conn *c);

/* requests.c: a frame of an authenticated connection: 0, or -1 out of memory */
int ps_request_frame(struct ps_server *s, struct ps_conn *c);

/* pages.c: PAGES frames */
/* Record rec's blocks [first, first + nblocks) as an address range [a, b), or -1 when outside the record. */
int ps_block_range(const struct lr_index *idx, uint64_t rec, uint32_t first, uint32_t nblocks, uint64_t *a,
		   uint64_t *b);
/* PAGES of blocks [first, first + nblocks) of record rec, from its store: *bytes page bytes queued, or 0 when the
 * store could not read them and c was refused (ERROR, closing). -1 out of memory or a range outside the index. */
int ps_queue_pages(struct ps_server *s, struct ps_conn *c, uint16_t want, uint64_t req_id, uint64_t rec, uint32_t first,
		   uint32_t nblocks, uint64_t *bytes);

/* holder.c: COMMIT and ABORT; which session holds a live tree */
int ps_commit_frame(struct ps_server *s, struct ps_conn *c);
int ps_abort_frame(struct ps_server *s, struct ps_conn *c);
/* ss ends: it holds the tree no more. */
void ps_holder_release(struct ps_server *s, struct ps_session *ss);

/* session.c: sessions. Ending one closes no connection: it returns its bulk connection (detached from it, or
 * NULL), which the caller closes. */
struct ps_session *ps_session_new(struct ps_server *s, struct ps_conn *urgent);
struct ps_session *ps_session_find(struct ps_server *s, uint64_t id);
struct ps_conn *ps_session_end(struct ps_server *s, struct ps_session *ss, const char *why);
/* c, closed, leaves its session; when c was the urgent channel the session ends (ps_session_end's return). */
struct ps_conn *ps_session_leave(struct ps_server *s, struct ps_conn *c);

/* bulk.c: the bulk stream */
void ps_bulk_mark_sent(struct ps_server *s, struct ps_session *ss, uint64_t rec, uint32_t first, uint32_t nblocks);
void ps_bulk_seek(struct ps_server *s, struct ps_session *ss, uint64_t rec, uint32_t block);
/* Queue the next bulk chunk of c's session (or BULK_END): 0 (c refused when the store could not read it), -1 out
 * of memory. */
int ps_bulk_fill(struct ps_server *s, struct ps_conn *c);

#endif /* LR_SERVER_H */
