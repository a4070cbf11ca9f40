/* profile.c: recording the working set of a lazy restore (see profile.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lr_cleanup.h"
#include "profile.h"

void lr_profile_add(struct lr_profile *p, uint64_t t_ns, uint32_t rec, uint64_t addr)
{
	p->faults_seen++;
	if (p->n >= p->max_faults || t_ns / 1000000ULL >= p->max_ms)
		return;
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 1024;
		struct lr_profile_entry *v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return; /* the profile is a hint: a shorter one is still right */
		p->v = v;
		p->cap = cap;
	}
	p->v[p->n++] = (struct lr_profile_entry){(uint32_t)(t_ns / 1000ULL), rec, addr};
}

static int write_all(int fd, const void *buf, size_t len)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

int lr_profile_write(const struct lr_profile *p, const char *path, uint32_t page_size, const uint8_t cid[16],
		     struct lr_error *err)
{
	char tmp[4096];
	struct lr_profile_hdr h = {LR_PROFILE_MAGIC, LR_PROFILE_VERSION, page_size, {0}, p->n, p->faults_seen,
				   p->max_faults, p->max_ms};

	memcpy(h.checkpoint_id, cid, sizeof(h.checkpoint_id));
	if (snprintf(tmp, sizeof(tmp), "%s.part", path) >= (int)sizeof(tmp))
		return lr_error_set(err, ENAMETOOLONG, "profile %s", path);
	LR_CLEANUP_CLOSE int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return lr_error_set(err, errno, "create %s", tmp);
	if (write_all(fd, &h, sizeof(h)) || write_all(fd, p->v, p->n * sizeof(*p->v)) || fsync(fd)) {
		int e = errno;
		unlink(tmp);
		return lr_error_set(err, e, "write %s", tmp);
	}
	if (rename(tmp, path)) {
		int e = errno;
		unlink(tmp);
		return lr_error_set(err, e, "rename %s to %s", tmp, path);
	}
	return 0;
}

void lr_profile_fini(struct lr_profile *p)
{
	free(p->v);
	*p = (struct lr_profile){0};
}
