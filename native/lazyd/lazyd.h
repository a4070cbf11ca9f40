/*
 * lazyd.h: the lr-lazyd daemon's state, passed explicitly to every part.
 */
#ifndef LR_LAZYD_H
#define LR_LAZYD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "criu_sock.h"
#include "loop.h"
#include "remote.h"
#include "lr_ahead.h"
#include "lr_index_reader.h"
#include "lr_pages.h"
#include "spans.h"
#include "prefetch.h"
#include "profile.h"
#include "source.h"
#include "stats.h"

struct lr_config {
	const char *images_dir;   /* checkpoint (index and pages files); read only */
	const char *work_dir;     /* where lazy-pages.socket lives (CRIU's work dir) */
	const char *log_file;     /* -o: log here instead of stderr (relative to work_dir) */
	const char *status_file;  /* latest stats JSON, rewritten atomically */
	const char *stats_log;    /* every stats JSON line appended (a time series for `lazyrestore report`) */
	int stats_log_fd;         /* open stats_log, or -1 */
	int status_fd;            /* gets one '\0' once listening (runc waits for it) */
	int stats_fd;             /* JSON lines: progress and done */
	uint64_t fault_around;    /* bytes placed around a fault (power of two) */
	uint64_t chunk;           /* bytes per drain step */
	uint64_t drain_rate;      /* bytes/s cap on the drain; 0 = none */
	uint64_t ahead;           /* verify-ahead lead in bytes; 0 = no verify-ahead thread */
	unsigned stats_ms;        /* progress line period */
	bool drain;               /* false: serve faults only */
	bool guard;               /* fork the guardian (crash safety) */
	bool map;                 /* copy from leased mappings of the pages files (else pread) */
	const char *source;       /* HOST:PORT of an lr-pageserver: remote mode (images_dir is filled from it) */
	const char *secret_file;  /* the checkpoint's secret (remote mode) */
	uint64_t source_timeout_ms; /* how long a lost page server may stay away */
	bool fetch_only;          /* remote mode: fetch the checkpoint, then exit */
	const char *criu_ps;      /* HOST:PORT of CRIU's page server (src_criu.c); images_dir holds the dump */
	const char *profile_file; /* --profile: write the working set here once every page is placed */
	uint32_t profile_faults;  /* record at most this many faults ... */
	uint32_t profile_ms;      /* ... within this long of the start */
	const char *prefetch;     /* --prefetch: "auto" (the checkpoint's lazyrestore/workingset if any), "off", or a file */
	const char *compress;     /* --compress: auto, on, off (remote page frames) */
	bool store_wset;          /* merge this restore's working set into the checkpoint's (or send it to the server) */
	int verbose;
	char *absolute[4];        /* absolute copies of the relative paths above, made before entering work_dir; freed last */
};

struct lr_deferred {
	uint64_t addr;             /* page address of a fault not served yet */
	uint64_t t0;               /* when the fault was read, for its latency */
};

struct lr_task {
	struct lr_fdrec rec;       /* rec.fd is the task's uffd */
	struct lr_fdrec exit_rec;  /* exit_rec.fd: a pidfd of host_pid, readable once the task exited; -1 when unknown */
	int32_t pid;               /* pid in the checkpoint; 0 for a child forked after restore */
	pid_t host_pid;            /* 0 when unknown */
	struct lr_spans spans;
	bool gone;
	uint64_t retry_at_ns;      /* layout changing: no drain before this time */
	uint64_t events_seen;      /* uffd messages read so far */
	uint64_t novma_at_events;  /* events_seen at the last ENOENT, for the second-strike rule */
	struct lr_deferred *deferred; /* faults to serve again */
	size_t ndeferred, capdeferred;
	uint64_t near_addr;        /* locality: the drain goes on from the latest fault's window, here ... */
	uint64_t near_end;         /* ... up to here, before its round robin resumes */
};

