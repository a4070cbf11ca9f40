/*
 * lr-pageserver: serves one checkpoint to lazyrestore clients (lr-lazyd) over
 * TCP: its metadata files, the page ranges faults ask for, and a bulk stream
 * of everything else, to any number of authenticated sessions at once. The
 * images are opened read only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "lr_auth.h"
#include "server.h"

#define LR_EXIT_USAGE 2
#define PS_BATCH 64
#define PS_STALL_MS 30000 /* --stall-ms: far above an honest client's pauses (--drain-rate, a short partition) */

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
	stop_signal = sig;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lr-pageserver -D IMAGES_DIR --listen HOST:PORT [options]\n"
		"  -D, --images-dir DIR     checkpoint with lazyrestore/index.bin and lazyrestore/secret (read only)\n"
		"  -l, --listen HOST:PORT   address to serve on (port 0: any free port, printed in the log and events)\n"
		"      --secret-file FILE   the checkpoint's secret (default: IMAGES_DIR/lazyrestore/secret)\n"
		"      --live PIDMAP        a live checkpoint: its live ranges are read from the stopped tree's memory;\n"
		"                           one session at a time may COMMIT (hold the tree)\n"
		"                           PIDMAP has one line per task, \"VPID HOSTPID\"\n"
		"      --held-file FILE     with --live: FILE is created before a COMMIT is answered and removed on an\n"
		"                           ABORT, so it exists while a destination may run the tree (a watcher that\n"
		"                           outlives this server reads it); found at start, it is never removed\n"
		"      --once               exit 0 after the first session that reports DONE\n"
		"      --status-fd N        write one '\\0' byte to fd N once listening\n"
		"      --events-fd N        JSON lines: listening, session, committed, aborted, delivered, session_lost,\n"
		"                           rejected\n"
		"      --max-conns N        connections at once (default 256); when full, a new one closes the oldest\n"
		"                           that has not authenticated, or gets ERROR busy if all have\n"
		"      --handshake-ms MS    time a connection has to authenticate (default %d)\n"
		"      --stall-ms MS        an authenticated client whose replies fill its queue and that takes none of\n"
		"                           them for this long is dropped (default %d)\n"
		"  -o, --log-file FILE      log here instead of stderr\n"
		"  -v, --verbose[=N]        more log\n"
		"Exit: 0 stopped by a signal, or delivered with --once; 1 error; 2 usage.\n",
		LR_HANDSHAKE_MS, PS_STALL_MS);
}

static int parse_uint(const char *arg, unsigned lo, unsigned hi, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(arg, &end, 10);
	if (errno || end == arg || *end || *arg == '-' || v < lo || v > hi)
		return -1;
	*out = (unsigned)v;
	return 0;
}

static int bad_value(const char *opt, const char *val, const char *want)
{
	fprintf(stderr, "lr-pageserver: invalid value %s for %s: expected %s\n", val, opt, want);
	return -1;
}

enum { OPT_SECRET = 256, OPT_ONCE, OPT_STATUS_FD, OPT_EVENTS_FD, OPT_MAX_CONNS, OPT_HANDSHAKE_MS, OPT_LIVE, OPT_STALL_MS, OPT_HELD_FILE };

