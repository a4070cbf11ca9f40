/*
 * lr-lazyd: lazyrestore's lazy-pages daemon. A drop-in for `criu lazy-pages`
 * serving pages from local image files: it owns the userfaultfds of a
 * `criu restore --lazy-pages`, serves faults first, drains the rest, verifies
 * every byte against the lazy index, and (with its guardian) never lets the
 * tree run on pages it can no longer get.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <unistd.h>

#include "guard.h"
#include "lazyd.h"
#include "lr_cleanup.h"

#define LR_EXIT_USAGE 2

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
	stop_signal = sig;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lr-lazyd -D IMAGES_DIR [-W WORK_DIR] [options]\n"
		"  -D, --images-dir DIR     checkpoint with lazyrestore/index.bin (read only)\n"
		"  -W, --work-dir DIR       CRIU's work dir: lazy-pages.socket goes here (default: images dir)\n"
		"      --status-fd N        write one '\\0' byte to fd N once listening (as runc expects)\n"
		"      --stats-fd N         JSON lines with progress and the final summary on fd N\n"
		"      --status-file PATH   keep the latest progress JSON in PATH\n"
		"      --stats-log PATH     append every progress, done and error JSON line to PATH\n"
		"      --stats-interval MS  progress period (default 100)\n"
		"      --fault-around SIZE  bytes placed around a fault, power of two (default 64K)\n"
		"      --chunk SIZE         bytes per drain step (default 1M)\n"
		"      --drain-rate SIZE    cap the background drain at SIZE bytes per second (default: none)\n"
		"      --no-drain           serve faults only (exits once every task of the restored tree has exited)\n"
		"      --no-guard           no guardian: if the daemon dies the tree reads zero pages (tests only)\n"
		"      --no-map             read page bytes with pread instead of copying from a leased mapping\n"
		"      --source HOST:PORT   remote mode: fetch the checkpoint from this lr-pageserver into -D, serve from it\n"
		"      --secret-file FILE   the checkpoint's secret (remote mode; mode 0600)\n"
		"      --fetch-only         remote mode: fetch and verify the checkpoint into -D, then exit 0\n"
		"      --criu-page-server HOST:PORT  pages from CRIU's page server (`criu dump --lazy-pages`, or\n"
		"                           `criu page-server --lazy-pages` serving a dump); -D holds the dump's images\n"
		"                           and their index (`lazyrestore index`, or the plugin's, whose checksums are\n"
		"                           checked)\n"
		"      --source-timeout S   how long a lost page server may stay away before the tree is stopped (default 30)\n"
		"      --profile FILE       once every page is placed, write the faults of this restore (the working set,\n"
		"                           in order, checkpoint addresses) to FILE\n"
		"      --profile-faults N   record at most N faults (default 65536)\n"
		"      --profile-seconds S  record faults of the first S seconds only (default 30)\n"
		"      --prefetch MODE      auto: place the checkpoint's working set (IMAGES_DIR/lazyrestore/workingset,\n"
		"                           fetched ahead from --source) before the tree asks; off; or a working-set FILE\n"
		"                           (default auto; a damaged or stale one is ignored with a warning)\n"
		"      --compress MODE      remote: zstd for page frames: on, off, or auto (default: on when the link,\n"
		"                           measured while fetching ahead, is slower than 2 Gbit/s); all-zero blocks\n"
		"                           never travel as bytes whatever the mode\n"
		"      --no-store-working-set  do not merge this restore's working set into the checkpoint's (local\n"
		"                           images) or send it to the page server (--source)\n"
		"      --verify-ahead SIZE  a second thread checks mapped page bytes up to SIZE ahead of the drain\n"
		"                           (default 64M; 0: the event loop checks everything itself)\n"
		"  -o, --log-file FILE      log here (relative to the work dir) instead of stderr\n"
		"  -v, --verbose[=N]        more log (N up to 3: every fault)\n"
		"Exit: 0 every page placed, or the restored tree exited; 1 error (tree killed); 2 usage; 3 daemon died (tree killed).\n");
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -1;
	unsigned shift = 0;
	switch (*end) {
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	default: break;
	}
	if (*end || v > (ULLONG_MAX >> shift)) /* a suffix must not carry the value past 64 bits */
		return -1;
	v <<= shift;
	*out = v;
	return 0;
}

