/*
 * lazyrestore_plugin.c: the CRIU plugin that lets any runtime's CRIU run use lazyrestore.
 *
 * CRIU loads every shared object in its plugin directory (/usr/lib/criu/) into
 * each dump and restore. This one acts at two points, through `lazyrestore
 * hook` (lazyrestore/hook.py does the work: C never parses CRIU's images):
 *
 *   restore start (init, stage RESTORE): when the images dir or the work dir
 *     holds lazyrestore/source.json, the restore must be lazy: its pages are
 *     not in the images. A restore asked without --lazy-pages (any runtime
 *     but runc has no way to ask) is made lazy here: CRIU first reads the
 *     option in prepare_lazy_pages_socket(), after the plugins' init (checked
 *     in the tree built against: LR_CRIU_PLUGINS_FIRST). Then the hook starts
 *     lr-lazyd for that source unless a daemon already listens on
 *     lazy-pages.socket, and returns once it listens. CRIU connects to the
 *     socket right after the plugins' init, before any action script runs.
 *   after a dump (fini, stage DUMP, success, not --lazy-pages): the hook
 *     writes the lazy index, view, secret and manifest into the images dir.
 *   dump start (init, stage DUMP) with LAZYRESTORE_LIVE=HOST:PORT in CRIU's
 *     environment: the dump is made live, as `lazyrestore migrate` makes its
 *     own. The plugin sets --lazy-pages, gives CRIU's page server one end of a
 *     socket pair (--ps-socket) and a status pipe (--status-fd): CRIU reads
 *     none of them before it serves the lazy pages (cr_lazy_mem_dump, after
 *     every image is written). It starts `lazyrestore hook` (action live-dump,
 *     detached: not CRIU's child, its fds only the other socket end and the
 *     pipe's read end) with the other ends; that process indexes the dump once
 *     CRIU signals it, serves the stopped tree's memory with lr-pageserver
 *     --live on HOST:PORT, writes a destination kit, and tells CRIU the tree's
 *     fate over the socket: PS_IOV_CLOSE once a destination has every page
 *     (CRIU kills the tree, the runtime's checkpoint succeeds), anything else
 *     for a rollback (CRIU resumes the tree, the checkpoint fails). Its output:
 *     IMAGES/lazyrestore/live.jsonl (JSON events) and live.log.
 *
 * The hook's output goes to CRIU's log; a failed restore hook fails the
 * restore (CRIU aborts when a plugin's init fails) with the cause in its log.
 * LAZYRESTORE_PLUGIN=off in CRIU's environment turns the plugin off;
 * LAZYRESTORE_HOOK_COMMAND overrides the lazyrestore command built in.
 *
 * The plugin reads CRIU's global `opts` (struct cr_options), whose layout is
 * that of the CRIU tree it was built against (4.2 added a field to it). So
 * before it first reads `opts` it asks the running CRIU its version, once
 * (`/proc/self/exe --version`: CRIU exports no version symbol), and in a CRIU
 * other than the one it was built for it disables itself with one line in
 * CRIU's log: dumps go on without it, but a restore of a checkpoint described
 * by lazyrestore/source.json fails (its pages are not in the images).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_PREFIX "lazyrestore: "
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter" /* criu-plugin.h's dummy init/exit stubs */
#include "criu-plugin.h"
#pragma GCC diagnostic pop
#include "criu-log.h"
#include "cr_options.h"
#include "pstree.h" /* root_item: the tree CRIU dumps, set before the plugins start */
#include "version.h" /* the CRIU tree's criu/include/version.h: CRIU_VERSION */

#ifndef LR_HOOK_COMMAND
#error "build with -DLR_HOOK_COMMAND=\"/path/to/lazyrestore\""
#endif
#ifndef LR_CRIU_PLUGINS_FIRST /* 1: CRIU's restore starts plugins before it reads opts.lazy_pages */
#error "build with -DLR_CRIU_PLUGINS_FIRST=0 or 1 (criu-plugin/plugins-first.sh CRIU_TREE)"
#endif
#ifndef LR_CRIU_DUMP_LIVE /* 1: CRIU's dump starts plugins before it reads --lazy-pages, --ps-socket, --status-fd */
#error "build with -DLR_CRIU_DUMP_LIVE=0 or 1 (criu-plugin/dump-live.sh CRIU_TREE)"
#endif
#ifndef LR_CRIU_BUILT_FOR /* overridable for tests: -DLR_CRIU_BUILT_FOR='"0.0.0"' */
#define LR_CRIU_BUILT_FOR CRIU_VERSION
#endif

