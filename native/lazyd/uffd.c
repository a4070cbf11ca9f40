/* uffd.c: UFFDIO_COPY / ZEROPAGE / WAKE and the one place errno is classified. */
#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>

#include "uffd.h"

static int classify(int e, int uffd, const char *op, uint64_t addr, struct lr_error *err)
{
	switch (e) {
	case EEXIST:
		return LR_UFFD_EXISTS;
	case EAGAIN:
		return LR_UFFD_RETRY;
	case ENOENT:
		return LR_UFFD_NOVMA;
	case ESRCH:
	case ENOSPC:
		return LR_UFFD_GONE;
	default:
		return lr_error_set(err, e, "%s at %#lx on uffd %d", op, (unsigned long)addr, uffd);
	}
}

int lr_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, uint64_t *done, struct lr_error *err)
{
	*done = 0;
	while (*done < len) {
		struct uffdio_copy c = {
			.dst = dst + *done, .src = (uint64_t)(uintptr_t)src + *done, .len = len - *done, .mode = 0};
		if (ioctl(uffd, UFFDIO_COPY, &c) == 0) {
			*done = len;
			return LR_UFFD_OK;
		}
		int e = errno;
		if (c.copy > 0) { /* partial: go on from where it stopped to learn why */
			*done += (uint64_t)c.copy;
			continue;
		}
		return classify(e == EINTR ? EAGAIN : e, uffd, "UFFDIO_COPY", c.dst, err);
	}
	return LR_UFFD_OK;
}

int lr_uffd_zero(int uffd, uint64_t dst, uint64_t len, uint64_t *done, struct lr_error *err)
{
	*done = 0;
	while (*done < len) {
		struct uffdio_zeropage z = {.range = {.start = dst + *done, .len = len - *done}, .mode = 0};
		if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) {
			*done = len;
			return LR_UFFD_OK;
		}
		int e = errno;
		if (z.zeropage > 0) {
			*done += (uint64_t)z.zeropage;
			continue;
		}
		return classify(e == EINTR ? EAGAIN : e, uffd, "UFFDIO_ZEROPAGE", z.range.start, err);
	}
	return LR_UFFD_OK;
}

/* The page at p holds only zero bytes. */
static bool page_zero(const char *p, uint64_t ps)
{
	return !p[0] && !memcmp(p, p + 1, ps - 1);
}

/* How many of the n pages from p on are of the first one's kind, all zero (*zero) or not. */
static uint64_t same_kind(const char *p, uint64_t n, uint64_t ps, bool *zero)
{
	uint64_t k = 1;
	*zero = page_zero(p, ps);
	while (k < n && page_zero(p + k * ps, ps) == *zero)
		k++;
	return k;
}

int lr_uffd_place(int uffd, uint64_t dst, const char *src, uint64_t len, uint64_t ps, uint64_t *done, bool *zero,
		  struct lr_error *err)
{
	uint64_t n = same_kind(src, len / ps, ps, zero) * ps;
	if (*zero) {
		int rc = lr_uffd_zero(uffd, dst, n, done, err);
		if (rc >= 0 || err->errnum != EINVAL || *done)
			return rc;
		*zero = false; /* a mapping that takes no zero pages (hugetlb): the bytes are copied */
	}
	return lr_uffd_copy(uffd, dst, src, n, done, err);
}

int lr_uffd_wake(int uffd, uint64_t start, uint64_t len, struct lr_error *err)
{
	struct uffdio_range r = {.start = start, .len = len};
	if (ioctl(uffd, UFFDIO_WAKE, &r) == 0)
		return LR_UFFD_OK;
	int rc = classify(errno, uffd, "UFFDIO_WAKE", start, err);
	return rc == LR_UFFD_EXISTS ? LR_UFFD_OK : rc;
}
