/* catalog.c: the files a checkpoint is served as, and the pages files behind GET_PAGES. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"

#define LR_PAGES_ID_MAX (1u << 20)

static const char *const lazyrestore_files[] = {"lazyrestore/manifest.json", "lazyrestore/index.bin"};

static int add_file(struct ps_server *s, const char *name, size_t *cap, struct lr_error *err)
{
	struct stat st;
	int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st)) {
		if (fd >= 0)
			close(fd);
		return lr_error_set(err, errno, "%s/%s", s->cfg.images_dir, name);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return 0;
	}
	if (s->nfiles == *cap) {
		size_t n = *cap ? *cap * 2 : 32;
		struct ps_file *v = realloc(s->files, n * sizeof(*v));
		if (!v) {
			close(fd);
			return lr_error_set(err, ENOMEM, "file list");
		}
		s->files = v;
		*cap = n;
	}
	struct ps_file *f = &s->files[s->nfiles++];
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->size = (uint64_t)st.st_size;
	f->kind = strncmp(name, "pages-", 6) ? LR_FILE_META : LR_FILE_PAGES; /* lazyrestore/view-pages-N.img is META */
	f->fd = fd;
	return 0;
}

/* A checkpoint file at the top of the images dir: a plain name, not a log (as the manifest lists them). */
static bool served_image(const char *name)
{
	size_t n = strlen(name);
	if (!n || n > LR_NAME_MAX || name[0] == '.' || (n > 4 && !strcmp(name + n - 4, ".log")))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
		      (name[i] >= '0' && name[i] <= '9') || name[i] == '-' || name[i] == '_' || name[i] == '.'))
			return false;
	return true;
}

/* Add the files of subdir (relative to the images dir; "." for the top) whose names start with prefix. */
static int add_dir(struct ps_server *s, const char *subdir, const char *prefix, size_t *cap, struct lr_error *err)
{
	int fd = openat(s->dirfd, subdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : lr_error_set(err, errno, "read %s/%s", s->cfg.images_dir, subdir);
	DIR *dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return lr_error_set(err, errno, "read %s/%s", s->cfg.images_dir, subdir);
	}
	int rc = 0;
	char name[LR_NAME_MAX + 1];
	for (struct dirent *e; !rc && (e = readdir(dir));) {
		if (!served_image(e->d_name) || strncmp(e->d_name, prefix, strlen(prefix)))
			continue;
		if (snprintf(name, sizeof(name), "%s%s%s", strcmp(subdir, ".") ? subdir : "", strcmp(subdir, ".") ? "/" : "",
			     e->d_name) >= (int)sizeof(name))
			continue; /* a name no client could ask for */
		rc = add_file(s, name, cap, err);
	}
	closedir(dir);
	return rc;
}

/*
 * Every regular file at the top of the images dir but logs, the lazy view
 * (lazyrestore/view-*: the pagemaps and eager pages CRIU reads in a lazy
 * restore), then the manifest and the index.
 */
static int list_files(struct ps_server *s, struct lr_error *err)
{
	size_t cap = 0;
	int rc = add_dir(s, ".", "", &cap, err) || add_dir(s, "lazyrestore", "view-", &cap, err) ? -1 : 0;
	for (size_t i = 0; !rc && i < sizeof(lazyrestore_files) / sizeof(*lazyrestore_files); i++)
		rc = add_file(s, lazyrestore_files[i], &cap, err);
	return rc;
}

/* Open every pages file the index uses and check each record lies inside its file. */
static int open_pages(struct ps_server *s, struct lr_error *err)
{
	const struct lr_index *idx = &s->index;
	for (uint64_t i = 0; i < idx->hdr->record_count; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		uint32_t id = r->pages_id;
		if (id >= LR_PAGES_ID_MAX)
			return lr_error_set(err, 0, "index record %" PRIu64 ": pages id %u out of range", i, id);
		if (id >= s->npages_fds) {
			int *fds = realloc(s->pages_fds, (id + 1) * sizeof(*fds));
			uint64_t *sizes = fds ? realloc(s->pages_sizes, (id + 1) * sizeof(*sizes)) : NULL;
			if (fds)
				s->pages_fds = fds;
			if (!sizes)
				return lr_error_set(err, ENOMEM, "pages file table");
			s->pages_sizes = sizes;
			for (uint32_t k = s->npages_fds; k <= id; k++)
				s->pages_fds[k] = -1;
			s->npages_fds = id + 1;
		}
		if (s->pages_fds[id] < 0) {
			char name[32];
			struct stat st;
			snprintf(name, sizeof(name), "pages-%u.img", id);
			s->pages_fds[id] = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
			if (s->pages_fds[id] < 0 || fstat(s->pages_fds[id], &st))
				return lr_error_set(err, errno, "%s/%s", s->cfg.images_dir, name);
			s->pages_sizes[id] = (uint64_t)st.st_size;
		}
		uint64_t len = r->nr_pages * idx->hdr->page_size;
		if (r->offset > s->pages_sizes[id] || len > s->pages_sizes[id] - r->offset)
			return lr_error_set(err, 0, "%s/pages-%u.img: truncated (record %" PRIu64 " needs bytes up to %" PRIu64
					    ", the file has %" PRIu64 ")", s->cfg.images_dir, id, i, r->offset + len,
					    s->pages_sizes[id]);
		if (r->flags & LR_RANGE_LAZY)
			s->lazy_blocks += lr_block_count(r->start, len, idx->hdr->block_size);
	}
	return 0;
}

int ps_catalog_open(struct ps_server *s, struct lr_error *err)
{
	char path[4096];
	s->dirfd = open(s->cfg.images_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0)
		return lr_error_set(err, errno, "images directory %s", s->cfg.images_dir);
	if (snprintf(path, sizeof(path), "%s/%s", s->cfg.images_dir, LR_INDEX_NAME) >= (int)sizeof(path))
		return lr_error_set(err, ENAMETOOLONG, "images directory %s", s->cfg.images_dir);
	if (lr_index_open(&s->index, path, (uint32_t)sysconf(_SC_PAGESIZE), err))
		return -1;
	if (s->index.unverified)
		return lr_error_set(err, 0, "%s has no checksums (made for a --lazy-pages dump served by CRIU's page "
				    "server): nothing to serve from here", path);
	return list_files(s, err) || open_pages(s, err) ? -1 : 0;
}

void ps_catalog_close(struct ps_server *s)
{
	for (uint32_t i = 0; i < s->npages_fds; i++)
		if (s->pages_fds[i] >= 0)
			close(s->pages_fds[i]);
	free(s->pages_fds);
	free(s->pages_sizes);
	for (size_t i = 0; i < s->nfiles; i++)
		close(s->files[i].fd);
	free(s->files);
	lr_index_close(&s->index);
	if (s->dirfd >= 0)
		close(s->dirfd);
}

const struct ps_file *ps_catalog_find(const struct ps_server *s, const char *name, size_t len)
{
	for (size_t i = 0; i < s->nfiles; i++)
		if (strlen(s->files[i].name) == len && !memcmp(s->files[i].name, name, len))
			return &s->files[i];
	return NULL;
}
