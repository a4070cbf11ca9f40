/* tasks.c: the restored tasks and their uffds. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "guard.h"
#include "lazyd.h"

void lr_tasks_kill(struct lr_lazyd *d)
{
	for (size_t i = 0; i < d->ntasks; i++) {
		pid_t pid = d->tasks[i]->host_pid;
		int pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
		if (pidfd < 0)
			continue; /* unknown, or already gone */
		struct pollfd p = {pidfd, POLLIN, 0};
		if (syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) == 0 && poll(&p, 1, 10000) <= 0)
			lr_log(d, 0, "pid %d did not die within 10 s of SIGKILL", pid);
		close(pidfd);
	}
}

static int grow_tasks(struct lr_lazyd *d, struct lr_error *err)
{
	if (d->ntasks < d->cap)
		return 0;
	size_t cap = d->cap ? d->cap * 2 : 8;
	struct lr_task **v = realloc(d->tasks, cap * sizeof(*v));
	if (!v)
		return lr_error_set(err, ENOMEM, "task table");
	d->tasks = v;
	d->cap = cap;
	return 0;
}

/* A task's pidfd turned readable: it exited, so nothing it faults on is left to serve (even with --no-drain). */
static int on_task_exit(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	struct lr_task *t = lr_container_of(rec, struct lr_task, exit_rec);
	(void)err;
	if (t->gone) /* dropped earlier in the same batch of ready fds */
		return 0;
	lr_log(d, 1, "task pid %d (host %d) exited", t->pid, t->host_pid);
	lr_task_gone(d, t);
	return 0;
}

/*
 * Watch for the task's exit: its pidfd in the loop. 1 when the task has already exited (ESRCH), 0 when watched
 * or its host pid is unknown (a child forked after restore: it is dropped only when placing a page fails).
 */
static int watch_exit(struct lr_lazyd *d, struct lr_task *t, struct lr_error *err)
{
	t->exit_rec = (struct lr_fdrec){.fd = -1, .on_read = on_task_exit, .on_hup = on_task_exit};
	if (t->host_pid <= 0)
		return 0;
	int fd = (int)syscall(SYS_pidfd_open, t->host_pid, 0);
	if (fd < 0)
		return errno == ESRCH ? 1 : lr_error_set(err, errno, "pidfd_open of pid %d (host %d)", t->pid, t->host_pid);
	t->exit_rec.fd = fd;
	if (lr_loop_add(d->epfd, &t->exit_rec, err)) {
		close(fd);
		t->exit_rec.fd = -1;
		return -1;
	}
	return 0;
}

int lr_task_add(struct lr_lazyd *d, int32_t pid, pid_t host_pid, int uffd, const struct lr_spans *parent,
		lr_fd_cb on_uffd, struct lr_task **out, struct lr_error *err)
{
	struct lr_task *t = calloc(1, sizeof(*t));
	if (!t || grow_tasks(d, err)) {
		free(t);
		return t ? -1 : lr_error_set(err, ENOMEM, "task of pid %d", pid);
	}
	t->rec = (struct lr_fdrec){.fd = uffd, .on_read = on_uffd};
	t->pid = pid;
	t->host_pid = host_pid;
	t->novma_at_events = UINT64_MAX;
	int rc = parent ? lr_spans_clone(&t->spans, parent, err) : lr_spans_init(&t->spans, &d->index, (uint32_t)pid, err);
	if (rc || lr_loop_add(d->epfd, &t->rec, err)) {
		lr_spans_fini(&t->spans);
		free(t);
		return -1;
	}
	int exited = watch_exit(d, t, err);
	if (exited < 0) {
		struct lr_error ignored;
		lr_loop_del(d->epfd, &t->rec, &ignored);
		lr_spans_fini(&t->spans);
		free(t);
		return -1;
	}
	d->tasks[d->ntasks++] = t;
	d->stats.tasks++;
	*out = t;
	if (exited) {
		lr_log(d, 1, "task pid %d (host %d) exited before its uffd arrived", pid, host_pid);
		lr_task_gone(d, t);
	}
	return 0;
}

bool lr_tasks_all_gone(const struct lr_lazyd *d)
{
	for (size_t i = 0; i < d->ntasks; i++)
		if (!d->tasks[i]->gone)
			return false;
	return d->ntasks > 0;
}

void lr_task_gone(struct lr_lazyd *d, struct lr_task *t)
{
	if (t->gone)
		return;
	struct lr_error ignored;
	lr_loop_del(d->epfd, &t->rec, &ignored);
	lr_log(d, 1, "task pid %d (host %d, uffd %d) is gone with %lu pages unplaced", t->pid, t->host_pid, t->rec.fd,
	       (unsigned long)t->spans.left);
	close(t->rec.fd);
	t->rec.fd = -1;
	if (t->exit_rec.fd >= 0) {
		lr_loop_del(d->epfd, &t->exit_rec, &ignored);
		close(t->exit_rec.fd);
		t->exit_rec.fd = -1;
	}
	lr_spans_fini(&t->spans);
	free(t->deferred);
	t->deferred = NULL;
	t->ndeferred = t->capdeferred = 0;
	t->gone = true;
	d->stats.tasks_gone++;
}

int lr_task_defer(struct lr_task *t, uint64_t addr, uint64_t t0, struct lr_error *err)
{
	for (size_t i = 0; i < t->ndeferred; i++)
		if (t->deferred[i].addr == addr)
			return 0;
	if (t->ndeferred == t->capdeferred) {
		size_t cap = t->capdeferred ? t->capdeferred * 2 : 8;
		struct lr_deferred *v = realloc(t->deferred, cap * sizeof(*v));
		if (!v)
			return lr_error_set(err, ENOMEM, "deferred faults of pid %d", t->pid);
		t->deferred = v;
		t->capdeferred = cap;
	}
	t->deferred[t->ndeferred++] = (struct lr_deferred){addr, t0};
	return 0;
}

uint64_t lr_left_bytes(const struct lr_lazyd *d)
{
	uint64_t left = 0;
	for (size_t i = 0; i < d->ntasks; i++)
		if (!d->tasks[i]->gone)
			left += d->tasks[i]->spans.left;
	return left * d->page_size;
}