struct lr_lazyd {
	struct lr_config cfg;
	struct lr_index index;
	struct lr_pages pages;
	struct lr_ahead ahead;     /* verifies mapped page bytes ahead of the drain */
	struct lr_src src;         /* where page bytes come from (source.h): the rest calls src.ops, never a kind */
	struct lr_remote *remote;  /* src_lrps.c's state (--source); NULL otherwise. Only the source's files use it */
	struct lr_cps *cps;        /* src_criu.c's state (--criu-page-server); NULL otherwise. Likewise */
	struct lr_stats stats;
	struct lr_profile profile; /* the faults of this restore, in order (profile.h) */
	struct lr_prefetch prefetch; /* the checkpoint's working set, placed first (prefetch.h) */
	int epfd;
	int guard_fd;
	int listen_fd;
	struct lr_fdrec listen_rec;
	struct lr_fdrec guard_rec; /* the guardian's socket: readable only when the guardian is gone */
	pid_t guard_pid;
	struct lr_fdrec conn_rec;
	struct lr_criu_conn conn;
	struct lr_task **tasks;
	size_t ntasks, cap;
	size_t drain_next;         /* round-robin position */
	struct lr_task *near;      /* the task that faulted last (locality, drain.c) */
	char *buf;                 /* verified page bytes on their way into a task */
	size_t buf_size;
	uint32_t page_size;
	bool finished;             /* CRIU sent "restore finished" */
	bool connected;
	uint64_t drain_epoch_ns;   /* rate limiting: when drain_bytes was last zero-based */
	uint64_t fault_at_ns;      /* faults first (remote): the latest scattered fault that waited for page data */
	uint64_t recent[8];        /* checkpoint addresses just past the latest faults (a scan goes on from one) */
	unsigned nrecent;
};

/* tasks.c */
/* on_uffd: what reads the task's uffd events (serve.c's lr_serve_uffd; passed in, so tasks.c calls no server). */
int lr_task_add(struct lr_lazyd *d, int32_t pid, pid_t host_pid, int uffd, const struct lr_spans *parent,
		lr_fd_cb on_uffd, struct lr_task **out, struct lr_error *err);
void lr_task_gone(struct lr_lazyd *d, struct lr_task *t);
/* Every task of the restored tree has exited (none is left to serve). */
bool lr_tasks_all_gone(const struct lr_lazyd *d);
int lr_task_defer(struct lr_task *t, uint64_t addr, uint64_t t0, struct lr_error *err);
uint64_t lr_left_bytes(const struct lr_lazyd *d);
/* SIGKILL every task of the tree whose host pid is known; wait (up to 10 s) until they are gone. */
void lr_tasks_kill(struct lr_lazyd *d);

/* log.c: one line to stderr (the -o file), "lr-lazyd[PID] SECONDS: ...", when level <= -v. */
void lr_log(const struct lr_lazyd *d, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* place.c: the sink sources deliver into, and placing for faults and the drain. */
/* Place bytes of span si's pages [lo, hi) from data (the bytes of page lo on); an lr_uffd_rc or -1. */
int lr_place_from(struct lr_lazyd *d, struct lr_task *t, size_t si, uint64_t lo, uint64_t hi, const char *data,
		  uint64_t *placed, struct lr_error *err);
/* Place the pending pages of span si within its pages [lo, hi), asking the source (why: a fault or the drain):
 * an lr_uffd_rc, LR_SRC_WAIT (asked for: placed when they arrive), or -1. */
int lr_place(struct lr_lazyd *d, struct lr_task *t, size_t si, uint64_t lo, uint64_t hi, enum lr_get why,
	     uint64_t *placed, struct lr_error *err);
/* The sink the daemon's source delivers into (source.h). */
struct lr_sink lr_place_sink(struct lr_lazyd *d);
/* Place every working-set window some task still needs whose bytes are here (get LR_GET_HERE). */
int lr_prefetch_place(struct lr_lazyd *d, struct lr_error *err);

/* serve.c */
int lr_serve_uffd(void *ctx, struct lr_fdrec *rec, struct lr_error *err);
int lr_serve_deferred(struct lr_lazyd *d, struct lr_error *err);

/* drain.c */
int lr_drain_step(struct lr_lazyd *d, struct lr_error *err);
/* A fault at checkpoint address addr that needs page data was read at t_ns: from a page server, the bulk
 * stream yields to a burst of scattered faults (drain.c). */
void lr_drain_fault(struct lr_lazyd *d, uint64_t t_ns, uint64_t addr);
/* A fault's window ended at address `end` of task t: the drain goes on from there first. */
void lr_drain_near(struct lr_lazyd *d, struct lr_task *t, uint64_t end);
int lr_drain_wait_ms(const struct lr_lazyd *d);
/* The same for a sink (source.h): ctx is the daemon. */
int lr_drain_wait_cb(void *ctx);

/* restore_conn.c */
int lr_conn_on_listen(void *ctx, struct lr_fdrec *rec, struct lr_error *err);

#endif /* LR_LAZYD_H */
