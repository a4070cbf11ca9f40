/*
 * uffd.h: placing pages with userfaultfd ioctls; errno is classified here only.
 *
 * EEXIST: a page is already there (done: existing content is newer than ours).
 * EAGAIN: the layout is changing (an event is queued or being completed):
 *   read the uffd's events, then try again a little later.
 * ENOENT: no registered VMA there: an unmap event may still be queued; if none
 *   comes, the address is simply no longer the task's to fill.
 * ESRCH, ENOSPC: the task's memory is gone (it exited).
 * Anything else is fatal.
 */
#ifndef LR_UFFD_H
#define LR_UFFD_H

#include <stdbool.h>
#include <stdint.h>

#include "lr_error.h"

enum lr_uffd_rc {
	LR_UFFD_OK = 0,   /* all bytes placed */
	LR_UFFD_EXISTS,   /* stopped at a page that exists: *done bytes placed before it */
	LR_UFFD_RETRY,    /* stopped because the layout is changing: *done bytes placed */
	LR_UFFD_NOVMA,    /* stopped at an address with no registered VMA */
	LR_UFFD_GONE,     /* the task's memory is gone (the last: source.h's results follow) */
};

/* Copy len bytes from src to dst in the task; returns an lr_uffd_rc, or -1 with err. */
int lr_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, uint64_t *done, struct lr_error *err);
/* Map zero pages at [dst, dst + len). */
int lr_uffd_zero(int uffd, uint64_t dst, uint64_t len, uint64_t *done, struct lr_error *err);
/*
 * Place the first pages of the len bytes (whole pages of ps) at src at dst: the leading run of all-zero pages as
 * zero pages (*zero: UFFDIO_ZEROPAGE allocates nothing; a live record spans its VMA's never-touched holes, which
 * arrive as zeros), else the leading run of other pages copied. Returns as lr_uffd_copy, *done the bytes placed
 * of that run: the caller goes on from dst + *done while bytes are left.
 */
int lr_uffd_place(int uffd, uint64_t dst, const char *src, uint64_t len, uint64_t ps, uint64_t *done, bool *zero,
		  struct lr_error *err);
/* Wake threads waiting on [start, start + len). */
int lr_uffd_wake(int uffd, uint64_t start, uint64_t len, struct lr_error *err);

#endif /* LR_UFFD_H */
