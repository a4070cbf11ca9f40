/* fixture.c: the lr-pageserver the frame and handshake harnesses talk to (see fixture.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

#include "fixture.h"
#include "lr_index_reader.h"

struct fx_range {
	uint32_t pid, flags;
	uint64_t start, nr_pages;
	uint32_t pages_id;
};

/* The index records, in order; each pages file holds its ranges back to back. Mirrored in scripts/fuzz.py. */
static const struct fx_range fx_ranges[] = {
	{10, LR_RANGE_LAZY, 0x10000, 3, 1},        /* starts on a block, ends mid-block */
	{10, 0, 0x21000, 4, 1},                    /* eager; starts and ends mid-block */
	{11, LR_RANGE_LAZY, 0x40000, 1, 2},        /* one page, in the other pages file */
	{12, LR_RANGE_LAZY, 0x7f0000001000, 5, 1}, /* high address, starts mid-block */
};
#define FX_NRANGES (sizeof(fx_ranges) / sizeof(fx_ranges[0]))

static const char *const fx_files[] = {"pages-1.img", "pages-2.img", "inventory.img", "lazyrestore/manifest.json",
				       "lazyrestore/index.bin", "lazyrestore/view-pagemap-10.img"};
#define FX_NFILES (sizeof(fx_files) / sizeof(fx_files[0]))

static struct sockaddr_un fx_addr;  /* the server's listening socket (abstract) */
static socklen_t fx_addr_len;

/* Byte off of pages-<pages_id>.img: a pattern, so that every block has a checksum of its own. */
static uint8_t page_byte(uint32_t pages_id, uint64_t off)
{
	return (uint8_t)((off * 7) ^ (off >> 9) ^ pages_id);
}

static uint64_t range_offset(size_t i)
{
	uint64_t off = 0;
	for (size_t k = 0; k < i; k++)
		if (fx_ranges[k].pages_id == fx_ranges[i].pages_id)
			off += fx_ranges[k].nr_pages * FX_PAGE_SIZE;
	return off;
}

static uint64_t bytes_hash(uint32_t pages_id, uint64_t off, uint64_t len)
{
	uint8_t buf[FX_BLOCK_SIZE];
	for (uint64_t i = 0; i < len; i++)
		buf[i] = page_byte(pages_id, off + i);
	return XXH3_64bits(buf, len);
}

/* Range i as an index record, its block checksums appended to sums. */
static struct lr_index_record add_range(size_t i, uint64_t *sums, uint64_t *nsums)
{
	const struct fx_range *r = &fx_ranges[i];
	uint64_t end = r->start + r->nr_pages * FX_PAGE_SIZE, off = range_offset(i);
	struct lr_index_record rec = {r->pid, r->flags, r->start, r->nr_pages, r->pages_id, 0, off, *nsums};

	for (uint64_t a = r->start; a < end;) {
		uint64_t b = (a / FX_BLOCK_SIZE + 1) * FX_BLOCK_SIZE;
		b = b < end ? b : end;
		sums[(*nsums)++] = bytes_hash(r->pages_id, off + (a - r->start), b - a);
		a = b;
	}
	return rec;
}

/* The index file (lr_index.h) into buf; returns its length. */
static size_t build_index(char *buf)
{
	struct lr_index_header h = {.version = LR_INDEX_VERSION, .header_size = sizeof(h),
				    .record_size = sizeof(struct lr_index_record), .page_size = FX_PAGE_SIZE,
				    .block_size = FX_BLOCK_SIZE, .task_count = 3, .record_count = FX_NRANGES};
	struct lr_index_record recs[FX_NRANGES];
	uint64_t sums[64], nsums = 0;

	memcpy(h.magic, LR_INDEX_MAGIC, sizeof(h.magic));
	memset(h.checkpoint_id, 0xc1, sizeof(h.checkpoint_id));
	for (size_t i = 0; i < FX_NRANGES; i++) {
		recs[i] = add_range(i, sums, &nsums);
		*(fx_ranges[i].flags & LR_RANGE_LAZY ? &h.lazy_pages : &h.eager_pages) += fx_ranges[i].nr_pages;
	}
	h.checksum_count = nsums;
	size_t len = 0;
	memcpy(buf, &h, sizeof(h));
	len += sizeof(h);
	memcpy(buf + len, recs, sizeof(recs));
	len += sizeof(recs);
	memcpy(buf + len, sums, nsums * 8);
	len += nsums * 8;
	uint64_t trailer = XXH3_64bits(buf, len);
	memcpy(buf + len, &trailer, 8);
	return len + 8;
}

static void put_file(int dirfd, const char *name, const void *bytes, size_t len)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FUZZ_CHECK(fd >= 0 && write(fd, bytes, len) == (ssize_t)len);
	close(fd);
}

static void put_pages(int dirfd, const char *name, uint32_t pages_id)
{
	uint8_t buf[16 * FX_PAGE_SIZE];
	uint64_t len = 0;
	for (size_t i = 0; i < FX_NRANGES; i++)
		if (fx_ranges[i].pages_id == pages_id)
			len += fx_ranges[i].nr_pages * FX_PAGE_SIZE;
	FUZZ_CHECK(len <= sizeof(buf));
	for (uint64_t off = 0; off < len; off++)
		buf[off] = page_byte(pages_id, off);
	put_file(dirfd, name, buf, len);
}

