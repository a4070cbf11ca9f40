/* serve.c: a task's uffd events: page faults first of all, and the layout changes. */
#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <unistd.h>

#include "guard.h"
#include "lazyd.h"
#include "uffd.h"

#define LR_MSG_BATCH 64
#define LR_RETRY_DELAY_NS 50000 /* EAGAIN: the event's completion is still running */

typedef int (*lr_event_fn)(struct lr_lazyd *d, struct lr_task *t, const struct uffd_msg *m, struct lr_error *err);

/* A page with nothing to place: a hole, or a page discarded or already placed. */
static int serve_zero(struct lr_lazyd *d, struct lr_task *t, uint64_t addr, struct lr_error *err)
{
	uint64_t done;
	int rc = lr_uffd_zero(t->rec.fd, addr, d->page_size, &done, err);
	if (rc == LR_UFFD_OK)
		d->stats.zero_pages++;
	else if (rc == LR_UFFD_EXISTS)
		rc = lr_uffd_wake(t->rec.fd, addr, d->page_size, err);
	return rc;
}

/* Place the fault-around window (checkpoint-address aligned, clipped to the span) holding addr. */
static int serve_window(struct lr_lazyd *d, struct lr_task *t, size_t si, uint64_t addr, struct lr_error *err)
{
	const struct lr_span *sp = &t->spans.v[si];
	uint64_t ps = d->page_size, fa = d->cfg.fault_around, placed;
	uint64_t src = sp->src + (addr - sp->addr);
	uint64_t wa = src / fa * fa, wb = wa + fa;
	uint64_t lo = wa > sp->src ? (wa - sp->src) / ps : 0;
	uint64_t hi = (wb - sp->src) / ps < sp->npages ? (wb - sp->src) / ps : sp->npages;
	int rc = lr_place(d, t, si, lo, hi, LR_GET_FAULT, &placed, err);
	lr_drain_near(d, t, sp->addr + hi * ps);
	d->stats.fault_bytes += placed;
	return rc;
}

/* The second ENOENT with no event read in between: the VMA is really gone. */
static bool novma_final(struct lr_task *t)
{
	bool final = t->novma_at_events == t->events_seen;
	t->novma_at_events = t->events_seen;
	return final;
}

/* first: the fault was just read (not a deferred one served again): it joins the working set if pending. */
static int serve_fault(struct lr_lazyd *d, struct lr_task *t, uint64_t addr, uint64_t t0, bool first,
		       struct lr_error *err)
{
	addr &= ~((uint64_t)d->page_size - 1);
	long si = lr_spans_find(&t->spans, addr);
	bool pending = si >= 0 && lr_spans_pending(&t->spans, &t->spans.v[si], (addr - t->spans.v[si].addr) / d->page_size);
	if (pending && first) {
		const struct lr_span *sp = &t->spans.v[si];
		d->stats.data_faults++;
		lr_drain_fault(d, t0, sp->src + (addr - sp->addr));
		lr_profile_add(&d->profile, t0 - d->stats.start_ns, sp->rec, sp->src + (addr - sp->addr));
	}
	int rc = pending ? serve_window(d, t, (size_t)si, addr, err) : serve_zero(d, t, addr, err);

	switch (rc) {
	case LR_UFFD_OK:
	case LR_UFFD_EXISTS:
		d->stats.faults++;
		lr_stats_latency(&d->stats, lr_now_ns() - t0);
		return 0;
	case LR_UFFD_NOVMA:
		if (novma_final(t)) {
			lr_log(d, 2, "pid %d: fault at %#lx has no VMA any more: dropped", t->pid, (unsigned long)addr);
			return 0;
		}
		/* an unmap event may still be queued: retry */
		__attribute__((fallthrough));
	case LR_UFFD_RETRY:
		d->stats.retries++;
		t->retry_at_ns = lr_now_ns() + LR_RETRY_DELAY_NS;
		return lr_task_defer(t, addr, t0, err);
	case LR_SRC_WAIT: /* asked the page source: served when the bytes are placed */
		return lr_task_defer(t, addr, t0, err);
	case LR_UFFD_GONE:
		lr_task_gone(d, t);
		return 0;
	default:
		return -1;
	}
}

static int on_fault(struct lr_lazyd *d, struct lr_task *t, const struct uffd_msg *m, struct lr_error *err)
{
	lr_log(d, 3, "pid %d: fault at %#llx", t->pid, (unsigned long long)m->arg.pagefault.address);
	return serve_fault(d, t, m->arg.pagefault.address, lr_now_ns(), true, err);
}

