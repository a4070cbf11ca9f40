/* loop.c: the epoll loop. */
#include <errno.h>
#include <sys/epoll.h>

#include "loop.h"

#define LR_LOOP_BATCH 64

int lr_loop_add(int epfd, struct lr_fdrec *rec, struct lr_error *err)
{
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = rec};
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, rec->fd, &ev))
		return lr_error_set(err, errno, "epoll add fd %d", rec->fd);
	return 0;
}

int lr_loop_del(int epfd, struct lr_fdrec *rec, struct lr_error *err)
{
	if (epoll_ctl(epfd, EPOLL_CTL_DEL, rec->fd, NULL) && errno != ENOENT && errno != EBADF)
		return lr_error_set(err, errno, "epoll del fd %d", rec->fd);
	return 0;
}

static int dispatch(void *ctx, const struct epoll_event *ev, struct lr_error *err)
{
	struct lr_fdrec *rec = ev->data.ptr;
	if (ev->events & EPOLLIN)
		return rec->on_read(ctx, rec, err);
	if ((ev->events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) && rec->on_hup)
		return rec->on_hup(ctx, rec, err);
	return 0;
}

int lr_loop_run_once(int epfd, void *ctx, int timeout_ms, struct lr_error *err)
{
	struct epoll_event evs[LR_LOOP_BATCH];
	int n = epoll_wait(epfd, evs, LR_LOOP_BATCH, timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : lr_error_set(err, errno, "epoll_wait");
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < n; i++)
			if (((struct lr_fdrec *)evs[i].data.ptr)->background == (pass == 1) && dispatch(ctx, &evs[i], err))
				return -1;
	return n;
}