static int parse_int(const char *s, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 1 << 20)
		return -1;
	*out = (int)v;
	return 0;
}

enum { OPT_STATUS_FD = 256, OPT_STATS_FD, OPT_STATUS_FILE, OPT_STATS_INTERVAL, OPT_FAULT_AROUND, OPT_CHUNK,
       OPT_DRAIN_RATE, OPT_NO_DRAIN, OPT_NO_GUARD, OPT_NO_MAP, OPT_VERIFY_AHEAD,
       OPT_SOURCE, OPT_SECRET_FILE, OPT_SOURCE_TIMEOUT, OPT_FETCH_ONLY, OPT_CRIU_PS, OPT_PROFILE,
       OPT_PROFILE_FAULTS, OPT_PROFILE_SECONDS, OPT_STATS_LOG, OPT_PREFETCH,
       OPT_NO_STORE_WSET, OPT_COMPRESS };

static const struct option long_opts[] = {
	{"images-dir", required_argument, NULL, 'D'}, {"work-dir", required_argument, NULL, 'W'},
	{"log-file", required_argument, NULL, 'o'}, {"verbose", optional_argument, NULL, 'v'},
	{"status-fd", required_argument, NULL, OPT_STATUS_FD}, {"stats-fd", required_argument, NULL, OPT_STATS_FD},
	{"status-file", required_argument, NULL, OPT_STATUS_FILE}, {"stats-log", required_argument, NULL, OPT_STATS_LOG},
	{"stats-interval", required_argument, NULL, OPT_STATS_INTERVAL},
	{"fault-around", required_argument, NULL, OPT_FAULT_AROUND}, {"chunk", required_argument, NULL, OPT_CHUNK},
	{"drain-rate", required_argument, NULL, OPT_DRAIN_RATE}, {"no-drain", no_argument, NULL, OPT_NO_DRAIN},
	{"no-guard", no_argument, NULL, OPT_NO_GUARD}, {"no-map", no_argument, NULL, OPT_NO_MAP},
	{"verify-ahead", required_argument, NULL, OPT_VERIFY_AHEAD}, {"source", required_argument, NULL, OPT_SOURCE},
	{"secret-file", required_argument, NULL, OPT_SECRET_FILE},
	{"source-timeout", required_argument, NULL, OPT_SOURCE_TIMEOUT}, {"fetch-only", no_argument, NULL, OPT_FETCH_ONLY},
	{"profile", required_argument, NULL, OPT_PROFILE}, {"profile-faults", required_argument, NULL, OPT_PROFILE_FAULTS},
	{"profile-seconds", required_argument, NULL, OPT_PROFILE_SECONDS},
	{"prefetch", required_argument, NULL, OPT_PREFETCH}, {"no-store-working-set", no_argument, NULL, OPT_NO_STORE_WSET},
	{"compress", required_argument, NULL, OPT_COMPRESS},
	{"criu-page-server", required_argument, NULL, OPT_CRIU_PS}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};

static int bad_value(const char *opt, const char *val, const char *want)
{
	fprintf(stderr, "lr-lazyd: invalid value %s for %s: expected %s\n", val, opt, want);
	return -1;
}

