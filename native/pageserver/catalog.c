/* catalog.c: the files a checkpoint is served as, and the page stores behind GET_PAGES (store.h). */
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

/* Checksum blocks of the lazy records: what a bulk stream sends. */
static uint64_t lazy_blocks(const struct lr_index *idx)
{
	uint64_t n = 0;
	for (uint64_t i = 0; i < idx->hdr->record_count; i++)
		if (idx->recs[i].flags & LR_RANGE_LAZY)
			n += lr_block_count(idx->recs[i].start, idx->recs[i].nr_pages * idx->hdr->page_size,
					    idx->hdr->block_size);
	return n;
}

/* The stores behind GET_PAGES: the pages files, and with --live the stopped tree. */
static int open_stores(struct ps_server *s, const char *path, struct lr_error *err)
{
	if (s->index.live && !s->cfg.live_pids)
		return lr_error_set(err, 0, "%s describes a live checkpoint (%llu ranges read from the stopped tree): "
				    "give --live PIDMAP", path, (unsigned long long)s->index.live);
	s->pages = ps_store_open(s->dirfd, s->cfg.images_dir, &s->index, s->cfg.live_pids, err);
	if (!s->pages)
		return -1;
	s->lazy_blocks = lazy_blocks(&s->index);
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
	return list_files(s, err) || open_stores(s, path, err) ? -1 : 0;
}

void ps_catalog_close(struct ps_server *s)
{
	if (s->pages)
		s->pages->ops->close(s->pages);
	s->pages = NULL;
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
