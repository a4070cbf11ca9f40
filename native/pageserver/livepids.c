/*
 * livepids.c: the pid map of a live checkpoint (store.h), written by the Python side beside the index
 * (lazyrestore/live-pids): one line per task, "VPID HOSTPID\n", both decimal without sign or leading zero,
 * VPID as in the index records' pid field, HOSTPID the stopped task on this host. Nothing else: no blank
 * lines, comments or spaces; no VPID or HOSTPID twice; every live record's pid present.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lr_cleanup.h"
#include "store.h"

#define LR_LIVE_PIDS_MAX_BYTES (1u << 20)

/* The whole file, NUL-terminated, into *out (malloc'ed); *len its length. */
static int slurp(const char *path, char **out, size_t *len, struct lr_error *err)
{
	LR_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (fd < 0 || fstat(fd, &st))
		return lr_error_set(err, errno, "pid map %s", path);
	if (!S_ISREG(st.st_mode) || st.st_size > LR_LIVE_PIDS_MAX_BYTES)
		return lr_error_set(err, 0, "pid map %s: not a regular file of at most %u bytes", path,
				    LR_LIVE_PIDS_MAX_BYTES);
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return lr_error_set(err, ENOMEM, "pid map %s", path);
	ssize_t n = read(fd, buf, (size_t)st.st_size + 1);
	if (n != st.st_size) {
		free(buf);
		return lr_error_set(err, n < 0 ? errno : 0, "pid map %s: read %zd bytes of %lld", path, n,
				    (long long)st.st_size);
	}
	buf[n] = 0;
	*out = buf;
	*len = (size_t)n;
	return 0;
}

/* A decimal number in [1, max] at *p, no sign or leading zero, followed by `end`; *p moved past `end`. */
static int number(const char **p, char end, uint64_t max, uint64_t *v)
{
	const char *s = *p;
	uint64_t x = 0;
	if (*s < '1' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		x = x * 10 + (uint64_t)(*s - '0');
		if (x > max)
			return -1;
	}
	if (*s != end)
		return -1;
	*v = x;
	*p = s + 1;
	return 0;
}

static int by_vpid(const void *x, const void *y)
{
	const struct ps_live_pid *a = x, *b = y;
	return a->vpid < b->vpid ? -1 : a->vpid > b->vpid;
}

static int by_pid(const void *x, const void *y)
{
	const struct ps_live_pid *a = x, *b = y;
	return a->pid < b->pid ? -1 : a->pid > b->pid;
}

static int parse(const char *path, const char *text, size_t len, struct ps_live_pid *v, size_t *n,
		 struct lr_error *err)
{
	const char *p = text;
	size_t line = 1;

	for (*n = 0; p < text + len; line++) {
		uint64_t vpid, pid;
		if (number(&p, ' ', UINT32_MAX, &vpid) || number(&p, '\n', INT32_MAX, &pid))
			return lr_error_set(err, 0, "pid map %s: line %zu: expected \"VPID HOSTPID\" (two positive decimal "
					    "numbers, one space, a newline)", path, line);
		v[(*n)++] = (struct ps_live_pid){(uint32_t)vpid, (pid_t)pid};
	}
	if (!*n)
		return lr_error_set(err, 0, "pid map %s: empty", path);
	return 0;
}

/* No task and no host pid twice; leaves v sorted by vpid. */
static int unique(const char *path, struct ps_live_pid *v, size_t n, struct lr_error *err)
{
	qsort(v, n, sizeof(*v), by_pid);
	for (size_t i = 1; i < n; i++)
		if (v[i].pid == v[i - 1].pid)
			return lr_error_set(err, 0, "pid map %s: host pid %d given twice", path, (int)v[i].pid);
	qsort(v, n, sizeof(*v), by_vpid);
	for (size_t i = 1; i < n; i++)
		if (v[i].vpid == v[i - 1].vpid)
			return lr_error_set(err, 0, "pid map %s: task %u given twice", path, v[i].vpid);
	return 0;
}

/* Every live record's pid has a line. */
static int covers(const char *path, const struct lr_index *idx, const struct ps_live_pid *v, size_t n,
		  struct lr_error *err)
{
	for (uint64_t i = 0; i < idx->hdr->record_count; i++) {
		struct ps_live_pid key = {idx->recs[i].pid, 0};
		if ((idx->recs[i].flags & LR_RANGE_LIVE) && !bsearch(&key, v, n, sizeof(*v), by_vpid))
			return lr_error_set(err, 0, "pid map %s: no line for task %u (index record %" PRIu64 " is read "
					    "from its memory)", path, key.vpid, i);
	}
	return 0;
}

int ps_live_pids_load(const char *path, const struct lr_index *idx, struct ps_live_pid **out, size_t *n,
		      struct lr_error *err)
{
	LR_CLEANUP_FREE char *text = NULL;
	size_t len = 0;

	if (slurp(path, &text, &len, err))
		return -1;
	struct ps_live_pid *v = malloc((len / 4 + 1) * sizeof(*v)); /* a line is 4 bytes at least */
	if (!v)
		return lr_error_set(err, ENOMEM, "pid map %s", path);
	if (parse(path, text, len, v, n, err) || unique(path, v, *n, err) || covers(path, idx, v, *n, err)) {
		free(v);
		return -1;
	}
	*out = v;
	return 0;
}