static int on_fork(struct lr_lazyd *d, struct lr_task *t, const struct uffd_msg *m, struct lr_error *err)
{
	struct lr_task *child;
	int ufd = (int)m->arg.fork.ufd;

	d->stats.forks++;
	if (lr_task_add(d, 0, 0, ufd, &t->spans, lr_serve_uffd, &child, err)) {
		close(ufd);
		return -1;
	}
	lr_log(d, 1, "pid %d forked: child uffd %d inherits %lu pending pages", t->pid, ufd,
	       (unsigned long)child->spans.left);
	return d->cfg.guard ? lr_guard_send(d->guard_fd, LR_GUARD_FORK, 0, 0, ufd, err) : 0;
}

static int on_remap(struct lr_lazyd *d, struct lr_task *t, const struct uffd_msg *m, struct lr_error *err)
{
	d->stats.remaps++;
	lr_log(d, 2, "pid %d: remap %#llx -> %#llx (%llu bytes)", t->pid, (unsigned long long)m->arg.remap.from,
	       (unsigned long long)m->arg.remap.to, (unsigned long long)m->arg.remap.len);
	return lr_spans_remap(&t->spans, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len, err);
}

/* madvise(DONTNEED/REMOVE) and munmap: the pages there need nothing more from us. */
static int on_discard(struct lr_lazyd *d, struct lr_task *t, const struct uffd_msg *m, struct lr_error *err)
{
	(void)err;
	uint64_t start = m->arg.remove.start, end = m->arg.remove.end;
	if (m->event == UFFD_EVENT_REMOVE)
		d->stats.removes++;
	else
		d->stats.unmaps++;
	uint64_t n = end > start ? lr_spans_clear(&t->spans, start, end - start) : 0;
	lr_log(d, 2, "pid %d: %s %#lx-%#lx drops %lu pending pages", t->pid,
	       m->event == UFFD_EVENT_REMOVE ? "remove" : "unmap", (unsigned long)start, (unsigned long)end,
	       (unsigned long)n);
	return 0;
}

static const lr_event_fn handlers[] = {
	[UFFD_EVENT_PAGEFAULT] = on_fault,
	[UFFD_EVENT_FORK] = on_fork,
	[UFFD_EVENT_REMAP] = on_remap,
	[UFFD_EVENT_REMOVE] = on_discard,
	[UFFD_EVENT_UNMAP] = on_discard,
};

static int dispatch(struct lr_lazyd *d, struct lr_task *t, const struct uffd_msg *m, struct lr_error *err)
{
	if (m->event >= sizeof(handlers) / sizeof(handlers[0]) || !handlers[m->event])
		return lr_error_set(err, 0, "pid %d uffd %d: unknown userfaultfd event %#x", t->pid, t->rec.fd, m->event);
	return handlers[m->event](d, t, m, err);
}

int lr_serve_uffd(void *ctx, struct lr_fdrec *rec, struct lr_error *err)
{
	struct lr_lazyd *d = ctx;
	struct lr_task *t = lr_container_of(rec, struct lr_task, rec);
	struct uffd_msg msgs[LR_MSG_BATCH];
	if (t->gone) /* dropped (its exit seen) earlier in the same batch of ready fds: its uffd is closed */
		return 0;
	ssize_t n = read(rec->fd, msgs, sizeof(msgs));

	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return lr_error_set(err, errno, "read uffd %d of pid %d", rec->fd, t->pid);
	}
	if (n == 0 || n % (ssize_t)sizeof(msgs[0]))
		return lr_error_set(err, 0, "uffd %d of pid %d: read %zd bytes, not whole messages", rec->fd, t->pid, n);
	t->events_seen += (uint64_t)n / sizeof(msgs[0]);
	t->retry_at_ns = 0;
	for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]) && !t->gone; i++)
		if (dispatch(d, t, &msgs[i], err))
			return -1;
	return 0;
}

int lr_serve_deferred(struct lr_lazyd *d, struct lr_error *err)
{
	for (size_t i = 0; i < d->ntasks; i++) {
		struct lr_task *t = d->tasks[i];
		struct lr_deferred *faults = t->deferred;
		size_t n = t->ndeferred;
		if (!n || t->gone)
			continue;
		/* Serving may defer them again: take the list first. */
		t->deferred = NULL;
		t->ndeferred = t->capdeferred = 0;
		int rc = 0;
		for (size_t k = 0; k < n && !t->gone && !rc; k++)
			rc = serve_fault(d, t, faults[k].addr, faults[k].t0, false, err);
		free(faults);
		if (rc)
			return -1;
	}
	return 0;
}