static int parse_one(struct lr_config *c, int opt, const char *arg)
{
	switch (opt) {
	case 'D': c->images_dir = arg; return 0;
	case 'W': c->work_dir = arg; return 0;
	case 'o': c->log_file = arg; return 0;
	case 'v': c->verbose = arg ? atoi(arg) : c->verbose + 1; return 0;
	case OPT_STATUS_FD: return parse_int(arg, &c->status_fd) ? bad_value("--status-fd", arg, "a descriptor number") : 0;
	case OPT_STATS_FD: return parse_int(arg, &c->stats_fd) ? bad_value("--stats-fd", arg, "a descriptor number") : 0;
	case OPT_STATUS_FILE: c->status_file = arg; return 0;
	case OPT_STATS_LOG: c->stats_log = arg; return 0;
	case OPT_NO_DRAIN: c->drain = false; return 0;
	case OPT_NO_GUARD: c->guard = false; return 0;
	case OPT_NO_MAP: c->map = false; return 0;
	case OPT_STATS_INTERVAL: {
		int ms;
		if (parse_int(arg, &ms) || ms < 10)
			return bad_value("--stats-interval", arg, "milliseconds >= 10");
		c->stats_ms = (unsigned)ms;
		return 0;
	}
	case OPT_FAULT_AROUND:
		if (parse_size(arg, &c->fault_around) || c->fault_around < 4096 || c->fault_around > (64 << 20) ||
		    (c->fault_around & (c->fault_around - 1)))
			return bad_value("--fault-around", arg, "a power of two from 4K to 64M");
		return 0;
	case OPT_CHUNK:
		if (parse_size(arg, &c->chunk) || c->chunk < 4096 || c->chunk > (256 << 20))
			return bad_value("--chunk", arg, "a size from 4K to 256M");
		return 0;
	case OPT_DRAIN_RATE:
		return parse_size(arg, &c->drain_rate) ? bad_value("--drain-rate", arg, "bytes per second, e.g. 200M") : 0;
	case OPT_SOURCE: c->source = arg; return 0;
	case OPT_SECRET_FILE: c->secret_file = arg; return 0;
	case OPT_FETCH_ONLY: c->fetch_only = true; return 0;
	case OPT_CRIU_PS: c->criu_ps = arg; return 0;
	case OPT_SOURCE_TIMEOUT: {
		int s;
		if (parse_int(arg, &s) || s < 1 || s > 86400)
			return bad_value("--source-timeout", arg, "seconds from 1 to 86400");
		c->source_timeout_ms = (uint64_t)s * 1000;
		return 0;
	}
	case OPT_PROFILE: c->profile_file = arg; return 0;
	case OPT_PREFETCH:
		if (!*arg)
			return bad_value("--prefetch", "''", "auto, off or a working-set file");
		c->prefetch = arg;
		return 0;
	case OPT_NO_STORE_WSET: c->store_wset = false; return 0;
	case OPT_COMPRESS:
		if (strcmp(arg, "auto") && strcmp(arg, "on") && strcmp(arg, "off"))
			return bad_value("--compress", arg, "auto, on or off");
		c->compress = arg;
		return 0;
	case OPT_PROFILE_FAULTS: {
		int n;
		if (parse_int(arg, &n) || n < 1 || n > 10000000)
			return bad_value("--profile-faults", arg, "a number of faults from 1 to 10000000");
		c->profile_faults = (uint32_t)n;
		return 0;
	}
	case OPT_PROFILE_SECONDS: {
		int s;
		if (parse_int(arg, &s) || s < 1 || s > 3600)
			return bad_value("--profile-seconds", arg, "seconds from 1 to 3600");
		c->profile_ms = (uint32_t)s * 1000;
		return 0;
	}
	case OPT_VERIFY_AHEAD:
		if (parse_size(arg, &c->ahead) || c->ahead > (1ULL << 40))
			return bad_value("--verify-ahead", arg, "a size up to 1T, e.g. 64M, or 0");
		return 0;
	default:
		return -1;
	}
}

static int parse_args(int argc, char **argv, struct lr_config *c)
{
	*c = (struct lr_config){.status_fd = -1, .stats_fd = -1, .stats_log_fd = -1, .fault_around = 64 << 10, .chunk = 1 << 20, .ahead = 64 << 20, .source_timeout_ms = 30000, .profile_faults = 65536, .profile_ms = 30000,
				.prefetch = "auto", .store_wset = true, .compress = "auto",
				.stats_ms = 100, .drain = true, .guard = true, .map = true, .verbose = 1};
	int opt;
	while ((opt = getopt_long(argc, argv, "D:W:o:v::h", long_opts, NULL)) != -1) {
		if (opt == 'h') {
			usage(stdout);
			exit(0);
		}
		if (opt == '?' || parse_one(c, opt, optarg))
			return -1;
	}
	if (optind < argc)
		return bad_value("arguments", argv[optind], "options only");
	if (!c->images_dir) {
		fprintf(stderr, "lr-lazyd: -D/--images-dir is required\n");
		return -1;
	}
	if (!c->work_dir)
		c->work_dir = c->images_dir;
	if (!c->source != !c->secret_file) {
		fprintf(stderr, "lr-lazyd: --source and --secret-file go together\n");
		return -1;
	}
	if (c->fetch_only && !c->source) {
		fprintf(stderr, "lr-lazyd: --fetch-only needs --source and --secret-file\n");
		return -1;
	}
	if (c->criu_ps && c->source) {
		fprintf(stderr, "lr-lazyd: --criu-page-server and --source are two kinds of page source: give one\n");
		return -1;
	}
	if (c->fetch_only)
		c->guard = false; /* nothing to guard: no restore */
	return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void write_status_file(const char *path, const char *json, size_t len)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	int bad = write_all(fd, json, len) || write_all(fd, "\n", 1);
	close(fd);
	if (!bad)
		rename(tmp, path);
}

