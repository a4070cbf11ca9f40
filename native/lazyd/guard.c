/* guard.c: the guardian process (see guard.h). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "guard.h"

#define LR_GUARD_MAX 4096       /* uffds a guardian holds at most */
#define LR_KILL_WAIT_MS 10000

struct lr_guarded {
	int uffd;
	int pidfd;     /* -1 when the task's host pid is unknown (forked child) */
	pid_t host_pid;
	pid_t sid;
	int32_t vpid;
};

struct lr_guardian {
	int sk;
	int daemon_pidfd;
	pid_t daemon_pid;
	struct lr_guarded held[LR_GUARD_MAX];
	size_t n;
	int done;
};

static volatile sig_atomic_t forward_signal;

static void on_stop_signal(int sig)
{
	forward_signal = sig;
}

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static pid_t session_of(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	int sid = 0;
	if (!p || sscanf(p + 2, "%*c %*d %*d %d", &sid) != 1)
		return 0;
	return sid;
}

int lr_guard_send(int guard_fd, enum lr_guard_kind kind, int32_t vpid, pid_t host_pid, int uffd,
		  struct lr_error *err)
{
	struct lr_guard_msg m = {kind, vpid, host_pid, 0};
	int fds[2] = {uffd, -1}, nfds = uffd >= 0;
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {&m, sizeof(m)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (host_pid > 0 && uffd >= 0) {
		fds[1] = pidfd_open_(host_pid);
		nfds += fds[1] >= 0; /* a task already gone has nothing to guard but its uffd */
	}
	if (nfds) {
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
	ssize_t n = sendmsg(guard_fd, &mh, MSG_NOSIGNAL);
	int e = errno;
	if (fds[1] >= 0)
		close(fds[1]);
	if (n != (ssize_t)sizeof(m))
		return lr_error_set(err, n < 0 ? e : EPROTO, "passing uffd of pid %d to the guardian", vpid);
	return 0;
}

/* Receive one message; returns 1 on a message, 2 when none is queued, 0 on EOF, -1 on error. */
static int guard_receive(struct lr_guardian *g)
{
	struct lr_guard_msg m;
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {&m, sizeof(m)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
	int fds[2] = {-1, -1};
	ssize_t n = recvmsg(g->sk, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 2;
	if (n <= 0)
		return n == 0 || errno == ECONNRESET ? 0 : -1;
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(fds, CMSG_DATA(cm), cm->cmsg_len - CMSG_LEN(0));
	if (m.kind == LR_GUARD_DONE) {
		g->done = 1;
		return 1;
	}
	if (g->n == LR_GUARD_MAX || fds[0] < 0) {
		/* Cannot hold it: treat as fatal for the tree rather than risk zero pages. */
		fprintf(stderr, "lr-lazyd guardian: cannot hold the uffd of pid %d\n", m.vpid);
		return -1;
	}
	g->held[g->n++] = (struct lr_guarded){fds[0], fds[1], m.host_pid, m.host_pid > 0 ? session_of(m.host_pid) : 0,
					      m.vpid};
	return 1;
}

static void kill_sessions(const struct lr_guardian *g)
{
	DIR *d = opendir("/proc");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		pid_t pid = atoi(e->d_name);
		if (pid <= 1 || pid == getpid())
			continue;
		pid_t sid = session_of(pid);
		for (size_t i = 0; sid && i < g->n; i++)
			if (g->held[i].sid == sid && sid != getsid(0)) {
				kill(pid, SIGKILL);
				break;
			}
	}
	closedir(d);
}

/* SIGKILL every guarded task and wait (holding the uffds) until they are gone. */
static void kill_tree(struct lr_guardian *g)
{
	struct timespec start, now;

	for (size_t i = 0; i < g->n; i++)
		if (g->held[i].pidfd >= 0)
			syscall(SYS_pidfd_send_signal, g->held[i].pidfd, SIGKILL, NULL, 0);
	kill_sessions(g);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (size_t i = 0; i < g->n; i++) {
		struct pollfd p = {g->held[i].pidfd, POLLIN, 0};
		if (p.fd < 0)
			continue;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (spent < LR_KILL_WAIT_MS)
			poll(&p, 1, (int)(LR_KILL_WAIT_MS - spent));
	}
}

static void report_death(const struct lr_guardian *g, const siginfo_t *si)
{
	char pids[256] = "";
	size_t len = 0;
	for (size_t i = 0; i < g->n && len < sizeof(pids) - 16; i++)
		if (g->held[i].host_pid > 0)
			len += (size_t)snprintf(pids + len, sizeof(pids) - len, "%s%d", len ? " " : "", g->held[i].host_pid);
	if (si->si_code == CLD_EXITED)
		fprintf(stderr, "lr-lazyd guardian: daemon (pid %d) exited with status %d before every page was placed; "
			"killed the restored tree (host pids: %s); the checkpoint is intact and can be restored again\n",
			g->daemon_pid, si->si_status, len ? pids : "none known");
	else
		fprintf(stderr, "lr-lazyd guardian: daemon (pid %d) was killed by signal %d before every page was placed; "
			"killed the restored tree (host pids: %s); the checkpoint is intact and can be restored again\n",
			g->daemon_pid, si->si_status, len ? pids : "none known");
}

static void release(struct lr_guardian *g)
{
	for (size_t i = 0; i < g->n; i++) {
		close(g->held[i].uffd);
		if (g->held[i].pidfd >= 0)
			close(g->held[i].pidfd);
	}
	g->n = 0;
}

static void handle_signals_to_forward(struct lr_guardian *g)
{
	if (forward_signal) {
		kill(g->daemon_pid, SIGTERM);
		forward_signal = 0;
	}
}

/*
 * The guardian's whole life: never returns. SIGTERM and SIGINT are blocked but while ppoll waits, so one that
 * arrives between the check and the wait still ends the wait (with poll, it would wait for good).
 */
static void guard_run(struct lr_guardian *g, const sigset_t *waiting_mask)
{
	siginfo_t si = {0};
	int sk_open = 1;

	for (;;) {
		struct pollfd p[2] = {{g->daemon_pidfd, POLLIN, 0}, {sk_open ? g->sk : -1, POLLIN, 0}};
		handle_signals_to_forward(g);
		if (ppoll(p, 2, NULL, waiting_mask) < 0 && errno != EINTR)
			break;
		if (p[1].revents & (POLLIN | POLLHUP)) {
			int rc = guard_receive(g);
			if (rc < 0)
				break;
			sk_open = rc > 0;
		}
		if (p[0].revents & POLLIN) {
			/* The daemon is gone: take whatever it sent before dying, DONE included. */
			while (sk_open && guard_receive(g) == 1)
				;
			break;
		}
	}
	if (waitid(P_PIDFD, (id_t)g->daemon_pidfd, &si, WEXITED) < 0)
		si.si_code = CLD_KILLED;
	if (g->done) { /* every page was placed: the tree no longer depends on any uffd */
		release(g);
		exit(si.si_code == CLD_EXITED ? si.si_status : 1);
	}
	if (g->n) {
		kill_tree(g);
		report_death(g, &si);
		release(g);
		exit(LR_EXIT_TREE_KILLED);
	}
	exit(si.si_code == CLD_EXITED ? si.si_status : LR_EXIT_TREE_KILLED);
}

int lr_guard_fork(int *guard_fd, struct lr_error *err)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return lr_error_set(err, errno, "guardian socketpair");
	pid_t pid = fork();
	if (pid < 0)
		return lr_error_set(err, errno, "fork the guardian");
	if (pid == 0) {
		close(sv[0]);
		*guard_fd = sv[1];
		return 0;
	}
	close(sv[1]);
	struct lr_guardian *g = calloc(1, sizeof(*g));
	if (!g) {
		kill(pid, SIGKILL);
		fprintf(stderr, "lr-lazyd guardian: out of memory\n");
		exit(1);
	}
	g->sk = sv[0];
	g->daemon_pid = pid;
	g->daemon_pidfd = pidfd_open_(pid);
	if (g->daemon_pidfd < 0) {
		kill(pid, SIGKILL);
		fprintf(stderr, "lr-lazyd guardian: pidfd_open of the daemon: %s\n", strerror(errno));
		exit(1);
	}
	struct sigaction sa = {.sa_handler = on_stop_signal};
	sigset_t stop, waiting_mask;
	if (sigemptyset(&stop) || sigaddset(&stop, SIGTERM) || sigaddset(&stop, SIGINT) ||
	    sigprocmask(SIG_BLOCK, &stop, &waiting_mask) || sigdelset(&waiting_mask, SIGTERM) ||
	    sigdelset(&waiting_mask, SIGINT) || sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) {
		kill(pid, SIGKILL);
		fprintf(stderr, "lr-lazyd guardian: signal setup: %s\n", strerror(errno));
		exit(1);
	}
	signal(SIGPIPE, SIG_IGN);
	guard_run(g, &waiting_mask);
	return -1;
}
