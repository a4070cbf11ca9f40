/* restore_conn.c: CRIU restore's connection: tasks and their uffds arrive, then "restore finished". */
#include <sys/socket.h>
#include <unistd.h>

#include "guard.h"
#include "lazyd.h"

static int take_task(struct lr_lazyd *d, const struct lr_criu_task *ct, struct lr_error *err)
{
	struct lr_task *t;

	if (ct->uffd < 0) {
		lr_log(d, 1, "task pid %d is a zombie: nothing to serve", -ct->pid);
		return 0;
	}
	for (size_t i = 0; i < d->ntasks; i++)
		if (d->tasks[i]->pid == ct->pid && !d->tasks[i]->gone) {
			close(ct->uffd);
			return lr_error_set(err, 0, "CRIU restore sent pid %d twice", ct->pid);
		}
	if (lr_task_add(d, ct->pid, ct->host_pid, ct->uffd, NULL, lr_serve_uffd, &t, err)) {
		close(ct->uffd);
		return -1;
	}
	if (t->gone) /* it exited already: its uffd is closed, nothing to guard or serve */
		return 0;
	d->stats.total_bytes += t->spans.left * d->page_size;
	lr_log(d, 1, "task pid %d (host pid %d) uffd %d: %lu lazy pages in %zu ranges", ct->pid, ct->host_pid,
	       ct->uffd, (unsigned long)t->spans.left, t->spans.n);
	if (d->cfg.guard && lr_guard_send(d->guard_fd, LR_GUARD_TASK, ct->pid, ct->host_pid, ct->uffd, err))
		return -1;
	return lr_prefetch_place(d, err);
}

static int on_conn_read(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	struct lr_criu_task ct;

	for (;;) {
		int rc = lr_criu_read(&d->conn, &ct, err);
		if (rc <= 0)
			return rc;
		if (rc == 1 && take_task(d, &ct, err))
			return -1;
		if (rc == 2) {
			d->finished = true;
			d->stats.finished_ns = lr_now_ns();
			lr_log(d, 1, "restore finished: %zu task(s), %lu bytes to place", d->ntasks,
			       (unsigned long)lr_left_bytes(d));
			if (d->src.ops->finished && d->src.ops->finished(&d->src, err))
				return -1;
		}
		if (rc == 3) { /* CRIU closed the connection after finishing: all is in */
			lr_loop_del(d->epfd, rec, err);
			close(rec->fd);
			rec->fd = -1;
			return 0;
		}
	}
}

static int on_conn_hup(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	return on_conn_read(ctx, rec, err);
}

int lr_conn_on_listen(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;

	if (d->connected) { /* one restore per daemon: refuse others */
		int extra = accept(rec->fd, NULL, NULL);
		if (extra >= 0)
			close(extra);
		lr_log(d, 0, "refused a second connection on %s", LR_LAZY_SOCK_NAME);
		return 0;
	}
	int rc = lr_criu_accept(rec->fd, &d->conn, d->index.hdr->task_count, err);
	if (rc <= 0)
		return rc;
	d->connected = true;
	d->conn_rec = (struct lr_fdrec){.fd = d->conn.fd, .on_read = on_conn_read, .on_hup = on_conn_hup};
	lr_log(d, 1, "CRIU restore connected; expecting %u task(s)", d->index.hdr->task_count);
	return lr_loop_add(d->epfd, &d->conn_rec, err);
}