/* A progress, done or error line to --stats-fd and --status-file. */
static void emit(struct lr_lazyd *d, const char *event, bool with_hist, const char *message)
{
	char buf[16384];
	if (d->src.ops && d->src.ops->stats)
		d->src.ops->stats(&d->src, &d->stats);
	int len = lr_stats_json(&d->stats, event, lr_left_bytes(d), with_hist, buf, sizeof(buf) - 600);
	if (len <= 0 || (size_t)len >= sizeof(buf) - 600)
		return;
	if (message) { /* replace the closing brace with the message, JSON-escaped */
		len--;
		len += snprintf(buf + len, sizeof(buf) - (size_t)len, ",\"message\":\"");
		for (const char *p = message; *p && (size_t)len < sizeof(buf) - 8; p++) {
			if (*p == '"' || *p == '\\')
				buf[len++] = '\\';
			buf[len++] = (*p >= 0 && *p < 0x20) ? ' ' : *p;
		}
		len += snprintf(buf + len, sizeof(buf) - (size_t)len, "\"}");
	}
	if (d->cfg.status_file)
		write_status_file(d->cfg.status_file, buf, (size_t)len);
	lr_log(d, 2, "%s", buf);
	buf[len++] = '\n';
	if (d->cfg.stats_log_fd >= 0 && write_all(d->cfg.stats_log_fd, buf, (size_t)len)) {
		lr_log(d, 0, "warning: writing --stats-log %s failed: %s; no more lines go there", d->cfg.stats_log,
		       strerror(errno));
		close(d->cfg.stats_log_fd);
		d->cfg.stats_log_fd = -1;
	}
	if (d->cfg.stats_fd >= 0 && write_all(d->cfg.stats_fd, buf, (size_t)len)) {
		close(d->cfg.stats_fd); /* the reader went away: keep serving, stop reporting */
		d->cfg.stats_fd = -1;
	}
	d->stats.last_emit_ns = lr_now_ns();
}

/*
 * The guardian never writes: its socket turns readable only when it has died. Without it, a crash of this
 * daemon would leave the tree reading zero pages, so the tree is stopped now, while its pages are still safe.
 */
static int on_guard_gone(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	(void)rec;
	lr_tasks_kill(d);
	return lr_error_set(err, 0, "the guardian (pid %d) died before every page was placed: without it a crash of "
			    "lr-lazyd would leave the tree reading zero pages, so the restored tree was killed; the "
			    "checkpoint is intact", (int)d->guard_pid);
}

/*
 * The page source, before the index (lr-pageserver: the guardian forked, then the checkpoint fetched into the
 * images dir). Its sink: place.c places what arrives, drain.c paces a stream.
 */
static int open_source(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_sink sink = lr_place_sink(d);
	sink.drain_wait_ms = lr_drain_wait_cb;
	return lr_src_choose(d, sink, err);
}

/*
 * The index checked against the source; the working set to place first planned (local images: read from the
 * pages files when placed; lr-pageserver: the server sent it with the checkpoint's files when it has one, and
 * its blocks are fetched ahead now, src_prefetch.c), and the pages files the source reads opened.
 */