#define SOURCE_FILE "lazyrestore/source.json"
#define LIVE_ENV "LAZYRESTORE_LIVE" /* HOST:PORT: make this dump live and serve it there */
#define LIVE_EVENTS "lazyrestore/live.jsonl"
#define LIVE_LOG "lazyrestore/live.log"

static bool plugin_off(void)
{
	const char *v = getenv("LAZYRESTORE_PLUGIN");
	return v && !strcmp(v, "off");
}

static const char *hook_command(void)
{
	const char *c = getenv("LAZYRESTORE_HOOK_COMMAND");
	return c && *c ? c : LR_HOOK_COMMAND;
}

/*
 * In a child of CRIU (pid criu): stdout into out and stderr into err, CRIU's action-script variables set, then
 * the hook (JSON events).
 */
static void exec_hook_of(pid_t criu, int out, int err, const char *action)
{
	char dir[64];
	char *argv[] = {(char *)hook_command(), "hook", "--json", NULL};
	sigset_t none;

	snprintf(dir, sizeof(dir), "/proc/%d/fd/%d", criu, criu_get_image_dir());
	sigemptyset(&none); /* CRIU may block signals; the daemons the hook starts must get SIGTERM */
	if (sigprocmask(SIG_SETMASK, &none, NULL) || dup2(out, STDOUT_FILENO) < 0 || dup2(err, STDERR_FILENO) < 0 ||
	    setenv("CRTOOLS_SCRIPT_ACTION", action, 1) || setenv("CRTOOLS_IMAGE_DIR", dir, 1))
		_exit(126);
	execv(argv[0], argv);
	dprintf(STDERR_FILENO, "lazyrestore: error: cannot run %s: %s (set LAZYRESTORE_HOOK_COMMAND?)\n", argv[0],
		strerror(errno));
	_exit(127);
}

/* In the child: stdout and stderr into the pipe out, then the hook. */
static void exec_hook(int out, const char *action)
{
	exec_hook_of(getppid(), out, out, action);
}

/* exec_hook for a restore this plugin made lazy: the hook says so in its summary. */
static void exec_hook_made_lazy(int out, const char *action)
{
	if (setenv("LAZYRESTORE_MADE_LAZY", "1", 1))
		_exit(126);
	exec_hook(out, action);
}

/* Every line the hook prints, into CRIU's log: errors as errors. */
static void relay_output(int in)
{
	FILE *f = fdopen(in, "r");
	char line[1024];

	if (!f) {
		pr_perror("fdopen of the hook's output");
		close(in);
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (strstr(line, "error:"))
			pr_err("hook: %s\n", line);
		else
			pr_info("hook: %s\n", line);
	}
	fclose(f);
}

/* Fork a child that runs child(out, arg), out the write end of a pipe: its pid and the read end in *in, or -1. */
static pid_t spawn_piped(const char *what, void (*child)(int out, const char *arg), const char *arg, int *in)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC)) {
		pr_perror("pipe for %s", what);
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		pr_perror("fork for %s", what);
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0)
		child(p[1], arg); /* does not return */
	close(p[1]);
	*in = p[0];
	return pid;
}

/* Run `lazyrestore hook` for action (made_lazy: this plugin turned the restore lazy) and wait: 0 when it exited 0. */
static int run_hook(const char *action, bool made_lazy)
{
	int in, status;
	pid_t pid = spawn_piped("the hook", made_lazy ? exec_hook_made_lazy : exec_hook, action, &in);

	if (pid < 0)
		return -1;
	relay_output(in);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			pr_perror("waiting for the hook (pid %d)", pid);
			return -1;
		}
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	pr_err("`%s hook` (%s) failed: %s %d; its messages are above\n", hook_command(), action,
	       WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	return -1;
}

static bool has_source_file(void)
{
	return !faccessat(criu_get_image_dir(), SOURCE_FILE, F_OK, 0) || !access(SOURCE_FILE, F_OK);
}

/* In the child: `criu --version` of this very binary into out, with no config file that could fail it. */
static void exec_version(int out, const char *unused)
{
	(void)unused;
	if (dup2(out, STDOUT_FILENO) < 0 || unsetenv("CRIU_CONFIG_FILE"))
		_exit(126);
	execl("/proc/self/exe", "criu", "--no-default-config", "--version", (char *)NULL);
	_exit(127);
}

