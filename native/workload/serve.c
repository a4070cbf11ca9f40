/*
 * serve.c: lr-workload --serve: the key-value table's layout and its TCP server (see serve.h).
 *
 * The server is one thread, one connection at a time: accept, read one request line, answer, close.
 * A connection that misbehaves (too long, too slow, reset) is logged on stderr and dropped; the server
 * goes on. CRIU checkpoints and restores the listening socket; a connection open at a checkpoint would be
 * restored too, but none is: the client closes each after its answer.
 */
#define _GNU_SOURCE
#include "serve.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "writers.h"

#define KV_BACKLOG 64
#define KV_LINE_MAX 128   /* longest request line taken, '\n' included */
#define KV_IO_TIMEOUT_S 10 /* a client that sends or reads nothing for this long is dropped */

struct kv_server {
	int fd; /* listening */
	const struct kv_layout *t;
	struct kv_source src;
};

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t n)
{
	return (uint64_t)((unsigned __int128)a * b % n);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t r = a % b;
		a = b;
		b = r;
	}
	return a;
}

/* a^-1 mod n for gcd(a, n) == 1 (extended Euclid). */
static uint64_t inverse_mod(uint64_t a, uint64_t n)
{
	__int128 t = 0, nt = 1, r = n, nr = a % n;
	while (nr) {
		__int128 q = r / nr, tmp = t - q * nt;
		t = nt;
		nt = tmp;
		tmp = r - q * nr;
		r = nr;
		nr = tmp;
	}
	return (uint64_t)(t < 0 ? t + n : t);
}

int kv_layout_init(struct kv_layout *t, size_t npages, size_t page_size, uint64_t seed)
{
	size_t per_page = page_size / KV_RECORD;
	uint64_t n = (uint64_t)npages * per_page;
	if (!n) {
		errno = EINVAL;
		return -1;
	}
	uint64_t s = (uint64_t)((long double)n * 0.6180339887498949L) | 1; /* odd, below n unless n == 1 */
	while (gcd(s, n) != 1) /* ends at s = 1 at the latest */
		s -= 2;
	*t = (struct kv_layout){.nkeys = n, .stride = s % n, .seed = seed, .per_page = per_page};
	t->inverse = inverse_mod(t->stride, n);
	return 0;
}

static void record_generate(const struct kv_layout *t, uint64_t key, uint64_t *w)
{
	uint64_t s = t->seed ^ (key * KV_GOLDEN) ^ KV_SALT;
	w[0] = key;
	for (unsigned i = 1; i < KV_WORDS; i++)
		w[i] = lr_xorshift(&s);
}

void kv_page_generate(const struct kv_layout *t, size_t page, uint64_t *w)
{
	uint64_t slot = (uint64_t)page * t->per_page;
	uint64_t key = mulmod(slot, t->inverse, t->nkeys);
	for (size_t i = 0; i < t->per_page; i++) { /* the next slot's key is inverse further on */
		record_generate(t, key, w + i * KV_WORDS);
		key = key >= t->nkeys - t->inverse ? key - (t->nkeys - t->inverse) : key + t->inverse;
	}
}

/* "GET <first> <count>" with plain decimal numbers, nothing around them. */
static int parse_request(const char *line, uint64_t *first, uint64_t *count)
{
	const char *p = line + 4;
	char *end;
	if (strncmp(line, "GET ", 4) || *p < '0' || *p > '9')
		return -1;
	errno = 0;
	*first = strtoull(p, &end, 10);
	if (errno || *end != ' ' || end[1] < '0' || end[1] > '9')
		return -1;
	p = end + 1;
	*count = strtoull(p, &end, 10);
	return errno || *end ? -1 : 0;
}

/* The reply to one request line (without its '\n') into out. */
static void answer(const struct kv_server *s, const char *line, char *out, size_t size)
{
	const struct kv_layout *t = s->t;
	uint64_t first, count, h = KV_HASH_INIT, rec[KV_WORDS];
	if (parse_request(line, &first, &count)) {
		snprintf(out, size, "ERR expected GET <first_key> <count>\n");
		return;
	}
	if (!count || count > KV_MAX_COUNT || first >= t->nkeys || count > t->nkeys - first) {
		snprintf(out, size, "ERR keys %" PRIu64 "+%" PRIu64 " out of range (keys 0..%" PRIu64 ", count 1..%u)\n",
			 first, count, t->nkeys - 1, KV_MAX_COUNT);
		return;
	}
	for (uint64_t k = first; k < first + count; k++) {
		if (s->src.read(s->src.ctx, mulmod(k, t->stride, t->nkeys), rec)) {
			snprintf(out, size, "ERR key %" PRIu64 " is not mapped\n", k);
			return;
		}
		for (unsigned i = 0; i < KV_WORDS; i++)
			h = (h ^ rec[i]) * KV_HASH_PRIME;
	}
	snprintf(out, size, "OK %" PRIu64 " %016" PRIx64 "\n", count, h);
}

static void conn_error(const char *what, int err)
{
	fprintf(stderr, "lr-workload: kv: %s: %s\n", what, strerror(err));
}

