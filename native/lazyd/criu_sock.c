/* criu_sock.c: the daemon side of CRIU's lazy-pages socket (see criu_sock.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "criu_sock.h"

#define LR_MAX_FDS 4 /* CRIU sends one; extra ones are closed and refused */

int lr_criu_listen(struct lr_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int one = 1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		return lr_error_set(err, errno, "socket");
	strcpy(sa.sun_path, LR_LAZY_SOCK_NAME);
	if (unlink(LR_LAZY_SOCK_NAME) && errno != ENOENT) {
		lr_error_set(err, errno, "remove stale %s", LR_LAZY_SOCK_NAME);
		goto fail;
	}
	/* Accepted sockets inherit SO_PASSCRED, so credentials come with CRIU's first byte. */
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one))) {
		lr_error_set(err, errno, "SO_PASSCRED");
		goto fail;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 4)) {
		lr_error_set(err, errno, "listen on %s", LR_LAZY_SOCK_NAME);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

int lr_criu_accept(int listen_fd, struct lr_criu_conn *c, uint32_t tasks, struct lr_error *err)
{
	int one = 1;
	int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return errno == EAGAIN ? 0 : lr_error_set(err, errno, "accept on %s", LR_LAZY_SOCK_NAME);
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one))) {
		close(fd);
		return lr_error_set(err, errno, "SO_PASSCRED on the restore connection");
	}
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->tasks_expected = tasks;
	c->state = tasks ? LR_CONN_PID : LR_CONN_FINISH;
	c->cur.uffd = -1;
	return 1;
}

/* Take the credentials and fds out of a message; *nfds fds land in fds. */
static void take_cmsgs(struct msghdr *mh, pid_t *pid, int *fds, int *nfds)
{
	*nfds = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET)
			continue;
		if (cm->cmsg_type == SCM_CREDENTIALS && cm->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
			struct ucred uc;
			memcpy(&uc, CMSG_DATA(cm), sizeof(uc));
			*pid = uc.pid;
		} else if (cm->cmsg_type == SCM_RIGHTS) {
			size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < n; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (*nfds < LR_MAX_FDS)
					fds[(*nfds)++] = fd;
				else
					close(fd);
			}
		}
	}
}

/* recvmsg up to len bytes; returns bytes, 0 on EOF, -EAGAIN when nothing is there, -1 on error. */
static ssize_t recv_some(struct lr_criu_conn *c, void *buf, size_t len, pid_t *pid, int *fds, int *nfds,
			 struct lr_error *err)
{
	union {
		char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(LR_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {buf, len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
	ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);

	*nfds = 0;
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? -EAGAIN : lr_error_set(err, errno, "read from CRIU restore");
	take_cmsgs(&mh, pid, fds, nfds);
	if (mh.msg_flags & MSG_CTRUNC) {
		for (int i = 0; i < *nfds; i++)
			close(fds[i]);
		return lr_error_set(err, 0, "CRIU restore sent more control data than the protocol allows");
	}
	return n;
}

static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

static bool is_userfaultfd(int fd)
{
	char path[64], target[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = '\0';
	return strcmp(target, "anon_inode:[userfaultfd]") == 0;
}

static int on_word(struct lr_criu_conn *c, struct lr_criu_task *task, struct lr_error *err)
{
	int32_t word;
	memcpy(&word, c->buf, sizeof(word));
	c->have = 0;
	if (c->state == LR_CONN_FINISH) {
		if ((uint32_t)word != LR_RESTORE_FINISHED)
			return lr_error_set(err, 0, "CRIU restore sent %#x where 'restore finished' (%#x) was expected",
					    (uint32_t)word, LR_RESTORE_FINISHED);
		c->state = LR_CONN_DONE;
		return 2;
	}
	c->cur.pid = word;
	if (word >= 0) {
		c->state = LR_CONN_FD;
		return lr_criu_read(c, task, err);
	}
	*task = (struct lr_criu_task){word, c->cur.host_pid, -1}; /* a zombie: no memory to serve */
	c->state = ++c->tasks_seen == c->tasks_expected ? LR_CONN_FINISH : LR_CONN_PID;
	return 1;
}

static int read_word(struct lr_criu_conn *c, struct lr_criu_task *task, struct lr_error *err)
{
	int fds[LR_MAX_FDS], nfds;
	pid_t cred = 0;
	ssize_t n = recv_some(c, c->buf + c->have, sizeof(c->buf) - c->have, &cred, fds, &nfds, err);

	if (n == -EAGAIN)
		return 0;
	if (n < 0)
		return -1;
	if (nfds) {
		close_all(fds, nfds);
		return lr_error_set(err, 0, "CRIU restore sent a file descriptor where a pid was expected");
	}
	if (n == 0) {
		if (c->state == LR_CONN_DONE)
			return 3;
		c->closed_early = true;
		return lr_error_set(err, 0, "CRIU restore closed the lazy-pages connection before 'restore finished' "
				    "(%u of %u tasks received): the restore failed, see CRIU's log",
				    c->tasks_seen, c->tasks_expected);
	}
	if (c->state == LR_CONN_DONE)
		return lr_error_set(err, 0, "CRIU restore sent data after 'restore finished'");
	if (c->have == 0)
		c->cur.host_pid = cred;
	c->have += (size_t)n;
	return c->have < sizeof(c->buf) ? 0 : on_word(c, task, err);
}

static int read_fd(struct lr_criu_conn *c, struct lr_criu_task *task, struct lr_error *err)
{
	int fds[LR_MAX_FDS], nfds;
	pid_t cred = 0;
	char byte;
	ssize_t n = recv_some(c, &byte, 1, &cred, fds, &nfds, err);

	if (n == -EAGAIN)
		return 0;
	if (n < 0)
		return -1;
	if (n == 0) {
		c->closed_early = true;
		return lr_error_set(err, 0,
				    "CRIU restore closed the lazy-pages connection before sending the uffd of pid %d",
				    c->cur.pid);
	}
	if (nfds != 1 || !is_userfaultfd(fds[0])) {
		close_all(fds, nfds);
		return lr_error_set(err, 0, "expected one userfaultfd for pid %d, got %d descriptor(s) of another kind",
				    c->cur.pid, nfds);
	}
	*task = (struct lr_criu_task){c->cur.pid, c->cur.host_pid ? c->cur.host_pid : cred, fds[0]};
	c->state = ++c->tasks_seen == c->tasks_expected ? LR_CONN_FINISH : LR_CONN_PID;
	return 1;
}

int lr_criu_read(struct lr_criu_conn *c, struct lr_criu_task *task, struct lr_error *err)
{
	return c->state == LR_CONN_FD ? read_fd(c, task, err) : read_word(c, task, err);
}