static int prepare_source(struct lr_lazyd *d, const char *index_path, struct lr_error *err)
{
	const struct lr_src_ops *o = d->src.ops;
	char path[4096];
	bool missing_ok;
	const char *ws = lr_prefetch_path(d->cfg.prefetch, d->cfg.images_dir, path, sizeof(path), &missing_ok);

	if (d->index.unverified && !o->unverified_ok)
		return lr_error_set(err, 0, "%s has no checksums: it describes a --lazy-pages dump whose pages are in "
				    "CRIU's page server; give --criu-page-server HOST:PORT", index_path);
	if (d->index.live && !o->live_ok)
		return lr_error_set(err, 0, "%s describes a live checkpoint: its lazy pages are read from the stopped source "
				    "tree by lr-pageserver --live; restore it with --source HOST:PORT", index_path);
	/* --criu-page-server takes any index: the pages CRIU's page server serves (a --lazy-pages dump's, or a
	 * normal dump's through `criu page-server --lazy-pages`) are its LR_RANGE_LAZY records (see criu_ps.h) */
	return o->prepare ? o->prepare(&d->src, d->cfg.fetch_only ? NULL : ws, missing_ok, err) : 0;
}

/* What the prefetch plan comes to, in the stats and the log; a working set not used is a warning. */
static void report_plan(struct lr_lazyd *d)
{
	const struct lr_prefetch *p = &d->prefetch;
	d->stats.prefetch_planned = p->planned_bytes;
	d->stats.prefetch_restores = p->n ? p->restores : 0;
	if (p->warning[0]) {
		lr_log(d, 0, "warning: %s", p->warning);
		emit(d, "warning", false, p->warning);
	} else if (p->n) {
		lr_log(d, 1, "prefetch: the working set of %u restore(s): %zu windows, %llu bytes, placed first", p->restores,
		       p->n, (unsigned long long)p->planned_bytes);
	}
}

static int open_inputs(struct lr_lazyd *d, struct lr_error *err)
{
	char path[4096];
	d->page_size = (uint32_t)sysconf(_SC_PAGESIZE);
	if (open_source(d, err))
		return -1;
	if (snprintf(path, sizeof(path), "%s/%s", d->cfg.images_dir, LR_INDEX_NAME) >= (int)sizeof(path))
		return lr_error_set(err, ENAMETOOLONG, "images dir %s", d->cfg.images_dir);
	if (lr_index_open(&d->index, path, d->page_size, err))
		return -1;
	lr_profile_start(&d->profile, &d->index);
	if (prepare_source(d, path, err))
		return -1;
	d->buf_size = (d->cfg.chunk > d->cfg.fault_around ? d->cfg.chunk : d->cfg.fault_around) +
		      2 * (size_t)d->index.hdr->block_size;
	d->buf = malloc(d->buf_size);
	if (!d->buf)
		return lr_error_set(err, ENOMEM, "page buffer of %zu bytes", d->buf_size);
	return 0;
}

/* -o FILE (relative to the work dir): from the start, so a remote fetch is logged there too. */
static int open_log(struct lr_lazyd *d, struct lr_error *err)
{
	char path[4096];
	if (d->cfg.stats_log) {
		d->cfg.stats_log_fd = open(d->cfg.stats_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (d->cfg.stats_log_fd < 0)
			return lr_error_set(err, errno, "--stats-log %s", d->cfg.stats_log);
	}
	if (!d->cfg.log_file)
		return 0;
	if (snprintf(path, sizeof(path), "%s/%s", d->cfg.log_file[0] == '/' ? "" : d->cfg.work_dir, d->cfg.log_file) >=
	    (int)sizeof(path))
		return lr_error_set(err, ENAMETOOLONG, "log file %s", d->cfg.log_file);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
		return lr_error_set(err, errno, "log file %s", path);
	close(fd);
	return 0;
}

/* *path, when relative, made absolute against cwd (the copy is kept in slot `slot` of cfg.absolute). */
static int make_absolute(struct lr_config *c, const char **path, const char *cwd, size_t slot, struct lr_error *err)
{
	if (!*path || (*path)[0] == '/')
		return 0;
	size_t len = strlen(cwd) + strlen(*path) + 2;
	c->absolute[slot] = malloc(len);
	if (!c->absolute[slot])
		return lr_error_set(err, ENOMEM, "path %s", *path);
	snprintf(c->absolute[slot], len, "%s/%s", cwd, *path);
	*path = c->absolute[slot];
	return 0;
}

/*
 * The daemon runs in the work dir (CRIU's socket is there, -o is relative to it), so every other relative path
 * it was given (as `criu lazy-pages -D dump/x` is run by CRIU's zdtm) is made absolute first: the images dir,
 * where the working set is stored and pages files are opened later, the status file and the profile.
 */
static int absolute_paths(struct lr_config *c, struct lr_error *err)
{
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)))
		return lr_error_set(err, errno, "getcwd (to resolve relative paths before entering work dir %s)",
				    c->work_dir);
	return make_absolute(c, &c->images_dir, cwd, 0, err) || make_absolute(c, &c->status_file, cwd, 1, err) ||
	       make_absolute(c, &c->profile_file, cwd, 2, err) || make_absolute(c, &c->stats_log, cwd, 3, err);
}

