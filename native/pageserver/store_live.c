/*
 * store_live.c: the live store (store.h): the LR_RANGE_LIVE records' pages read from the stopped source
 * tree's memory when they are served, one read per PAGES frame, and each block's checksum computed over the
 * bytes as read. process_vm_readv first; where it cannot read (EFAULT: a page the task itself may not read,
 * PROT_NONE or write-only), /proc/PID/mem, which may (kept open per task). Nothing of the tree is kept: the
 * frame being built is the only copy. A task that is gone is an error naming it, never bytes: each task is
 * held by a pidfd, and a read counts only if the task was still alive after it (so its pid was not reused).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include "store.h"

struct live_task {
	uint32_t vpid;              /* the pid in the index */
	pid_t pid;                  /* on this host */
	int pidfd;                  /* holds the task: its pid cannot be reused behind our back */
	int mem_fd;                 /* /proc/PID/mem */
};

struct live_store {
	struct ps_store base;
	const struct lr_index *idx;
	struct live_task *tasks;    /* sorted by vpid */
	size_t ntasks;
};

static int gone(const struct live_task *t, const char *what, int errnum, struct lr_error *err)
{
	return lr_error_set(err, ESRCH, "the source tree is gone (pid %d, task %u of the checkpoint): %s: %s", (int)t->pid,
			    t->vpid, what, strerror(errnum));
}

/* The task still alive after a read: the bytes were its own. */
static int still_there(const struct live_task *t, struct lr_error *err)
{
	if (syscall(SYS_pidfd_send_signal, t->pidfd, 0, NULL, 0) == 0)
		return 0;
	return errno == ESRCH ? gone(t, "it exited", ESRCH, err)
			      : lr_error_set(err, errno, "pid %d (task %u): pidfd_send_signal", (int)t->pid, t->vpid);
}

/* [addr, addr + len) through /proc/PID/mem, which reads pages the task cannot (PROT_NONE, write-only). */
static int read_mem(const struct live_task *t, uint64_t addr, char *buf, uint64_t len, struct lr_error *err)
{
	for (uint64_t done = 0; done < len;) {
		ssize_t n = pread(t->mem_fd, buf + done, len - done, (off_t)(addr + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || (n < 0 && errno == ESRCH))
			return gone(t, "read /proc/PID/mem", n ? errno : ESRCH, err);
		if (n < 0)
			return lr_error_set(err, errno, "pid %d (task %u): read /proc/%d/mem at %#" PRIx64, (int)t->pid, t->vpid,
					    (int)t->pid, addr + done);
		done += (uint64_t)n;
	}
	return 0;
}

/* [addr, addr + len) of the task into buf: in one process_vm_readv when its protections allow. */
static int read_task(const struct live_task *t, uint64_t addr, char *buf, uint64_t len, struct lr_error *err)
{
	uint64_t done = 0;
	while (done < len) {
		struct iovec to = {buf + done, len - done}, from = {(void *)(uintptr_t)(addr + done), len - done};
		ssize_t n = process_vm_readv(t->pid, &to, 1, &from, 1, 0);
		if (n > 0) {
			done += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ESRCH)
			return gone(t, "process_vm_readv", ESRCH, err);
		if (n < 0 && errno != EFAULT)
			return lr_error_set(err, errno, "pid %d (task %u): process_vm_readv at %#" PRIx64, (int)t->pid,
					    t->vpid, addr + done);
		if (read_mem(t, addr + done, buf + done, len - done, err)) /* EFAULT: a page it may not read */
			return -1;
		done = len;
	}
	return still_there(t, err);
}

static void sum_blocks(const struct ps_pages *p, uint32_t bs, const char *data, char *sums)
{
	uint64_t x = p->a;
	for (uint32_t k = 0; k < p->nblocks; k++) {
		uint64_t y = (x / bs + 1) * bs < p->b ? (x / bs + 1) * bs : p->b;
		uint64_t h = XXH3_64bits(data + (x - p->a), y - x);
		memcpy(sums + k * sizeof(h), &h, sizeof(h));
		x = y;
	}
}

static int by_vpid(const void *x, const void *y)
{
	const struct live_task *a = x, *b = y;
	return a->vpid < b->vpid ? -1 : a->vpid > b->vpid;
}

static const struct live_task *find_task(const struct live_store *ls, uint32_t vpid)
{
	struct live_task key = {.vpid = vpid};
	return bsearch(&key, ls->tasks, ls->ntasks, sizeof(key), by_vpid);
}

static int live_get(struct ps_store *st, struct ps_pages *p, struct lr_error *err)
{
	struct live_store *ls = (struct live_store *)st;
	const struct live_task *t = find_task(ls, p->rec->pid);
	size_t sums = (size_t)p->nblocks * sizeof(uint64_t);

	if (!t) /* ps_live_pids_load checked every live record's pid */
		return lr_error_set(err, 0, "task %u is not in the pid map", p->rec->pid);
	char *frame = malloc(p->head + sums + (p->b - p->a));
	if (!frame)
		return lr_error_set(err, ENOMEM, "PAGES frame of %" PRIu64 " bytes", p->b - p->a);
	if (read_task(t, p->a, frame + p->head + sums, p->b - p->a, err)) {
		free(frame);
		return -1;
	}
	sum_blocks(p, ls->idx->hdr->block_size, frame + p->head + sums, frame + p->head);
	p->frame = frame;
	p->read = true;
	p->fd = -1;
	return 0;
}

static void live_close(struct ps_store *st)
{
	struct live_store *ls = (struct live_store *)st;
	for (size_t i = 0; i < ls->ntasks; i++) {
		if (ls->tasks[i].pidfd >= 0)
			close(ls->tasks[i].pidfd);
		if (ls->tasks[i].mem_fd >= 0)
			close(ls->tasks[i].mem_fd);
	}
	free(ls->tasks);
	free(ls);
}

static const struct ps_store_ops live_ops = {"live", live_get, live_close};

/* The state letter in the stat file of thread tid (a name in dirfd, /proc/PID/task), or 0 when it is gone. */
static char thread_state(int dirfd, const char *tid)
{
	char path[300], buf[512];
	snprintf(path, sizeof(path), "%s/stat", tid);
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	const char *p = strrchr(buf, ')'); /* the name before it may hold anything */
	return p && p[1] == ' ' ? p[2] : 0;
}

/* Every thread of the task stopped ('t': ptrace-stop, as CRIU holds it; 'T': SIGSTOP): its memory cannot change
 * while it is served. */
static int stopped(const struct live_task *t, struct lr_error *err)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)t->pid);
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
	if (!dir) {
		int errnum = errno;
		if (fd >= 0)
			close(fd);
		return gone(t, "open /proc/PID/task", errnum, err);
	}
	int rc = 0;
	for (struct dirent *e; !rc && (e = readdir(dir));) {
		char state = e->d_name[0] == '.' ? 't' : thread_state(dirfd(dir), e->d_name);
		if (state && state != 't' && state != 'T')
			rc = lr_error_set(err, 0, "task %u (pid %d): thread %s is not stopped (state %c): a live checkpoint is "
					  "served only while its tree is stopped", t->vpid, (int)t->pid, e->d_name, state);
	}
	closedir(dir);
	return rc;
}