static const struct option long_opts[] = {
	{"images-dir", required_argument, NULL, 'D'}, {"listen", required_argument, NULL, 'l'},
	{"log-file", required_argument, NULL, 'o'}, {"verbose", optional_argument, NULL, 'v'},
	{"secret-file", required_argument, NULL, OPT_SECRET}, {"once", no_argument, NULL, OPT_ONCE},
	{"status-fd", required_argument, NULL, OPT_STATUS_FD}, {"events-fd", required_argument, NULL, OPT_EVENTS_FD},
	{"max-conns", required_argument, NULL, OPT_MAX_CONNS}, {"handshake-ms", required_argument, NULL, OPT_HANDSHAKE_MS},
	{"live", required_argument, NULL, OPT_LIVE}, {"stall-ms", required_argument, NULL, OPT_STALL_MS},
	{"held-file", required_argument, NULL, OPT_HELD_FILE},
	{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};

static int parse_one(struct ps_config *c, int opt, const char *arg)
{
	unsigned v;
	switch (opt) {
	case 'D': c->images_dir = arg; return 0;
	case 'l': c->listen = arg; return 0;
	case 'o': c->log_file = arg; return 0;
	case 'v': c->verbose = arg ? atoi(arg) : c->verbose + 1; return 0;
	case OPT_SECRET: c->secret_file = arg; return 0;
	case OPT_ONCE: c->once = true; return 0;
	case OPT_LIVE: c->live_pids = arg; return 0;
	case OPT_HELD_FILE: c->held_file = arg; return 0;
	case OPT_STATUS_FD:
	case OPT_EVENTS_FD:
		if (parse_uint(arg, 0, 1 << 20, &v))
			return bad_value(opt == OPT_STATUS_FD ? "--status-fd" : "--events-fd", arg, "a descriptor number");
		*(opt == OPT_STATUS_FD ? &c->status_fd : &c->events_fd) = (int)v;
		return 0;
	case OPT_MAX_CONNS:
		return parse_uint(arg, 1, 65536, &c->max_conns) ? bad_value("--max-conns", arg, "1 to 65536") : 0;
	case OPT_HANDSHAKE_MS:
		return parse_uint(arg, 10, 600000, &c->handshake_ms) ? bad_value("--handshake-ms", arg, "10 to 600000") : 0;
	case OPT_STALL_MS:
		return parse_uint(arg, 100, 3600000, &c->stall_ms) ? bad_value("--stall-ms", arg, "100 to 3600000") : 0;
	default:
		return -1;
	}
}

static int parse_args(int argc, char **argv, struct ps_config *c)
{
	*c = (struct ps_config){.status_fd = -1, .events_fd = -1, .verbose = 1, .max_conns = 256,
				.handshake_ms = LR_HANDSHAKE_MS, .stall_ms = PS_STALL_MS};
	int opt;
	while ((opt = getopt_long(argc, argv, "D:l:o:v::h", long_opts, NULL)) != -1) {
		if (opt == 'h') {
			usage(stdout);
			exit(0);
		}
		if (opt == '?' || parse_one(c, opt, optarg))
			return -1;
	}
	if (optind < argc)
		return bad_value("arguments", argv[optind], "options only");
	if (!c->images_dir || !c->listen) {
		fprintf(stderr, "lr-pageserver: -D/--images-dir and --listen are required\n");
		return -1;
	}
	if (c->held_file && !c->live_pids) {
		fprintf(stderr, "lr-pageserver: --held-file is for a live checkpoint: give --live PIDMAP too\n");
		return -1;
	}
	return 0;
}

/* Compression of PAGES frames (lr_zpages.h); without it every frame goes as it is. */
static void ps_zstd_open(struct ps_server *s)
{
	s->zout_cap = sizeof(struct lr_frame) + sizeof(struct lr_pages_hdr) + 8 * (LR_PAGES_MAX_DATA / 4096 + 2) +
		      ZSTD_compressBound(LR_PAGES_MAX_DATA);
	s->zcx = ZSTD_createCCtx();
	s->zin = malloc(LR_PAGES_MAX_DATA);
	s->zout = malloc(s->zout_cap);
	if (s->zcx && s->zin && s->zout)
		return;
	ps_log(s, 0, "warning: no memory for zstd: page frames go uncompressed");
	ZSTD_freeCCtx(s->zcx);
	free(s->zin);
	free(s->zout);
	s->zcx = NULL;
	s->zin = s->zout = NULL;
}

static int setup(struct ps_server *s, struct lr_error *err)
{
	char secret_path[4096];
	struct lr_addr addr;

	if (s->cfg.log_file && !freopen(s->cfg.log_file, "a", stderr))
		return lr_error_set(err, errno, "log file %s", s->cfg.log_file);
	setvbuf(stderr, NULL, _IOLBF, 0);
	if (!s->cfg.secret_file) {
		snprintf(secret_path, sizeof(secret_path), "%s/lazyrestore/secret", s->cfg.images_dir);
		s->cfg.secret_file = secret_path;
	}
	if (lr_secret_load(s->cfg.secret_file, s->secret, err))
		return -1;
	s->cfg.secret_file = NULL; /* secret_path goes out of scope */
	if (ps_catalog_open(s, err) || ps_holder_start(s, err) || lr_addr_parse(s->cfg.listen, &addr, err))
		return -1;
	ps_wset_open(s);
	ps_zstd_open(s);
	s->listen_fd = lr_net_listen(&addr, &s->port, err);
	if (s->listen_fd < 0)
		return -1;
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (s->epfd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->listen_fd, &ev))
		return lr_error_set(err, errno, "epoll");
	return 0;
}

