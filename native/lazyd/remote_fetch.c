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
#define LR_FETCH_POLL_MS 10         /* between connections the source's host refused (nothing listens yet): a
				     * destination started before `migrate` serves is in within 10 ms of it */
#define LR_FETCH_BAD_MAX 8          /* times one eager range, the file list or one file may fail its checksum in
				     * transit; and connections the fetch may begin again on after damaged frames */

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

/* One connection's fetch before the restore: the page server's stream, and where the files go. */
struct fetch {
	struct lr_lazyd *d;
	int fd, dirfd;
	const char *dir;
	int timeout_ms;
	char *buf;                  /* LR_FRAME_MAX bytes */
};

/* A frame failed its checksum (errnum EBADMSG) on try `attempt` of `what`: 0 to ask again (logged), -1 past
 * LR_FETCH_BAD_MAX tries (a named error) or for any other error. */
static int again(const struct fetch *ft, const char *what, int attempt, struct lr_error *err)
{
	if (err->errnum != EBADMSG)
		return -1;
	if (attempt >= LR_FETCH_BAD_MAX)
		return lr_error_set(err, 0, "%s from the page server failed its checksum %d times (last: %s)", what, attempt,
				    err->msg);
	lr_log(ft->d, 0, "%s: %s; asking for it again", what, err->msg);
	return 0;
}

/* The next summed frame of type `want` answering request id (answers to an earlier try are skipped). EBADMSG: it
 * failed its checksum or came without one; it was read whole, so the stream is in step. */
static int recv_summed(struct fetch *ft, uint16_t want, uint64_t id, struct lr_frame *f, struct lr_error *err)
{
	do {
		if (lr_recv_frame(ft->fd, want, f, ft->buf, LR_FRAME_MAX, deadline(ft->timeout_ms), err))
			return -1;
		if (!(f->flags & LR_F_SUM)) {
			lr_error_set(err, 0, "%s frame from the page server without its checksum", lr_frame_name(want));
			return lr_error_class(err, EBADMSG);
		}
	} while (f->req_id != id);
	return 0;
}

/* GET_FILE once, into out. EBADMSG: a frame failed its checksum; the reply was read to its last frame. */
static int get_file(struct fetch *ft, const char *name, uint64_t size, int out, struct lr_error *err)
{
	struct lr_file_req q = {(uint32_t)strlen(name), 0};
	char req[sizeof(q) + LR_NAME_MAX];
	uint64_t id = ++ft->d->remote->next_req, got = 0;
	struct lr_error bad = {0, ""};
	struct lr_frame f;

	memcpy(req, &q, sizeof(q));
	memcpy(req + sizeof(q), name, q.name_len);
	if (lr_send_frame(ft->fd, LR_GET_FILE, 0, id, req, (uint32_t)(sizeof(q) + q.name_len), deadline(ft->timeout_ms),
			  err))
		return -1;
	do {
		int rc = recv_summed(ft, LR_FILE_DATA, id, &f, err);
		if (rc && err->errnum != EBADMSG)
			return -1;
		if (rc && !bad.errnum)
			bad = *err; /* read on to the reply's last frame, then ask again */
		if (bad.errnum)
			continue;
		if (f.length > size - got)
			return lr_error_set(err, 0, "page server sent more of %s than the %" PRIu64 " bytes it listed", name, size);
		if (pwrite(out, ft->buf, f.length, (off_t)got) != (ssize_t)f.length)
			return lr_error_set(err, errno ? errno : EIO, "write %s/%s.part", ft->dir, name);
		got += f.length;
	} while (f.flags & LR_F_MORE);
	if (bad.errnum) {
		*err = bad;
		return -1;
	}
	if (got != size)
		return lr_error_set(err, 0, "page server sent %" PRIu64 " bytes of %s, it listed %" PRIu64, got, name, size);
	return 0;
}

