/* remote_fetch.c: authenticating a channel, and fetching the checkpoint's files before the restore. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "lazyd.h"
#include "lr_auth.h"
#include "lr_cleanup.h"
#include "lr_proto_io.h"
#include "remote.h"

#define LR_FETCH_TRY_MS 2000        /* one connection attempt before the fetch */
#define LR_FETCH_BACKOFF_MIN_MS 100
#define LR_FETCH_BACKOFF_MAX_MS 1000
#define LR_FETCH_BAD_MAX 8          /* times one eager range may fail its checksum in transit */

static unsigned long long deadline(int ms)
{
	return lr_net_now_ns() + (unsigned long long)ms * 1000000ULL;
}

int lr_remote_handshake(struct lr_remote *r, uint32_t channel, const uint8_t *expect_cid, int timeout_ms,
			struct lr_error *err)
{
	struct lr_hello h = {LR_PROTO_VERSION, channel, channel == LR_CHANNEL_BULK ? r->session : 0, {0}};
	struct lr_challenge ch;
	struct lr_auth a;
	struct lr_welcome w;
	struct lr_frame f;
	uint8_t want[LR_MAC_SIZE];
	unsigned long long until = deadline(timeout_ms);
	LR_CLEANUP_CLOSE int fd = lr_net_connect(&r->addr, timeout_ms, err);

	if (fd < 0 || lr_random(h.client_nonce, sizeof(h.client_nonce), err) ||
	    lr_send_frame(fd, LR_HELLO, 0, 0, &h, sizeof(h), until, err) ||
	    lr_recv_frame(fd, LR_CHALLENGE, &f, &ch, sizeof(ch), until, err))
		return -1;
	if (f.length != sizeof(ch) || ch.version != LR_PROTO_VERSION)
		return lr_error_set(err, 0, "page server %s: unexpected CHALLENGE (version %u)", r->addr.text, ch.version);
	if (expect_cid && memcmp(expect_cid, ch.checkpoint_id, 16))
		return lr_error_set(err, 0, "page server %s serves another checkpoint than the one being restored",
				    r->addr.text);
	memcpy(r->checkpoint_id, ch.checkpoint_id, 16);
	if (lr_auth_mac(r->secret, LR_AUTH_CLIENT, channel, h.session, ch.checkpoint_id, ch.server_nonce, h.client_nonce,
			a.mac, err) ||
	    lr_send_frame(fd, LR_AUTH, 0, 0, &a, sizeof(a), until, err) ||
	    lr_recv_frame(fd, LR_WELCOME, &f, &w, sizeof(w), until, err))
		return -1;
	if (f.length != sizeof(w) || lr_auth_mac(r->secret, LR_AUTH_SERVER, channel, w.session, ch.checkpoint_id,
						 ch.server_nonce, h.client_nonce, want, err))
		return f.length != sizeof(w) ? lr_error_set(err, 0, "page server %s: malformed WELCOME", r->addr.text) : -1;
	if (!lr_auth_equal(want, w.mac) || (channel == LR_CHANNEL_BULK && w.session != r->session))
		return lr_error_set(err, 0, "page server %s could not prove it holds the checkpoint's secret", r->addr.text);
	r->session = w.session;
	int out = fd;
	fd = -1;
	return out;
}

/* A plain file name: letters, digits, '-', '_', '.'; not empty, no dot file, no ".part" (our temporaries). */
static bool plain_name(const char *name, uint32_t len)
{
	if (!len || name[0] == '.' || (len > 5 && !memcmp(name + len - 5, ".part", 5)))
		return false;
	for (uint32_t i = 0; i < len; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
		      (name[i] >= '0' && name[i] <= '9') || name[i] == '-' || name[i] == '_' || name[i] == '.'))
			return false;
	return true;
}

/* A name the server may list: lazyrestore's manifest, index and working set, the lazy view (lazyrestore/view-*), or a
 * plain top-level name. Nothing with a path of its own, so nothing lands outside the images dir. */
static bool safe_name(const char *name, uint32_t len)
{
	static const char *const fixed[] = {"lazyrestore/manifest.json", "lazyrestore/index.bin", LR_WSET_NAME};
	static const char view[] = "lazyrestore/view-";
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		if (strlen(fixed[i]) == len && !memcmp(fixed[i], name, len))
			return true;
	if (len > LR_NAME_MAX)
		return false;
	if (len > sizeof(view) - 1 && !memcmp(name, view, sizeof(view) - 1))
		return plain_name(name + sizeof(view) - 1, len - (uint32_t)(sizeof(view) - 1));
	return plain_name(name, len);
}