static int enter_work_dir(struct lr_lazyd *d, struct lr_error *err)
{
	if (absolute_paths(&d->cfg, err))
		return -1;
	if (chdir(d->cfg.work_dir))
		return lr_error_set(err, errno, "work dir %s", d->cfg.work_dir);
	return 0;
}

static int start_listening(struct lr_lazyd *d, struct lr_error *err)
{
	d->listen_fd = lr_criu_listen(err);
	if (d->listen_fd < 0)
		return -1;
	d->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (d->epfd < 0)
		return lr_error_set(err, errno, "epoll_create1");
	d->listen_rec = (struct lr_fdrec){.fd = d->listen_fd, .on_read = lr_conn_on_listen};
	if (lr_loop_add(d->epfd, &d->listen_rec, err))
		return -1;
	if (d->cfg.guard && d->guard_fd < 0 && lr_guard_fork(&d->guard_fd, err))
		return -1;
	d->guard_rec = (struct lr_fdrec){.fd = d->guard_fd, .on_read = on_guard_gone, .on_hup = on_guard_gone};
	d->guard_pid = getppid(); /* lr_guard_fork made the guardian this daemon's parent */
	if (d->cfg.guard && lr_loop_add(d->epfd, &d->guard_rec, err))
		return -1;
	if (d->src.ops->start && d->src.ops->start(&d->src, err))
		return -1;
	if (d->cfg.status_fd >= 0) {
		if (write_all(d->cfg.status_fd, "", 1))
			return lr_error_set(err, errno, "write to --status-fd %d", d->cfg.status_fd);
		close(d->cfg.status_fd);
		d->cfg.status_fd = -1;
	}
	lr_log(d, 1, "listening on %s/%s; %u task(s), %lu lazy pages in %s", d->cfg.work_dir, LR_LAZY_SOCK_NAME,
	       d->index.hdr->task_count, (unsigned long)d->index.hdr->lazy_pages, d->cfg.images_dir);
	return 0;
}

static bool all_placed(const struct lr_lazyd *d)
{
	if (!d->finished)
		return false;
	for (size_t i = 0; i < d->ntasks; i++)
		if (!d->tasks[i]->gone && (d->tasks[i]->spans.left || d->tasks[i]->ndeferred))
			return false;
	return true;
}

static bool has_deferred(const struct lr_lazyd *d)
{
	for (size_t i = 0; i < d->ntasks; i++)
		if (d->tasks[i]->ndeferred)
			return true;
	return false;
}

static int next_timeout(const struct lr_lazyd *d, bool drained)
{
	uint64_t since = (lr_now_ns() - d->stats.last_emit_ns) / 1000000ULL;
	int tick = since >= d->cfg.stats_ms ? 0 : (int)(d->cfg.stats_ms - since);
	bool ready = false;
	int src = d->src.ops->wait_ms ? d->src.ops->wait_ms(&d->src, &ready) : -1;
	if (src >= 0 && src < tick)
		tick = src;
	if (ready)
		return 0;
	if (has_deferred(d))
		return 1;
	if (d->finished && d->cfg.drain && lr_left_bytes(d)) {
		int wait = lr_drain_wait_ms(d);
		if (!wait)
			return drained ? 0 : 1; /* nothing drainable right now: tasks are between layout changes */
		return wait < tick ? wait : tick;
	}
	return tick;
}

