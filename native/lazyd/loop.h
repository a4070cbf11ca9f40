/*
 * loop.h: one epoll loop; each fd has a record with its callbacks.
 * Callbacks return 0 to go on, -1 (with err) to stop the daemon.
 */
#ifndef LR_LOOP_H
#define LR_LOOP_H

#include <stdbool.h>
#include <stddef.h>

#include "lr_error.h"

struct lr_fdrec;
typedef int (*lr_fd_cb)(void *ctx, struct lr_fdrec *rec, struct lr_error *err);

struct lr_fdrec {
	int fd;
	lr_fd_cb on_read;  /* data (or EOF) to read */
	lr_fd_cb on_hup;   /* hang-up or error with nothing left to read; may be NULL */
	bool background;   /* dispatched after every other ready fd (the bulk stream: faults first) */
};

#define lr_container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

int lr_loop_add(int epfd, struct lr_fdrec *rec, struct lr_error *err);
int lr_loop_del(int epfd, struct lr_fdrec *rec, struct lr_error *err);
/* Wait up to timeout_ms (-1: forever) and dispatch what is ready, background records last. */
int lr_loop_run_once(int epfd, void *ctx, int timeout_ms, struct lr_error *err);

#endif /* LR_LOOP_H */