static int fetch_file(int fd, int dirfd, const char *dir, const char *name, uint64_t size, int timeout_ms,
		      char *buf, struct lr_error *err)
{
	char part[LR_NAME_MAX + 8];
	struct lr_file_req q = {(uint32_t)strlen(name), 0};
	char req[sizeof(q) + LR_NAME_MAX];
	struct lr_frame f;
	uint64_t got = 0;

	memcpy(req, &q, sizeof(q));
	memcpy(req + sizeof(q), name, q.name_len);
	snprintf(part, sizeof(part), "%s.part", name);
	LR_CLEANUP_CLOSE int out = openat(dirfd, part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		return lr_error_set(err, errno, "create %s/%s", dir, part);
	if (lr_send_frame(fd, LR_GET_FILE, 0, 1, req, (uint32_t)(sizeof(q) + q.name_len), deadline(timeout_ms), err))
		return -1;
	do {
		if (lr_recv_frame(fd, LR_FILE_DATA, &f, buf, LR_FRAME_MAX, deadline(timeout_ms), err))
			return -1;
		if (f.length > size - got)
			return lr_error_set(err, 0, "page server sent more of %s than the %" PRIu64 " bytes it listed", name, size);
		if (pwrite(out, buf, f.length, (off_t)got) != (ssize_t)f.length)
			return lr_error_set(err, errno ? errno : EIO, "write %s/%s", dir, part);
		got += f.length;
	} while (f.flags & LR_F_MORE);
	if (got != size)
		return lr_error_set(err, 0, "page server sent %" PRIu64 " bytes of %s, it listed %" PRIu64, got, name, size);
	if (renameat(dirfd, part, dirfd, name))
		return lr_error_set(err, errno, "rename %s/%s", dir, part);
	return 0;
}

static int sparse_file(int dirfd, const char *dir, const char *name, uint64_t size, struct lr_error *err)
{
	LR_CLEANUP_CLOSE int out = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0 || ftruncate(out, (off_t)size))
		return lr_error_set(err, errno, "create %s/%s", dir, name);
	return 0;
}

int lr_file_entry_next(const char *list, uint32_t len, uint32_t *at, struct lr_file_entry *e,
		       char name[LR_NAME_MAX + 1], struct lr_error *err)
{
	if (len - *at < sizeof(*e))
		return lr_error_set(err, 0, "page server sent a truncated file list");
	memcpy(e, list + *at, sizeof(*e));
	if (!e->name_len || e->name_len > len - *at - sizeof(*e) || !safe_name(list + *at + sizeof(*e), e->name_len) ||
	    (e->kind != LR_FILE_META && e->kind != LR_FILE_PAGES))
		return lr_error_set(err, 0, "page server listed a file outside a checkpoint (entry at byte %u)", *at);
	memcpy(name, list + *at + sizeof(*e), e->name_len);
	name[e->name_len] = 0;
	*at += (uint32_t)sizeof(*e) + e->name_len;
	return 0;
}

/* LIST, then every file: metadata whole, pages files as sparse files of their size. */
static int fetch_listed(int fd, int dirfd, const char *dir, int timeout_ms, char *buf, struct lr_error *err)
{
	struct lr_frame f;
	if (lr_send_frame(fd, LR_LIST, 0, 1, NULL, 0, deadline(timeout_ms), err) ||
	    lr_recv_frame(fd, LR_FILES, &f, buf, LR_FRAME_MAX, deadline(timeout_ms), err))
		return -1;
	LR_CLEANUP_FREE char *list = malloc(f.length ? f.length : 1);
	if (!list)
		return lr_error_set(err, ENOMEM, "file list");
	memcpy(list, buf, f.length);
	for (uint32_t at = 0; at < f.length;) {
		struct lr_file_entry e;
		char name[LR_NAME_MAX + 1];
		if (lr_file_entry_next(list, f.length, &at, &e, name, err))
			return -1;
		if (e.kind == LR_FILE_META ? fetch_file(fd, dirfd, dir, name, e.size, timeout_ms, buf, err)
					   : sparse_file(dirfd, dir, name, e.size, err))
			return -1;
	}
	return 0;
}

