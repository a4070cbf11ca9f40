/*
 * lazyrestore_plugin.c: the CRIU plugin that lets any runtime's CRIU run use lazyrestore.
 *
 * CRIU loads every shared object in its plugin directory (/usr/lib/criu/) into
 * each dump and restore. This one acts at two points, through `lazyrestore
 * hook` (lazyrestore/hook.py does the work: C never parses CRIU's images):
 *
 *   restore start (init, stage RESTORE): when the images dir or the work dir
 *     holds lazyrestore/source.json, the restore must be lazy (--lazy-pages):
 *     an eager one would read pages that are not there, so it is refused. Then
 *     the hook starts lr-lazyd for that source unless a daemon already listens
 *     on lazy-pages.socket, and returns once it listens. CRIU connects to the
 *     socket right after the plugins' init, before any action script runs.
 *   after a dump (fini, stage DUMP, success, not --lazy-pages): the hook
 *     writes the lazy index, view, secret and manifest into the images dir.
 *
 * The hook's output goes to CRIU's log; a failed restore hook fails the
 * restore (CRIU aborts when a plugin's init fails) with the cause in its log.
 * LAZYRESTORE_PLUGIN=off in CRIU's environment turns the plugin off;
 * LAZYRESTORE_HOOK_COMMAND overrides the lazyrestore command built in.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_PREFIX "lazyrestore: "
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter" /* criu-plugin.h's dummy init/exit stubs */
#include "criu-plugin.h"
#pragma GCC diagnostic pop
#include "criu-log.h"
#include "cr_options.h"

#ifndef LR_HOOK_COMMAND
#error "build with -DLR_HOOK_COMMAND=\"/path/to/lazyrestore\""
#endif

#define SOURCE_FILE "lazyrestore/source.json"

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

/* In the child: stdout and stderr into the pipe, CRIU's action-script variables set, then the hook. */
static void exec_hook(int out, const char *action, int images_fd)
{
	char dir[64];
	char *argv[] = {(char *)hook_command(), "hook", NULL};
	sigset_t none;

	snprintf(dir, sizeof(dir), "/proc/%d/fd/%d", getppid(), images_fd);
	sigemptyset(&none); /* CRIU may block signals; the daemons the hook starts must get SIGTERM */
	if (sigprocmask(SIG_SETMASK, &none, NULL) || dup2(out, STDOUT_FILENO) < 0 || dup2(out, STDERR_FILENO) < 0 ||
	    setenv("CRTOOLS_SCRIPT_ACTION", action, 1) || setenv("CRTOOLS_IMAGE_DIR", dir, 1))
		_exit(126);
	execv(argv[0], argv);
	dprintf(STDERR_FILENO, "lazyrestore: error: cannot run %s: %s (set LAZYRESTORE_HOOK_COMMAND?)\n", argv[0],
		strerror(errno));
	_exit(127);
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

/* Run `lazyrestore hook` for action and wait for it: 0 when it exited 0. */
static int run_hook(const char *action)
{
	int images_fd = criu_get_image_dir(), p[2], status;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC)) {
		pr_perror("pipe for the hook");
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		pr_perror("fork for the hook");
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0)
		exec_hook(p[1], action, images_fd);
	close(p[1]);
	relay_output(p[0]);
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

int lazyrestore_plugin_init(int stage)
{
	if (stage != CR_PLUGIN_STAGE__RESTORE || plugin_off() || !has_source_file())
		return 0;
	if (!opts.lazy_pages) {
		pr_err("the images or work dir holds %s: its pages come from a page server, so it restores only with "
		       "--lazy-pages (runc restore --lazy-pages); refusing an eager restore that would read absent pages\n",
		       SOURCE_FILE);
		return -1;
	}
	pr_info("%s found: starting lr-lazyd for this restore\n", SOURCE_FILE);
	return run_hook("pre-restore");
}

void lazyrestore_plugin_fini(int stage, int ret)
{
	if (stage != CR_PLUGIN_STAGE__DUMP || ret || opts.lazy_pages || plugin_off())
		return;
	if (run_hook("post-dump"))
		pr_warn("the checkpoint is complete for CRIU but not indexed for lazyrestore: run `lazyrestore index "
			"--images DIR`\n");
}

CR_PLUGIN_REGISTER("lazyrestore", lazyrestore_plugin_init, lazyrestore_plugin_fini)
