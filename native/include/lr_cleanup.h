/*
 * lr_cleanup.h: scope-bound resources. Hand a resource off by setting the
 * local to NULL (pointers) or -1 (fds) before the scope ends.
 */
#ifndef LR_CLEANUP_H
#define LR_CLEANUP_H

#include <stdlib.h>
#include <unistd.h>

static inline void lr_cleanup_free(void *p)
{
	free(*(void **)p);
}

static inline void lr_cleanup_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}

#define LR_CLEANUP_FREE __attribute__((cleanup(lr_cleanup_free)))
#define LR_CLEANUP_CLOSE __attribute__((cleanup(lr_cleanup_close)))

#endif /* LR_CLEANUP_H */