int lr_pages_frame_check(const struct lr_index *idx, const char *payload, uint32_t len, struct lr_pages_hdr *h,
			 uint64_t *a, const char **data, struct lr_error *err)
{
	if (len < sizeof(*h))
		return lr_error_set(err, 0, "PAGES frame of %u bytes is too short", len);
	memcpy(h, payload, sizeof(*h));
	if (h->record >= idx->hdr->record_count)
		return lr_error_set(err, 0, "PAGES for record %" PRIu64 ": the index has %" PRIu64, h->record,
				    idx->hdr->record_count);
	const struct lr_index_record *r = &idx->recs[h->record];
	uint64_t bs = idx->hdr->block_size, base = r->start / bs * bs, end = lr_record_end(idx, r);
	uint64_t nb = lr_block_count(r->start, r->nr_pages * idx->hdr->page_size, idx->hdr->block_size);
	if (!h->nblocks || h->first_block >= nb || h->nblocks > nb - h->first_block)
		return lr_error_set(err, 0, "PAGES for record %" PRIu64 " blocks %u+%u: the record has %" PRIu64,
				    h->record, h->first_block, h->nblocks, nb);
	*a = base + h->first_block * bs < r->start ? r->start : base + h->first_block * bs;
	uint64_t b = base + (h->first_block + (uint64_t)h->nblocks) * bs > end ? end
						: base + (h->first_block + (uint64_t)h->nblocks) * bs;
	if (h->data_len != b - *a || len != sizeof(*h) + h->nblocks * 8ULL + h->data_len)
		return lr_error_set(err, 0, "PAGES for record %" PRIu64 ": %" PRIu64 " data bytes in a %u-byte frame, "
				    "expected %" PRIu64, h->record, h->data_len, len, b - *a);
	*data = payload + sizeof(*h) + h->nblocks * 8ULL;
	for (uint32_t k = 0; k < h->nblocks; k++) {
		uint64_t sent, x = *a > base + (h->first_block + k) * bs ? *a : base + (h->first_block + k) * bs;
		uint64_t y = base + (h->first_block + k + 1) * bs < b ? base + (h->first_block + k + 1) * bs : b;
		memcpy(&sent, payload + sizeof(*h) + k * 8ULL, 8);
		if (sent != idx->sums[r->first_checksum + h->first_block + k] || XXH3_64bits(*data + (x - *a), y - x) != sent)
			return lr_error_set(err, EBADMSG, "page bytes of pid %u at %#" PRIx64 " (record %" PRIu64 " block %u) "
					    "from the page server fail their checksum", r->pid, x, h->record,
					    h->first_block + k);
	}
	return 0;
}

int lr_remote_inflate(struct lr_remote *r, uint16_t flags, const char **payload, uint32_t *len, struct lr_error *err)
{
	r->wire_bytes += *len;
	if (!(flags & LR_F_ZSTD))
		return 0;
	uint32_t n;
	if (lr_zpages_inflate(r->zdx, *payload, *len, r->zbuf, LR_FRAME_MAX, &n, err))
		return -1;
	r->zstd_frames++;
	*payload = r->zbuf;
	*len = n;
	return 0;
}

/* The eager ranges of every pages file, fetched and verified (CRIU reads them itself at restore). */
/* One GET_PAGES of the eager fetch; bytes that fail their checksum in transit are asked for again. */
static int fetch_range(struct lr_remote *r, int fd, const struct lr_index *idx, struct lr_page_req q, int timeout_ms,
		       char *buf, struct lr_pages_hdr *h, const char **data, uint64_t *a, struct lr_error *err)
{
	for (int attempt = 1;; attempt++) {
		struct lr_frame f;
		const char *payload = buf;
		if (lr_send_frame(fd, LR_GET_PAGES, r->want, 1, &q, sizeof(q), deadline(timeout_ms), err) ||
		    lr_recv_frame(fd, LR_PAGES, &f, buf, LR_FRAME_MAX, deadline(timeout_ms), err) ||
		    lr_remote_inflate(r, f.flags, &payload, &f.length, err))
			return -1;
		if (!lr_pages_frame_check(idx, payload, f.length, h, a, data, err))
			break;
		if (err->errnum != EBADMSG || attempt == LR_FETCH_BAD_MAX)
			return -1;
		fprintf(stderr, "lr-lazyd: %s; asking for it again\n", err->msg);
	}
	if (h->record != q.record || h->first_block != q.first_block || h->nblocks != q.nblocks)
		return lr_error_set(err, 0, "page server answered another range than asked for");
	return 0;
}

static int fetch_eager(struct lr_remote *rm, int fd, int dirfd, const struct lr_index *idx, int timeout_ms, char *buf,
		       struct lr_error *err)
{
	uint32_t per = LR_PAGES_MAX_DATA / idx->hdr->block_size;
	for (uint64_t i = 0; i < idx->hdr->record_count; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		uint64_t nb = lr_block_count(r->start, r->nr_pages * idx->hdr->page_size, idx->hdr->block_size);
		char name[32];
		if (r->flags & LR_RANGE_LAZY)
			continue;
		snprintf(name, sizeof(name), "pages-%u.img", r->pages_id);
		LR_CLEANUP_CLOSE int out = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
		if (out < 0)
			return lr_error_set(err, errno, "open %s (not listed by the page server?)", name);
		for (uint64_t k = 0; k < nb; k += per) {
			struct lr_page_req q = {i, (uint32_t)k, (uint32_t)(nb - k < per ? nb - k : per)};
			struct lr_pages_hdr h;
			const char *data;
			uint64_t a;
			if (fetch_range(rm, fd, idx, q, timeout_ms, buf, &h, &data, &a, err))
				return -1;
			if (pwrite(out, data, h.data_len, (off_t)(r->offset + (a - r->start))) != (ssize_t)h.data_len)
				return lr_error_set(err, errno ? errno : EIO, "write %s", name);
		}
	}
	return 0;
}