static void announce(struct ps_server *s)
{
	ps_log(s, 0, "serving %s on %s (port %d): %zu files, %llu lazy pages%s", s->cfg.images_dir, s->cfg.listen, s->port,
	       s->nfiles, (unsigned long long)s->index.hdr->lazy_pages,
	       s->cfg.live_pids ? " (live ranges read from the stopped tree)" : "");
	ps_event(s, "{\"event\":\"listening\",\"port\":%d,\"pid\":%d,\"lazy_pages\":%llu}", s->port, getpid(),
		 (unsigned long long)s->index.hdr->lazy_pages);
	if (s->cfg.status_fd >= 0) {
		if (write(s->cfg.status_fd, "", 1) != 1)
			ps_log(s, 0, "writing to --status-fd %d failed", s->cfg.status_fd);
		close(s->cfg.status_fd);
		s->cfg.status_fd = -1;
	}
}

/* When c must have moved on (authenticated, read its ERROR, taken a reply), or 0 when nothing is due. */
static uint64_t deadline_of(const struct ps_server *s, const struct ps_conn *c)
{
	if (c->dead)
		return 0;
	if (c->state != PS_READY || c->closing)
		return c->deadline_ns;
	return ps_queue_full(&c->queue) ? c->queue.sent_ns + (uint64_t)s->cfg.stall_ms * 1000000ULL : 0;
}

/*
 * Connections that did not authenticate in time are refused; refused ones that did not take their ERROR
 * in time are dropped; authenticated ones whose full queue took no byte for --stall-ms are dropped (what
 * they pin, up to PS_QUEUE_BYTES of a live store's pages, is given back). Returns ms until the next such
 * deadline (or the listener's pause ends).
 */
static int expire_deadlines(struct ps_server *s)
{
	uint64_t now = lr_net_now_ns(), next = s->accept_paused_until ? s->accept_paused_until : UINT64_MAX;
	for (size_t i = 0; i < s->nconns; i++) {
		struct ps_conn *c = s->conns[i];
		uint64_t due = deadline_of(s, c);
		if (!due)
			continue;
		if (now < due) {
			next = due < next ? due : next;
		} else if (c->closing) {
			ps_log(s, 0, "conn %u (%s): dropped: it did not read its ERROR within %u ms", c->id, c->peer,
			       s->cfg.handshake_ms);
			ps_conn_close(s, c);
		} else if (c->state == PS_READY) {
			ps_log(s, 0, "conn %u (%s): dropped: it took none of its replies for %u ms (%llu bytes queued)",
			       c->id, c->peer, s->cfg.stall_ms, (unsigned long long)c->queue.queued_bytes);
			ps_conn_close(s, c);
		} else {
			ps_conn_fail(s, c, LR_ERR_TIMEOUT, "did not authenticate within %u ms", s->cfg.handshake_ms);
			ps_conn_settle(s, c);
		}
	}
	return next == UINT64_MAX ? 1000 : next <= now ? 0 : (int)((next - now) / 1000000ULL) + 1;
}

static bool is_bulk(const struct ps_conn *c)
{
	return c && c->channel == LR_CHANNEL_BULK && c->state == PS_READY;
}