enum line_read { LINE_OK, LINE_EOF, LINE_TOO_LONG, LINE_ERROR /* errno set */ };

/* One line ending in '\n' into buf, the '\n' replaced by NUL. */
static enum line_read read_line(int fd, char *buf, size_t size)
{
	size_t len = 0;
	while (len < size) {
		ssize_t n = recv(fd, buf + len, size - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? LINE_ERROR : LINE_EOF;
		char *nl = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
		if (nl) {
			*nl = '\0';
			return LINE_OK;
		}
	}
	return LINE_TOO_LONG;
}

/* Read the client's input to its end, an error or the I/O timeout (all the same here): closing with unread
 * input would reset the connection, and the client might lose the reply already sent. */
static void discard_input(int fd)
{
	char buf[512];
	ssize_t n;
	do
		n = recv(fd, buf, sizeof(buf), 0);
	while (n > 0 || (n < 0 && errno == EINTR));
}

static int send_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL); /* a vanished client must not SIGPIPE the workload */
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int set_timeouts(int fd)
{
	struct timeval tv = {KV_IO_TIMEOUT_S, 0};
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)))
		return -1;
	return 0;
}

static void handle(const struct kv_server *s, int fd)
{
	char line[KV_LINE_MAX], reply[160];
	if (set_timeouts(fd)) {
		conn_error("setsockopt", errno);
		return;
	}
	enum line_read got = read_line(fd, line, sizeof(line));
	if (got == LINE_ERROR)
		conn_error("recv", errno);
	if (got == LINE_ERROR || got == LINE_EOF)
		return;
	if (got == LINE_TOO_LONG)
		snprintf(reply, sizeof(reply), "ERR request longer than %d bytes\n", KV_LINE_MAX - 1);
	else
		answer(s, line, reply, sizeof(reply));
	if (send_all(fd, reply, strlen(reply))) {
		conn_error("send", errno);
		return;
	}
	if (got != LINE_TOO_LONG)
		return;
	if (shutdown(fd, SHUT_WR))
		conn_error("shutdown", errno);
	else
		discard_input(fd);
}

/* accept(2) errors that concern one connection or a passing shortage: the server goes on. */
static int accept_error_passes(int err)
{
	return err == EAGAIN || err == EPROTO || err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM ||
	       err == EPERM;
}

static void *server_main(void *arg)
{
	const struct kv_server *s = arg;
	struct timespec pause = {0, 100 * 1000 * 1000};
	for (;;) {
		int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			int err = errno;
			if (err == EINTR || err == ECONNABORTED)
				continue;
			conn_error("accept", err);
			if (!accept_error_passes(err))
				exit(1); /* the listening socket itself is broken: nothing would ever be answered */
			nanosleep(&pause, NULL); /* a shortage: let it pass */
			continue;
		}
		handle(s, fd);
		if (close(fd))
			conn_error("close", errno);
	}
	return NULL;
}

/* A listening socket on the abstract unix name `name` (without its leading NUL). */
static int listen_on(const char *name)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t len = strlen(name);
	memcpy(sa.sun_path + 1, name, len); /* sun_path[0] stays NUL: abstract, no file */
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("lr-workload: kv: socket");
		return -1;
	}
	if (bind(fd, (struct sockaddr *)&sa, salen) || listen(fd, KV_BACKLOG)) {
		fprintf(stderr, "lr-workload: kv: listening on @%s: %s\n", name, strerror(errno));
		if (close(fd))
			perror("lr-workload: kv: close");
		return -1;
	}
	return fd;
}

/* The server thread, started with every signal blocked: they go to the threads that act on them. */
static int start_thread(struct kv_server *s)
{
	sigset_t all, old;
	pthread_t thread;
	if (sigfillset(&all)) {
		perror("lr-workload: kv: sigfillset");
		return -1;
	}
	int err = pthread_sigmask(SIG_SETMASK, &all, &old);
	if (!err) {
		err = pthread_create(&thread, NULL, server_main, s);
		int restore = pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (!err && !(err = restore))
			err = pthread_detach(thread);
	}
	if (err)
		fprintf(stderr, "lr-workload: kv: starting the server thread: %s\n", strerror(err));
	return err ? -1 : 0;
}

int kv_serve_start(unsigned long n, const struct kv_layout *t, struct kv_source src)
{
	char name[64], line[160];
	snprintf(name, sizeof(name), KV_NAME_PREFIX "%lu", n);
	struct kv_server *s = malloc(sizeof(*s));
	if (!s) {
		perror("lr-workload: kv: malloc");
		return -1;
	}
	*s = (struct kv_server){listen_on(name), t, src};
	if (s->fd < 0 || start_thread(s)) {
		if (s->fd >= 0 && close(s->fd))
			perror("lr-workload: kv: close");
		free(s);
		return -1;
	}
	int len = snprintf(line, sizeof(line), "kv listening unix=@%s keys=%" PRIu64 " stride=%" PRIu64 "\n", name,
			   t->nkeys, t->stride);
	if (write(STDOUT_FILENO, line, (size_t)len) != len) /* one write(2): lines never interleave */
		perror("lr-workload: kv: write");
	return 0;
}