/* The checkpoint in a fresh directory (name into dir); every file is in fx_files. */
static void put_checkpoint(char dir[64])
{
	static const char manifest[] = "{\"checkpoint_id\": \"c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1\"}\n";
	char index[4096];

	snprintf(dir, 64, "/dev/shm/lr-fuzz-XXXXXX");
	FUZZ_CHECK(mkdtemp(dir) != NULL);
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	FUZZ_CHECK(dirfd >= 0 && mkdirat(dirfd, "lazyrestore", 0700) == 0);
	put_pages(dirfd, fx_files[0], 1);
	put_pages(dirfd, fx_files[1], 2);
	put_file(dirfd, fx_files[2], "inventory", 9);
	put_file(dirfd, fx_files[3], manifest, sizeof(manifest) - 1);
	put_file(dirfd, fx_files[4], index, build_index(index));
	put_file(dirfd, fx_files[5], "pagemap", 7);
	close(dirfd);
}

/* The server has every file open: the directory can go (nothing is left behind in /dev/shm). */
static void remove_checkpoint(const char *dir)
{
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	FUZZ_CHECK(dirfd >= 0);
	for (size_t i = 0; i < FX_NFILES; i++)
		unlinkat(dirfd, fx_files[i], 0);
	unlinkat(dirfd, "lazyrestore", AT_REMOVEDIR);
	close(dirfd);
	FUZZ_CHECK(rmdir(dir) == 0);
}

static int listen_unix(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	fx_addr.sun_family = AF_UNIX;
	int n = snprintf(fx_addr.sun_path + 1, sizeof(fx_addr.sun_path) - 1, "lazyrestore-fuzz-%d", getpid());
	fx_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
	FUZZ_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&fx_addr, fx_addr_len) == 0 && listen(fd, 64) == 0);
	return fd;
}

void fx_server_open(struct ps_server *s)
{
	static char dir[64];
	struct lr_error err;

	FUZZ_CHECK(sysconf(_SC_PAGESIZE) == FX_PAGE_SIZE); /* the fixture and the seeds assume 4 KiB pages */
	signal(SIGPIPE, SIG_IGN);                           /* as lr-pageserver's main does */
	*s = (struct ps_server){.dirfd = -1, .listen_fd = -1, .epfd = -1};
	s->cfg = (struct ps_config){.images_dir = dir, .listen = "fuzz", .status_fd = -1, .events_fd = -1,
				    .verbose = -1, .max_conns = FX_SERVER_MAX_CONNS, .handshake_ms = LR_HANDSHAKE_MS};
	for (size_t i = 0; i < LR_SECRET_SIZE; i++)
		s->secret[i] = (uint8_t)(0xa0 + i);
	put_checkpoint(dir);
	int rc = ps_catalog_open(s, &err);
	remove_checkpoint(dir);
	if (rc) {
		fprintf(stderr, "fixture: %s\n", err.msg);
		abort();
	}
	s->listen_fd = listen_unix();
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	FUZZ_CHECK(s->epfd >= 0);
	s->start_ns = lr_net_now_ns();
}

struct ps_conn *fx_connect(struct ps_server *s, int *peer)
{
	struct lr_error err;
	size_t before = s->nconns;

	*peer = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	FUZZ_CHECK(*peer >= 0 && connect(*peer, (struct sockaddr *)&fx_addr, fx_addr_len) == 0);
	FUZZ_CHECK(ps_conn_accept(s, &err) == 0);
	return s->nconns > before ? s->conns[s->nconns - 1] : NULL;
}

void fx_send(int peer, const void *bytes, size_t len)
{
	if (len)
		(void)!send(peer, bytes, len, MSG_DONTWAIT | MSG_NOSIGNAL);
}

void fx_drain(int peer)
{
	char buf[65536];
	while (recv(peer, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

void fx_teardown(struct ps_server *s, int *peers, size_t npeers)
{
	for (size_t i = 0; i < s->nconns; i++)
		ps_conn_close(s, s->conns[i]);
	ps_conn_reap(s);
	for (size_t i = 0; i < npeers; i++)
		if (peers[i] >= 0)
			close(peers[i]);
	FUZZ_CHECK(s->nconns == 0 && s->nopen == 0 && s->nsessions == 0);
}

/* log.c's log and events (log.c is not linked, nor main.c: libFuzzer has the main): formatted, so that what a
 * peer sent goes through vsnprintf as it would, then dropped. */
__attribute__((format(printf, 1, 0))) static void drop(const char *fmt, va_list ap)
{
	char line[1024];
	vsnprintf(line, sizeof(line), fmt, ap);
}

void ps_log(const struct ps_server *s, int level, const char *fmt, ...)
{
	va_list ap;
	(void)s;
	(void)level;
	va_start(ap, fmt);
	drop(fmt, ap);
	va_end(ap);
}

void ps_event(const struct ps_server *s, const char *fmt, ...)
{
	va_list ap;
	(void)s;
	va_start(ap, fmt);
	drop(fmt, ap);
	va_end(ap);
}

const char *ps_json_text(const char *in, char *out, size_t size)
{
	snprintf(out, size, "%s", in);
	return out;
}