/* The child's output, NUL-terminated, into buf (size n); its exit status does not matter, only what it printed. */
static int read_child(int in, pid_t pid, char *buf, size_t n)
{
	size_t have = 0;
	ssize_t r = 0;

	while (have < n - 1) {
		r = read(in, buf + have, n - 1 - have);
		if (r > 0)
			have += (size_t)r;
		else if (r == 0 || errno != EINTR)
			break;
	}
	if (r < 0)
		pr_perror("reading `criu --version`");
	buf[have] = 0;
	close(in);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		; /* ECHILD: a SIGCHLD handler of CRIU's reaped it; the output is what counts */
	return r < 0 ? -1 : 0;
}

/* X from the line "Version: X" of out into v (size n): 0, or -1 when there is none. */
static int parse_version(const char *out, char *v, size_t n)
{
	static const char key[] = "Version: ";
	const char *line = out;

	while (line && strncmp(line, key, sizeof(key) - 1)) {
		line = strchr(line, '\n');
		line = line ? line + 1 : NULL;
	}
	if (!line)
		return -1;
	line += sizeof(key) - 1;
	snprintf(v, n, "%.*s", (int)strcspn(line, " \n"), line);
	return *v ? 0 : -1;
}

/* The running CRIU's version (`criu --version` prints "Version: X", criu/config.c) into v (size n): 0, or -1. */
static int running_criu_version(char *v, size_t n)
{
	char out[256];
	int in;
	pid_t pid = spawn_piped("`criu --version`", exec_version, NULL, &in);

	if (pid < 0 || read_child(in, pid, out, sizeof(out)))
		return -1;
	return parse_version(out, v, n);
}

/*
 * True when the running CRIU is the one this plugin was built for, so that `opts` has the layout it was compiled
 * with. Asked once per load (CRIU loads plugins once per dump or restore); the one file-scope state is its answer.
 */
static bool built_for_this_criu(void)
{
	static int match = -1; /* -1: not asked yet */
	char running[64];

	if (match >= 0)
		return match;
	if (running_criu_version(running, sizeof(running)))
		snprintf(running, sizeof(running), "of unknown version");
	match = !strcmp(running, LR_CRIU_BUILT_FOR);
	if (!match)
		pr_warn("plugin built for CRIU %s, running in CRIU %s: disabled; rebuild it with `make plugin`\n",
			LR_CRIU_BUILT_FOR, running);
	return match;
}

/* A restore of a checkpoint lazyrestore describes, in a CRIU this plugin was not built for: refused. */
static int refuse_restore(void)
{
	pr_err("the images or work dir holds %s: its pages are not in the images and only this plugin, disabled, "
	       "would fetch them; refusing the restore\n", SOURCE_FILE);
	return -1;
}

/* What the live-dump hook is handed: CRIU's pid, the dumped tree's root, and the only fds it keeps. */
struct live_hook {
	pid_t criu;
	pid_t root;
	int ps;         /* its end of the socket pair whose other end is CRIU's page server (--ps-socket) */
	int status;     /* the read end of the pipe CRIU writes its status byte into (--status-fd) */
	int status_out; /* the runtime's own status fd, -1 if none: the hook writes a byte into it once it serves */
	int out, err;   /* IMAGES/lazyrestore/live.jsonl and live.log: its stdout and stderr */
};

static int setenv_int(const char *name, int v)
{
	char buf[16];

	snprintf(buf, sizeof(buf), "%d", v);
	return setenv(name, buf, 1);
}

/* In the grandchild: a session of its own, stdin /dev/null, every fd of CRIU's closed but h's, then the hook. */
static void exec_live_hook(const struct live_hook *h)
{
	const int keep[] = {h->ps, h->status, h->status_out};
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (setsid() < 0 || null < 0 || dup2(null, STDIN_FILENO) < 0 || close_range(3, ~0U, CLOSE_RANGE_CLOEXEC))
		_exit(126);
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		if (keep[i] >= 0 && fcntl(keep[i], F_SETFD, 0))
			_exit(126);
	if (setenv_int("LAZYRESTORE_LIVE_PS_FD", h->ps) || setenv_int("LAZYRESTORE_LIVE_STATUS_FD", h->status) ||
	    setenv_int("LAZYRESTORE_LIVE_STATUS_OUT", h->status_out) || setenv_int("LAZYRESTORE_LIVE_CRIU_PID", h->criu) ||
	    setenv_int("CRTOOLS_INIT_PID", h->root) || (opts.output && setenv("LAZYRESTORE_LIVE_CRIU_LOG", opts.output, 1)))
		_exit(126);
	exec_hook_of(h->criu, h->out, h->err, "live-dump");
}

