/* net.c: addresses, listening, connecting, blocking I/O with deadlines. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lr_cleanup.h"
#include "lr_net.h"

unsigned long long lr_net_now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

static int split_host_port(const char *text, char *host, size_t host_size, long *port)
{
	const char *colon = strrchr(text, ':');
	char *end;

	if (!colon || colon == text)
		return -1;
	size_t hlen = (size_t)(colon - text);
	if (text[0] == '[') { /* [v6]:port */
		if (hlen < 3 || text[hlen - 1] != ']')
			return -1;
		text++;
		hlen -= 2;
	}
	if (hlen >= host_size)
		return -1;
	memcpy(host, text, hlen);
	host[hlen] = 0;
	errno = 0;
	*port = strtol(colon + 1, &end, 10);
	return errno || end == colon + 1 || *end || *port < 0 || *port > 65535 ? -1 : 0;
}

int lr_addr_parse(const char *text, struct lr_addr *a, struct lr_error *err)
{
	char host[256], port_text[8];
	long port;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res = NULL;

	memset(a, 0, sizeof(*a));
	if (split_host_port(text, host, sizeof(host), &port))
		return lr_error_set(err, 0, "address %s: expected HOST:PORT with a port from 0 to 65535", text);
	snprintf(port_text, sizeof(port_text), "%ld", port);
	int rc = getaddrinfo(host, port_text, &hints, &res);
	if (rc)
		return lr_error_set(err, 0, "address %s: cannot resolve %s: %s", text, host, gai_strerror(rc));
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	freeaddrinfo(res);
	snprintf(a->text, sizeof(a->text), "%s", text);
	return 0;
}

int lr_net_listen(const struct lr_addr *a, int *port, struct lr_error *err)
{
	LR_CLEANUP_CLOSE int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_storage bound;
	socklen_t len = sizeof(bound);

	if (fd < 0)
		return lr_error_set(err, errno, "socket for %s", a->text);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		return lr_error_set(err, errno, "SO_REUSEADDR on %s", a->text);
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len))
		return lr_error_set(err, errno, "bind %s", a->text);
	if (listen(fd, 64))
		return lr_error_set(err, errno, "listen on %s", a->text);
	if (getsockname(fd, (struct sockaddr *)&bound, &len))
		return lr_error_set(err, errno, "getsockname of %s", a->text);
	*port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
						  : ((struct sockaddr_in *)&bound)->sin_port);
	int out = fd;
	fd = -1;
	return out;
}

static int wait_fd(int fd, short events, unsigned long long deadline_ns, const char *what, struct lr_error *err)
{
	for (;;) {
		unsigned long long now = lr_net_now_ns();
		if (now >= deadline_ns)
			return lr_error_set(err, ETIMEDOUT, "%s", what);
		struct pollfd p = {fd, events, 0};
		int n = poll(&p, 1, (int)((deadline_ns - now) / 1000000ULL) + 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return lr_error_set(err, errno, "poll while waiting to %s", what);
		if (n > 0)
			return 0;
	}
}

int lr_net_connect(const struct lr_addr *a, int timeout_ms, struct lr_error *err)
{
	LR_CLEANUP_CLOSE int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1, soerr = 0;
	socklen_t len = sizeof(soerr);
	char what[360];

	if (fd < 0)
		return lr_error_set(err, errno, "socket for %s", a->text);
	snprintf(what, sizeof(what), "connect to %s", a->text);
	if (connect(fd, (const struct sockaddr *)&a->ss, a->len) && errno != EINPROGRESS)
		return lr_error_set(err, errno, "%s", what);
	if (wait_fd(fd, POLLOUT, lr_net_now_ns() + (unsigned long long)timeout_ms * 1000000ULL, what, err))
		return -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) || soerr)
		return lr_error_set(err, soerr ? soerr : errno, "%s", what);
	int flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
		return lr_error_set(err, errno, "socket options for %s", a->text);
	int out = fd;
	fd = -1;
	return out;
}

int lr_net_send_all(int fd, const void *buf, size_t len, unsigned long long deadline_ns, struct lr_error *err)
{
	for (size_t done = 0; done < len;) {
		if (wait_fd(fd, POLLOUT, deadline_ns, "send to the peer", err))
			return -1;
		ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return lr_error_set(err, errno, "send to the peer");
		done += (size_t)n;
	}
	return 0;
}

int lr_net_recv_all(int fd, void *buf, size_t len, unsigned long long deadline_ns, struct lr_error *err)
{
	for (size_t done = 0; done < len;) {
		if (wait_fd(fd, POLLIN, deadline_ns, "receive from the peer", err))
			return -1;
		ssize_t n = recv(fd, (char *)buf + done, len - done, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return lr_error_set(err, errno, "receive from the peer");
		if (n == 0)
			return lr_error_set(err, ECONNRESET, "the peer closed the connection");
		done += (size_t)n;
	}
	return 0;
}