static int run(struct lr_lazyd *d, struct lr_error *err)
{
	bool drained = false;
	for (;;) {
		if (stop_signal)
			return lr_error_set(err, 0, "stopped by signal %d before every page was placed", (int)stop_signal);
		if (lr_pages_lease_was_broken())
			return lr_error_set(err, 0, "a pages file of %s was opened for writing during the restore: "
					    "its bytes can no longer be trusted", d->cfg.images_dir);
		if (all_placed(d)) /* checked before sleeping too: the drain step may have placed the last page */
			return 0;
		if (lr_loop_run_once(d->epfd, d, next_timeout(d, drained), err) < 0 || lr_serve_deferred(d, err) ||
		    (d->src.ops->tick && d->src.ops->tick(&d->src, err)))
			return -1;
		if (all_placed(d))
			return 0;
		drained = false;
		if (d->finished && d->cfg.drain && !lr_drain_wait_ms(d)) {
			int rc = lr_drain_step(d, err);
			if (rc < 0)
				return -1;
			drained = rc > 0;
		}
		if ((lr_now_ns() - d->stats.last_emit_ns) / 1000000ULL >= d->cfg.stats_ms)
			emit(d, "progress", false, NULL);
	}
}

/* --profile: the working set is a hint for later restores; failing to write it does not fail this one. */
static void write_profile(struct lr_lazyd *d)
{
	struct lr_error err;
	if (!d->cfg.profile_file)
		return;
	if (lr_wset_write(&d->profile.w, d->cfg.profile_file, &err))
		lr_log(d, 0, "warning: the working set was not saved: %s", err.msg);
	else
		lr_log(d, 1, "working set: %zu of %llu faults recorded in %s", d->profile.w.n,
		       (unsigned long long)d->profile.w.hdr.faults_seen, d->cfg.profile_file);
}

/* Local images: merge this restore's working set into the checkpoint's, one restore at a time (flock). */
static void store_profile(struct lr_lazyd *d, const struct lr_wset *add)
{
	struct lr_error err;
	struct lr_wset w;
	char dir[4096], path[4096];

	if (!add->n || snprintf(dir, sizeof(dir), "%s/lazyrestore", d->cfg.images_dir) >= (int)sizeof(dir) ||
	    snprintf(path, sizeof(path), "%s/%s", d->cfg.images_dir, LR_WSET_NAME) >= (int)sizeof(path))
		return;
	LR_CLEANUP_CLOSE int lock = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lock < 0 || flock(lock, LOCK_EX)) {
		lr_log(d, 0, "warning: the working set was not stored: lock %s: %s", dir, strerror(errno));
		return;
	}
	if (lr_wset_load(&w, path, &d->index, &err) && err.errnum != ENOENT)
		lr_log(d, 0, "warning: %s: replaced by this restore's", err.msg);
	if (lr_wset_merge(&w, add, &err) || lr_wset_write(&w, path, &err))
		lr_log(d, 0, "warning: the working set was not stored: %s", err.msg);
	else
		lr_log(d, 1, "working set stored in %s: %zu pages from %u restore(s)", path, w.n, w.hdr.restores);
	lr_wset_fini(&w);
}

static void finish(struct lr_lazyd *d)
{
	struct lr_error err;
	d->stats.done_ns = lr_now_ns();
	emit(d, "done", true, NULL);
	if (lr_tasks_all_gone(d))
		lr_log(d, 1, "the restored tree is gone: its %zu task(s) exited, no page is left to place", d->ntasks);
	else
		lr_log(d, 1, "every page placed: %lu faults (p50 %.1f us, p99 %.1f us), %lu bytes by fault, %lu by drain, "
	       "resident %.3f s after restore finished", (unsigned long)d->stats.faults,
	       (double)lr_stats_quantile(&d->stats, 0.5) / 1000.0, (double)lr_stats_quantile(&d->stats, 0.99) / 1000.0,
	       (unsigned long)d->stats.fault_bytes, (unsigned long)d->stats.drain_bytes,
	       (double)(d->stats.done_ns - d->stats.finished_ns) / 1e9);
	if (d->cfg.guard && lr_guard_send(d->guard_fd, LR_GUARD_DONE, 0, 0, -1, &err))
		lr_log(d, 0, "telling the guardian: %s", err.msg);
	struct lr_wset add = {0};
	if (d->cfg.store_wset && lr_prefetch_carry(&d->prefetch, d->stats.prefetch_bytes > 0, &d->profile.w, &add, &err))
		lr_log(d, 0, "warning: the working set will not be stored: %s", err.msg);
	int kept = d->src.ops->done ? d->src.ops->done(&d->src, d->cfg.store_wset ? &add : NULL) : 0;
	write_profile(d);
	if (!kept && d->cfg.store_wset)
		store_profile(d, &add);
	lr_wset_fini(&add);
}