/*
 * The live-dump hook, detached: a child forks it and exits at once, so it is neither CRIU's child (CRIU never
 * waits for it, and it outlives CRIU) nor in CRIU's session. 0 once it is forked, -1 else.
 */
static int spawn_live_hook(const struct live_hook *h)
{
	int status;
	pid_t pid = fork();

	if (pid < 0) {
		pr_perror("fork for the live-dump hook");
		return -1;
	}
	if (pid == 0) {
		pid_t hook = fork();

		if (hook == 0)
			exec_live_hook(h); /* does not return */
		_exit(hook < 0 ? 1 : 0);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			pr_perror("waiting for the live-dump hook's parent (pid %d)", pid);
			return -1;
		}
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		pr_err("could not fork the live-dump hook\n");
		return -1;
	}
	return 0;
}

/* IMAGES/name for appending (mode 0600), IMAGES/lazyrestore made first: the fd, or -1. */
static int open_in_images(const char *name)
{
	int dir = criu_get_image_dir();
	int fd;

	if (mkdirat(dir, "lazyrestore", 0700) && errno != EEXIST) {
		pr_perror("cannot make lazyrestore/ in the images dir");
		return -1;
	}
	fd = openat(dir, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		pr_perror("cannot open %s in the images dir", name);
	return fd;
}

/* Close fd when it is open; for the error paths. */
static void close_fd(int fd)
{
	if (fd >= 0 && close(fd))
		pr_perror("close of fd %d", fd);
}

/*
 * LAZYRESTORE_LIVE=address: make this dump live (see the top of this file). CRIU has not read --lazy-pages,
 * --ps-socket or --status-fd yet: cr_dump_tasks() runs the plugins' init first, the page server reads ps_socket in
 * cr_page_server() and status_fd in status_ready() (run_tcp_server), both from cr_lazy_mem_dump(). Refused (the
 * dump fails, the tree runs on) rather than done otherwise: an explicit setting never falls back to a dump that
 * stops the tree.
 */
/* 0 when this dump may be made live (built for this CRIU, which allows it, and a dump that kills its tree), else -1
 * with the reason in CRIU's log. */
static int live_refused(const char *address)
{
	if (!built_for_this_criu()) { /* first: opts and root_item are laid out as in the CRIU built for */
		pr_err("%s=%s asks for a live dump, but this plugin was not built for this CRIU and cannot set its "
		       "options: refusing the dump\n", LIVE_ENV, address);
		return -1;
	}
	if (!LR_CRIU_DUMP_LIVE) {
		pr_err("%s=%s asks for a live dump, but CRIU %s reads --lazy-pages, --ps-socket or --status-fd before "
		       "it starts plugins, or serves lazy pages after their fini (criu-plugin/dump-live.sh): refusing "
		       "the dump\n", LIVE_ENV, address, LR_CRIU_BUILT_FOR);
		return -1;
	}
	if (opts.lazy_pages) {
		pr_err("%s=%s asks for a live dump served by lazyrestore, but this dump is already --lazy-pages (CRIU's "
		       "page server): ask for one or the other\n", LIVE_ENV, address);
		return -1;
	}
	if (opts.final_state != TASK_DEAD) {
		pr_err("%s=%s asks for a live dump, whose tree is killed once a destination has every page, but this dump "
		       "is to leave it %s (--leave-running or --leave-stopped): two copies would run; refusing the dump\n",
		       LIVE_ENV, address, opts.final_state == TASK_ALIVE ? "running" : "stopped");
		return -1;
	}
	if (opts.img_parent || opts.use_page_server) {
		pr_err("%s=%s asks for a live dump, served from the tree's memory, but this dump %s: refusing the dump\n",
		       LIVE_ENV, address,
		       opts.img_parent
			       ? "has a parent (a pre-dump: --prev-images-dir, runc --parent-path): not supported live"
			       : "sends its pages to a page server (--page-server)");
		return -1;
	}
	return 0;
}

/*
 * LAZYRESTORE_LIVE=address: make this dump live (see the top of this file). CRIU has not read --lazy-pages,
 * --ps-socket or --status-fd yet: cr_dump_tasks() runs the plugins' init first, the page server reads ps_socket in
 * cr_page_server() and status_fd in status_ready() (run_tcp_server), both from cr_lazy_mem_dump(). Refused (the
 * dump fails, the tree runs on) rather than done otherwise: an explicit setting never falls back to a dump that
 * stops the tree.
 */
static int make_dump_live(const char *address)
{
	struct live_hook h = {.criu = getpid(), .root = -1, .ps = -1, .status = -1, .status_out = -1, .out = -1,
			      .err = -1};
	int sk[2] = {-1, -1}, st[2] = {-1, -1};
	int ret = -1;

	if (live_refused(address))
		return -1;
	h.root = root_item ? root_item->pid->real : -1;
	h.status_out = opts.status_fd;
	if (h.root <= 0) {
		pr_err("%s: no tree to dump (root pid %d)\n", LIVE_ENV, h.root);
		return -1;
	}
	if (access(hook_command(), X_OK)) {
		pr_perror("%s=%s: cannot run %s (set LAZYRESTORE_HOOK_COMMAND?)", LIVE_ENV, address, hook_command());
		return -1;
	}
	h.out = open_in_images(LIVE_EVENTS);
	h.err = h.out < 0 ? -1 : open_in_images(LIVE_LOG);
	if (h.err < 0)
		goto out;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sk)) {
		pr_perror("socketpair for the live dump's page server");
		goto out;
	}
	if (pipe2(st, O_CLOEXEC)) {
		pr_perror("pipe for the live dump's status");
		goto out;
	}
	h.ps = sk[1];
	h.status = st[0];
	if (spawn_live_hook(&h))
		goto out;
	if (opts.status_fd >= 0 && close(opts.status_fd)) /* the hook writes into it */
		pr_perror("close of the runtime's status fd %d", opts.status_fd);
	opts.lazy_pages = true;
	opts.ps_socket = sk[0];
	opts.status_fd = st[1];
	sk[0] = st[1] = -1;
	ret = 0;
	pr_info("%s=%s: live dump: the tree stays stopped, its memory served by lr-pageserver --live; how it ends is "
		"in %s\n", LIVE_ENV, address, LIVE_EVENTS);