/* One batch: the listener and urgent connections first, then bulk (at most one chunk each). */
static int dispatch(struct ps_server *s, struct epoll_event *evs, int n, struct lr_error *err)
{
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < n; i++) {
			struct ps_conn *c = evs[i].data.ptr;
			if ((pass == 0) == is_bulk(c))
				continue;
			if (!c) {
				if (ps_conn_accept(s, err))
					return -1;
				continue;
			}
			if (c->dead)
				continue;
			if ((evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && ps_conn_on_read(s, c))
				return lr_error_set(err, ENOMEM, "out of memory serving conn %u", c->id);
			if (!c->dead && (evs[i].events & EPOLLOUT) && ps_conn_on_write(s, c))
				return lr_error_set(err, errno, "epoll update for conn %u", c->id);
		}
	return 0;
}

static bool finished(const struct ps_server *s)
{
	if (!s->stopping)
		return false;
	for (size_t i = 0; i < s->nconns; i++) /* let the delivered client read its DONE */
		if (!s->conns[i]->dead && s->conns[i]->session && !ps_queue_empty(&s->conns[i]->queue))
			return false;
	return true;
}

static int serve(struct ps_server *s, struct lr_error *err)
{
	struct epoll_event evs[PS_BATCH];
	while (!stop_signal && !finished(s)) {
		int n = epoll_wait(s->epfd, evs, PS_BATCH, expire_deadlines(s));
		if (n < 0 && errno != EINTR)
			return lr_error_set(err, errno, "epoll_wait");
		if (n > 0 && dispatch(s, evs, n, err))
			return -1;
		if ((ps_conn_reap(s) || lr_net_now_ns() >= s->accept_paused_until) && ps_accept_resume(s))
			return lr_error_set(err, errno, "epoll: resume accepting");
	}
	ps_log(s, 0, stop_signal ? "stopped by signal %d; %u session(s) delivered" : "delivered (--once); exiting%.0d",
	       stop_signal ? (int)stop_signal : 0, s->delivered);
	return 0;
}

/* The peak resident set (VmHWM) in KiB, or -1: the memory serving cost, logged at exit. */
static long peak_rss_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "re");
	if (!f)
		return -1;
	while (kb < 0 && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld kB", &kb) != 1)
			kb = -1;
	fclose(f);
	return kb;
}

static void teardown(struct ps_server *s)
{
	for (size_t i = 0; i < s->nconns; i++)
		ps_conn_close(s, s->conns[i]);
	ps_conn_reap(s);
	free(s->conns);
	while (s->nsessions) /* none left: a session ends with its urgent connection, closed above with its bulk one */
		ps_session_end(s, s->sessions[0], "server stopped");
	free(s->sessions);
	lr_wset_fini(&s->wset);
	ZSTD_freeCCtx(s->zcx);
	free(s->zin);
	free(s->zout);
	ps_catalog_close(s);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->epfd >= 0)
		close(s->epfd);
}

int main(int argc, char **argv)
{
	struct ps_server s = {.dirfd = -1, .listen_fd = -1, .epfd = -1};
	struct lr_error err = {0};
	struct sigaction sa = {.sa_handler = on_stop};

	if (parse_args(argc, argv, &s.cfg)) {
		usage(stderr);
		return LR_EXIT_USAGE;
	}
	s.start_ns = lr_net_now_ns();
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (setup(&s, &err)) {
		ps_log(&s, 0, "error: %s", err.msg);
		char text[1100];
		ps_event(&s, "{\"event\":\"error\",\"message\":\"%s\"}", ps_json_text(err.msg, text, sizeof(text)));
		teardown(&s);
		return 1;
	}
	announce(&s);
	int rc = serve(&s, &err);
	if (rc)
		ps_log(&s, 0, "error: %s", err.msg);
	ps_log(&s, 0, "peak resident memory %ld KiB", peak_rss_kb());
	teardown(&s);
	return rc ? 1 : 0;
}
