/*
 * lr_net.h: TCP plumbing shared by lr-pageserver and lr-lazyd: HOST:PORT
 * addresses, listening, connecting with a deadline, and whole-buffer sends and
 * receives on blocking sockets with a deadline (handshakes, fetches).
 */
#ifndef LR_NET_H
#define LR_NET_H

#include <stddef.h>
#include <sys/socket.h>

#include "lr_error.h"

struct lr_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[300]; /* as given, for messages */
};

/* "HOST:PORT" or "[IPV6]:PORT"; HOST a literal address or a name (first address found). */
int lr_addr_parse(const char *text, struct lr_addr *a, struct lr_error *err);

/* A non-blocking listening socket (SO_REUSEADDR); *port gets the bound port (for port 0). */
int lr_net_listen(const struct lr_addr *a, int *port, struct lr_error *err);

/* A blocking, connected socket with TCP_NODELAY, or -1 after timeout_ms. */
int lr_net_connect(const struct lr_addr *a, int timeout_ms, struct lr_error *err);

/* Send or receive exactly len bytes before deadline_ns (CLOCK_MONOTONIC); EOF is an error. */
int lr_net_send_all(int fd, const void *buf, size_t len, unsigned long long deadline_ns, struct lr_error *err);
int lr_net_recv_all(int fd, void *buf, size_t len, unsigned long long deadline_ns, struct lr_error *err);

unsigned long long lr_net_now_ns(void);

#endif /* LR_NET_H */