static void teardown(struct lr_lazyd *d)
{
	for (size_t i = 0; i < d->ntasks; i++) {
		struct lr_task *t = d->tasks[i];
		if (!t->gone)
			close(t->rec.fd);
		if (!t->gone && t->exit_rec.fd >= 0)
			close(t->exit_rec.fd);
		lr_spans_fini(&t->spans);
		free(t->deferred);
		free(t);
	}
	free(d->tasks);
	lr_wset_fini(&d->profile.w);
	lr_prefetch_fini(&d->prefetch);
	free(d->buf);
	lr_ahead_stop(&d->ahead); /* before the mappings it reads go away */
	if (d->src.ops && d->src.ops->close)
		d->src.ops->close(&d->src);
	lr_pages_close(&d->pages);
	lr_index_close(&d->index);
	if (d->conn_rec.fd >= 0)
		close(d->conn_rec.fd);
	if (d->listen_fd >= 0)
		close(d->listen_fd);
	if (d->epfd >= 0)
		close(d->epfd);
	if (d->cfg.stats_log_fd >= 0)
		close(d->cfg.stats_log_fd);
	for (size_t i = 0; i < sizeof(d->cfg.absolute) / sizeof(d->cfg.absolute[0]); i++)
		free(d->cfg.absolute[i]);
}

/* --fetch-only: the checkpoint fetched and its index checked, then out (restore --prepare). */
static int fetch_only(struct lr_lazyd *d)
{
	struct lr_error err = {0};
	if (open_log(d, &err) || open_inputs(d, &err)) {
		lr_log(d, 0, "error: %s", err.msg);
		teardown(d);
		return 1;
	}
	lr_log(d, 1, "fetched checkpoint into %s (--fetch-only): %lu lazy pages stay on the page server", d->cfg.images_dir,
	       (unsigned long)d->index.hdr->lazy_pages);
	if (d->cfg.status_fd >= 0 && write_all(d->cfg.status_fd, "", 1))
		lr_log(d, 0, "warning: write to --status-fd %d: %s", d->cfg.status_fd, strerror(errno));
	teardown(d);
	return 0;
}

int main(int argc, char **argv)
{
	struct lr_lazyd d = {.guard_fd = -1, .listen_fd = -1, .epfd = -1, .conn_rec = {.fd = -1}};
	struct lr_error err = {0};
	struct sigaction sa = {.sa_handler = on_stop};

	if (parse_args(argc, argv, &d.cfg)) {
		usage(stderr);
		return LR_EXIT_USAGE;
	}
	d.stats.start_ns = lr_now_ns();
	d.pages.dirfd = -1;
	d.profile.max_faults = d.cfg.profile_faults;
	d.profile.max_ms = d.cfg.profile_ms;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	struct sigaction lease = {.sa_handler = lr_pages_lease_broken};
	sigaction(SIGIO, &lease, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (d.cfg.fetch_only)
		return fetch_only(&d);
	int rc = open_log(&d, &err) || open_inputs(&d, &err);
	if (!rc)
		report_plan(&d);
	if (rc || (d.src.ops->commit && d.src.ops->commit(&d.src, &err)) || enter_work_dir(&d, &err) ||
	    start_listening(&d, &err) || run(&d, &err)) {
		lr_log(&d, 0, "error: %s", err.msg);
		if (d.src.ops && d.src.ops->abort_unrun)
			d.src.ops->abort_unrun(&d.src, err.msg);
		emit(&d, "error", false, err.msg);
		teardown(&d);
		return 1;
	}
	finish(&d);
	teardown(&d);
	return 0;
}