/* The connection failed on the way, not by the server's word: worth trying again while the timeout lasts. */
static bool transient(const struct lr_error *err)
{
	switch (err->errnum) {
	case ECONNREFUSED: case ECONNRESET: case ECONNABORTED: case EHOSTUNREACH: case ENETUNREACH: case ENETDOWN:
	case ETIMEDOUT: case EPIPE:
		return true;
	default:
		return strstr(err->msg, "closed the connection") != NULL;
	}
}

/* The first (urgent) channel: a page server that is not up yet, or restarting, gets until the source timeout. */
static int first_handshake(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	unsigned long long start = lr_net_now_ns(), spent_ms = 0;
	unsigned backoff_ms = LR_FETCH_BACKOFF_MIN_MS;

	for (;;) {
		int left = (int)(r->timeout_ms - spent_ms);
		int fd = lr_remote_handshake(r, LR_CHANNEL_URGENT, NULL, left < LR_FETCH_TRY_MS ? left : LR_FETCH_TRY_MS,
					     err);
		if (fd >= 0 || !transient(err))
			return fd;
		spent_ms = (lr_net_now_ns() - start) / 1000000ULL;
		if (spent_ms + backoff_ms >= r->timeout_ms)
			return lr_error_set(err, 0, "page server %s unreachable for %llu s (last: %s)", r->addr.text,
					    (unsigned long long)(r->timeout_ms / 1000), err->msg);
		if (backoff_ms == LR_FETCH_BACKOFF_MIN_MS)
			lr_log(d, 0, "page server %s not reachable yet (%s); trying for up to %llu s", r->addr.text,
			       err->msg, (unsigned long long)(r->timeout_ms / 1000));
		usleep(backoff_ms * 1000);
		spent_ms += backoff_ms;
		backoff_ms = backoff_ms * 2 > LR_FETCH_BACKOFF_MAX_MS ? LR_FETCH_BACKOFF_MAX_MS : backoff_ms * 2;
	}
}

int lr_remote_fetch(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	const char *dir = d->cfg.images_dir;
	int ms = (int)r->timeout_ms;
	char path[4096];
	struct lr_index idx = {0};

	if (lr_secret_load(d->cfg.secret_file, r->secret, err) || lr_addr_parse(d->cfg.source, &r->addr, err))
		return -1;
	if ((mkdir(dir, 0755) && errno != EEXIST) || snprintf(path, sizeof(path), "%s/lazyrestore", dir) >= (int)sizeof(path) ||
	    (mkdir(path, 0755) && errno != EEXIST))
		return lr_error_set(err, errno, "create %s", path);
	LR_CLEANUP_CLOSE int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	LR_CLEANUP_FREE char *buf = malloc(LR_FRAME_MAX);
	if (dirfd < 0 || !buf)
		return lr_error_set(err, dirfd < 0 ? errno : ENOMEM, "images directory %s", dir);
	r->zdx = ZSTD_createDCtx();
	r->zbuf = malloc(LR_FRAME_MAX);
	if (!r->zdx || !r->zbuf)
		return lr_error_set(err, ENOMEM, "zstd buffers");
	r->want = LR_F_ZSTD; /* all-zero blocks never travel as bytes; LR_F_COMPRESS once the link is measured */
	LR_CLEANUP_CLOSE int fd = first_handshake(d, err);
	if (fd < 0 || fetch_listed(fd, dirfd, dir, ms, buf, err))
		return -1;
	snprintf(path, sizeof(path), "%s/%s", dir, LR_INDEX_NAME);
	if (lr_index_open(&idx, path, (uint32_t)sysconf(_SC_PAGESIZE), err))
		return -1;
	int rc = memcmp(idx.hdr->checkpoint_id, r->checkpoint_id, 16)
			 ? lr_error_set(err, 0, "the index the page server sent belongs to another checkpoint")
		 : idx.unverified ? lr_error_set(err, 0, "the index the page server sent has no checksums")
			 : fetch_eager(r, fd, dirfd, &idx, ms, buf, err);
	lr_index_close(&idx);
	if (rc)
		return -1;
	lr_log(d, 1, "fetched the checkpoint from %s into %s (session %llu)", r->addr.text, dir,
	       (unsigned long long)r->session);
	r->urgent.rec.fd = fd; /* kept: it becomes the urgent channel */
	fd = -1;
	return 0;
}