out:
	close_fd(h.out);
	close_fd(h.err);
	close_fd(sk[0]);
	close_fd(sk[1]);
	close_fd(st[0]);
	close_fd(st[1]);
	return ret;
}

/* LAZYRESTORE_LIVE's value, or NULL when it is not set (or empty). */
static const char *live_address(void)
{
	const char *v = getenv(LIVE_ENV);

	return v && *v ? v : NULL;
}

int lazyrestore_plugin_init(int stage)
{
	if (plugin_off())
		return 0;
	if (stage == CR_PLUGIN_STAGE__DUMP) {
		if (live_address())
			return make_dump_live(live_address());
		built_for_this_criu(); /* says so in the log now; fini reads opts only when it is */
		return 0;
	}
	if (stage != CR_PLUGIN_STAGE__RESTORE || !has_source_file())
		return 0;
	if (!built_for_this_criu())
		return refuse_restore();
	if (opts.lazy_pages) {
		pr_info("%s found: starting lr-lazyd for this restore\n", SOURCE_FILE);
		return run_hook("pre-restore", false);
	}
	if (!LR_CRIU_PLUGINS_FIRST) {
		pr_err("the images or work dir holds %s: its pages come from a page server, but CRIU %s reads "
		       "--lazy-pages before it starts plugins, so this plugin cannot make the restore lazy; restore with "
		       "--lazy-pages (runc restore --lazy-pages); refusing an eager restore that would read absent pages\n",
		       SOURCE_FILE, LR_CRIU_BUILT_FOR);
		return -1;
	}
	opts.lazy_pages = true;
	pr_info("%s found, restore asked without --lazy-pages: made lazy; starting lr-lazyd for this restore\n",
		SOURCE_FILE);
	return run_hook("pre-restore", true);
}

void lazyrestore_plugin_fini(int stage, int ret)
{
	if (stage != CR_PLUGIN_STAGE__DUMP || ret || plugin_off() || !built_for_this_criu() || opts.lazy_pages)
		return;
	if (run_hook("post-dump", false))
		pr_warn("the checkpoint is complete for CRIU but not indexed for lazyrestore: run `lazyrestore index "
			"--images DIR`\n");
}

/*
 * CR_PLUGIN_REGISTER, but with max_hooks 0 (this plugin has no hook, only init and fini): CRIU refuses a plugin
 * whose max_hooks exceeds its own CR_PLUGIN_HOOK__MAX ("Corrupted plugin", and the dump or restore fails), and
 * that grows between versions (4.1: 12, 4.2: 13). So any CRIU loads this plugin, and its init can say whether it
 * was built for it.
 */
cr_plugin_desc_t CR_PLUGIN_DESC = {
	.name = "lazyrestore",
	.init = lazyrestore_plugin_init,
	.exit = lazyrestore_plugin_fini,
	.version = CRIU_PLUGIN_VERSION,
	.max_hooks = 0,
};