/* The task has live records (a task without, a zombie say, need not be stopped). */
static bool has_live(const struct lr_index *idx, uint32_t vpid)
{
	size_t first, n = lr_index_pid_records(idx, vpid, &first);
	for (size_t i = first; i < first + n; i++)
		if (idx->recs[i].flags & LR_RANGE_LIVE)
			return true;
	return false;
}

/* Hold the task by a pidfd, then open its memory, and check it is the same task still. */
static int open_task(struct live_task *t, struct lr_error *err)
{
	char path[64];
	t->pidfd = (int)syscall(SYS_pidfd_open, t->pid, 0);
	if (t->pidfd < 0)
		return errno == ESRCH ? gone(t, "pidfd_open", ESRCH, err)
				      : lr_error_set(err, errno, "pid %d (task %u): pidfd_open", (int)t->pid, t->vpid);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)t->pid);
	t->mem_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (t->mem_fd < 0)
		return errno == ENOENT || errno == ESRCH ? gone(t, "open /proc/PID/mem", errno, err)
							 : lr_error_set(err, errno, "task %u: open %s", t->vpid, path);
	return still_there(t, err);
}

struct ps_store *ps_store_live_open(const char *pidmap, const struct lr_index *idx, struct lr_error *err)
{
	struct ps_live_pid *pids;
	size_t n;
	struct live_store *ls = calloc(1, sizeof(*ls));

	if (!ls || ps_live_pids_load(pidmap, idx, &pids, &n, err)) {
		if (!ls)
			lr_error_set(err, ENOMEM, "live store");
		free(ls);
		return NULL;
	}
	ls->base.ops = &live_ops;
	ls->idx = idx;
	ls->tasks = calloc(n, sizeof(*ls->tasks));
	for (size_t i = 0; ls->tasks && i < n; i++)
		ls->tasks[i] = (struct live_task){pids[i].vpid, pids[i].pid, -1, -1};
	free(pids);
	if (!ls->tasks) {
		lr_error_set(err, ENOMEM, "live store");
		free(ls);
		return NULL;
	}
	for (ls->ntasks = 0; ls->ntasks < n; ls->ntasks++)
		if (open_task(&ls->tasks[ls->ntasks], err) ||
		    (has_live(idx, ls->tasks[ls->ntasks].vpid) && stopped(&ls->tasks[ls->ntasks], err))) {
			ls->ntasks++; /* closed with the others */
			live_close(&ls->base);
			return NULL;
		}
	return &ls->base;
}