static int fetch_file(struct fetch *ft, const char *name, uint64_t size, struct lr_error *err)
{
	char part[LR_NAME_MAX + 8];

	snprintf(part, sizeof(part), "%s.part", name);
	LR_CLEANUP_CLOSE int out = openat(ft->dirfd, part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		return lr_error_set(err, errno, "create %s/%s", ft->dir, part);
	for (int attempt = 1; get_file(ft, name, size, out, err); attempt++)
		if (again(ft, name, attempt, err))
			return -1;
	if (renameat(ft->dirfd, part, ft->dirfd, name))
		return lr_error_set(err, errno, "rename %s/%s", ft->dir, part);
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

/* LIST, until a FILES frame passes its checksum: its length (the list is in ft->buf). */
static int list_files(struct fetch *ft, uint32_t *len, struct lr_error *err)
{
	for (int attempt = 1;; attempt++) {
		uint64_t id = ++ft->d->remote->next_req;
		struct lr_frame f;
		if (lr_send_frame(ft->fd, LR_LIST, 0, id, NULL, 0, deadline(ft->timeout_ms), err))
			return -1;
		if (!recv_summed(ft, LR_FILES, id, &f, err)) {
			*len = f.length;
			return 0;
		}
		if (again(ft, "the file list", attempt, err))
			return -1;
	}
}

/* LIST, then every file: metadata whole, pages files as sparse files of their size. */
static int fetch_listed(struct fetch *ft, struct lr_error *err)
{
	uint32_t len;
	if (list_files(ft, &len, err))
		return -1;
	LR_CLEANUP_FREE char *list = malloc(len ? len : 1);
	if (!list)
		return lr_error_set(err, ENOMEM, "file list");
	memcpy(list, ft->buf, len);
	for (uint32_t at = 0; at < len;) {
		struct lr_file_entry e;
		char name[LR_NAME_MAX + 1];
		if (lr_file_entry_next(list, len, &at, &e, name, err))
			return -1;
		if (e.kind == LR_FILE_META ? fetch_file(ft, name, e.size, err) : sparse_file(ft->dirfd, ft->dir, name, e.size, err))
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
		/* A live record's sums are the server's, computed as it read the stopped tree (the index has none):
		 * they prove the bytes were not damaged on the way. Any other's must be the index's own. */
		bool known = (r->flags & LR_RANGE_LIVE) || sent == idx->sums[r->first_checksum + h->first_block + k];
		if (!known || XXH3_64bits(*data + (x - *a), y - x) != sent)
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

/* One GET_PAGES of the eager fetch; bytes that fail their checksum in transit are asked for again. A frame
 * that cannot be right otherwise (its header damaged: PAGES frames carry no LR_F_SUM) is EPROTO. */
static int fetch_range(struct fetch *ft, const struct lr_index *idx, struct lr_page_req q, struct lr_pages_hdr *h,
		       const char **data, uint64_t *a, struct lr_error *err)
{
	struct lr_remote *r = ft->d->remote;
	char what[64];

	snprintf(what, sizeof(what), "record %" PRIu64 " blocks %u+%u", q.record, q.first_block, q.nblocks);
	for (int attempt = 1;; attempt++) {
		struct lr_frame f;
		const char *payload = ft->buf;
		if (lr_send_frame(ft->fd, LR_GET_PAGES, r->want, ++r->next_req, &q, sizeof(q), deadline(ft->timeout_ms), err) ||
		    lr_recv_frame(ft->fd, LR_PAGES, &f, ft->buf, LR_FRAME_MAX, deadline(ft->timeout_ms), err))
			return -1;
		if (lr_remote_inflate(r, f.flags, &payload, &f.length, err))
			return lr_error_class(err, EPROTO);
		if (!lr_pages_frame_check(idx, payload, f.length, h, a, data, err))
			break;
		if (err->errnum != EBADMSG)
			return lr_error_class(err, EPROTO);
		if (again(ft, what, attempt, err))
			return -1;
	}
	if (h->record != q.record || h->first_block != q.first_block || h->nblocks != q.nblocks) {
		lr_error_set(err, 0, "page server answered another range than %s", what);
		return lr_error_class(err, EPROTO);
	}
	return 0;
}

/* The eager ranges of every pages file, fetched and verified (CRIU reads them itself at restore). */
static int fetch_eager(struct fetch *ft, const struct lr_index *idx, struct lr_error *err)
{
	uint32_t per = LR_PAGES_MAX_DATA / idx->hdr->block_size;
	for (uint64_t i = 0; i < idx->hdr->record_count; i++) {
		const struct lr_index_record *r = &idx->recs[i];
		uint64_t nb = lr_block_count(r->start, r->nr_pages * idx->hdr->page_size, idx->hdr->block_size);
		char name[32];
		if (r->flags & LR_RANGE_LAZY)
			continue;
		snprintf(name, sizeof(name), "pages-%u.img", r->pages_id);
		LR_CLEANUP_CLOSE int out = openat(ft->dirfd, name, O_WRONLY | O_CLOEXEC);
		if (out < 0)
			return lr_error_set(err, errno, "open %s (not listed by the page server?)", name);
		for (uint64_t k = 0; k < nb; k += per) {
			struct lr_page_req q = {i, (uint32_t)k, (uint32_t)(nb - k < per ? nb - k : per)};
			struct lr_pages_hdr h;
			const char *data;
			uint64_t a;
			if (fetch_range(ft, idx, q, &h, &data, &a, err))
				return -1;
			if (pwrite(out, data, h.data_len, (off_t)(r->offset + (a - r->start))) != (ssize_t)h.data_len)
				return lr_error_set(err, errno ? errno : EIO, "write %s", name);
		}
	}
	return 0;
}

/* One connection's fetch: the listed files, then the eager ranges of the index fetched. */
static int fetch_once(struct fetch *ft, struct lr_error *err)
{
	struct lr_remote *r = ft->d->remote;
	struct lr_index idx = {0};
	char path[4096];

	if (fetch_listed(ft, err))
		return -1;
	snprintf(path, sizeof(path), "%s/%s", ft->dir, LR_INDEX_NAME);
	if (lr_index_open(&idx, path, (uint32_t)sysconf(_SC_PAGESIZE), err))
		return -1;
	int rc = memcmp(idx.hdr->checkpoint_id, r->checkpoint_id, 16)
			 ? lr_error_set(err, 0, "the index the page server sent belongs to another checkpoint")
		 : idx.unverified ? lr_error_set(err, 0, "the index the page server sent has no checksums")
			 : fetch_eager(ft, &idx, err);
	lr_index_close(&idx);
	return rc;
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

/* The first (urgent) channel: a page server that is not up yet, or restarting, gets until the source timeout; a
 * refusing host is asked again every LR_FETCH_POLL_MS, other failures back off. */
static int first_handshake(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	unsigned long long start = lr_net_now_ns(), spent_ms = 0;
	unsigned backoff_ms = LR_FETCH_BACKOFF_MIN_MS, logged = 0;

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
		if (!logged++)
			lr_log(d, 0, "page server %s not reachable yet (%s); trying for up to %llu s", r->addr.text,
			       err->msg, (unsigned long long)(r->timeout_ms / 1000));
		unsigned wait_ms = err->errnum == ECONNREFUSED ? LR_FETCH_POLL_MS : backoff_ms;
		usleep(wait_ms * 1000);
		spent_ms += wait_ms;
		if (wait_ms == backoff_ms)
			backoff_ms = backoff_ms * 2 > LR_FETCH_BACKOFF_MAX_MS ? LR_FETCH_BACKOFF_MAX_MS : backoff_ms * 2;
	}
}

/*
 * Connect and fetch. A connection whose stream cannot be trusted any more (EPROTO: a damaged frame header, or
 * the server refusing a request damaged on the way) or whose handshake frame failed its checksum is dropped,
 * and the fetch starts again on a new one, at most LR_FETCH_BAD_MAX times. Leaves the connection in ft->fd.
 */
static int fetch_all(struct fetch *ft, struct lr_error *err)
{
	for (int attempt = 1;; attempt++) {
		ft->fd = first_handshake(ft->d, err);
		if (ft->fd >= 0 && !fetch_once(ft, err))
			return 0;
		if (ft->fd >= 0)
			close(ft->fd);
		ft->fd = -1;
		if ((err->errnum != EPROTO && err->errnum != EBADMSG) || attempt >= LR_FETCH_BAD_MAX)
			return -1;
		lr_log(ft->d, 0, "damaged frame from the page server before the restore: %s; connecting again and asking "
		       "for it again", err->msg);
	}
}

int lr_remote_fetch(struct lr_lazyd *d, struct lr_error *err)
{
	struct lr_remote *r = d->remote;
	const char *dir = d->cfg.images_dir;
	char path[4096];

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
	struct fetch ft = {d, -1, dirfd, dir, (int)r->timeout_ms, buf};
	if (fetch_all(&ft, err))
		return -1;
	lr_log(d, 1, "fetched the checkpoint from %s into %s (session %llu)", r->addr.text, dir,
	       (unsigned long long)r->session);
	r->urgent.rec.fd = ft.fd; /* kept: it becomes the urgent channel */
	return 0;
}
