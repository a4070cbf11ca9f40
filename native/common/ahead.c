/* ahead.c: the verify-ahead thread (see lr_ahead.h). */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "lr_ahead.h"

#define LR_AHEAD_STEP 16 /* blocks per populate + verify step (1 MiB with 64 KiB blocks) */

/*
 * Wait until the drain is near enough to `sum`; false when told to stop. A
 * blocked thread sleeps until the drain has used up half of its lead, not just
 * the next block: waking a thread on the other vCPU costs tens of microseconds
 * here, and a wake per drained run cost more than the verifying it saves.
 */
static bool wait_for_drain(struct lr_ahead *a, uint64_t sum)
{
	if (sum < atomic_load(&a->reached) + a->lead_blocks)
		return !atomic_load(&a->stop);
	pthread_mutex_lock(&a->mu);
	atomic_store(&a->wake_at, sum + a->lead_blocks / 2 - a->lead_blocks);
	while (!atomic_load(&a->stop) && sum >= atomic_load(&a->reached) + a->lead_blocks)
		pthread_cond_wait(&a->cv, &a->mu);
	atomic_store(&a->wake_at, UINT64_MAX);
	pthread_mutex_unlock(&a->mu);
	return !atomic_load(&a->stop);
}

static void *ahead_main(void *arg)
{
	struct lr_ahead *a = arg;
	const struct lr_index *idx = a->idx;

	for (uint64_t i = 0; i < idx->hdr->record_count; i++) {
		const struct lr_index_record *rec = &idx->recs[i];
		if (!(rec->flags & LR_RANGE_LAZY))
			continue;
		uint64_t n = lr_block_count(rec->start, rec->nr_pages * idx->hdr->page_size, idx->hdr->block_size);
		for (uint64_t k = 0; k < n; k += LR_AHEAD_STEP) {
			if (!wait_for_drain(a, rec->first_checksum + k))
				return NULL;
			lr_pages_check_ahead(a->pages, idx, rec, k, k + LR_AHEAD_STEP < n ? k + LR_AHEAD_STEP : n);
		}
	}
	return NULL;
}

int lr_ahead_start(struct lr_ahead *a, const struct lr_index *idx, struct lr_pages *pages, uint64_t lead,
		   struct lr_error *err)
{
	sigset_t all, old;

	memset(a, 0, sizeof(*a));
	a->idx = idx;
	a->pages = pages;
	a->lead_blocks = lead / idx->hdr->block_size + 2;
	atomic_store(&a->wake_at, UINT64_MAX);
	if (!pages->prepared)
		return lr_error_set(err, EINVAL, "verify-ahead needs the pages files prepared");
	if ((errno = pthread_mutex_init(&a->mu, NULL)) || (errno = pthread_cond_init(&a->cv, NULL)))
		return lr_error_set(err, errno, "verify-ahead thread: mutex/condition");
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old); /* signals (stop, lease break) go to the event loop */
	int rc = pthread_create(&a->thread, NULL, ahead_main, a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return lr_error_set(err, rc, "verify-ahead thread: pthread_create");
	a->running = true;
	return 0;
}

void lr_ahead_reached(struct lr_ahead *a, uint64_t sum)
{
	if (!a->running || sum <= atomic_load(&a->reached))
		return;
	atomic_store(&a->reached, sum); /* seq_cst with wake_at: either we see its wish or it sees our progress */
	if (sum < atomic_load(&a->wake_at))
		return;
	pthread_mutex_lock(&a->mu);
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

void lr_ahead_stop(struct lr_ahead *a)
{
	if (!a->running)
		return;
	pthread_mutex_lock(&a->mu);
	atomic_store(&a->stop, true);
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->thread, NULL);
	pthread_cond_destroy(&a->cv);
	pthread_mutex_destroy(&a->mu);
	a->running = false;
}
