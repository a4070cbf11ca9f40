/*
 * guard.h: crash safety. CRIU's restorer closes its copy of each uffd, so if
 * the daemon died holding the only copies, the restored tree would silently
 * read zero pages. lr-lazyd therefore forks at start: the parent becomes the
 * guardian, the child the daemon. The daemon passes the guardian a duplicate
 * of every uffd as it arrives (forked children's too) with a pidfd of its
 * task. If the daemon exits before reporting DONE, the guardian SIGKILLs the
 * tree (every task it knows, the processes of their sessions, and so the whole
 * pid namespace when the tree has one), waits for them to die while still
 * holding the uffds, and exits non-zero. The checkpoint itself is untouched,
 * so it can be restored again.
 */
#ifndef LR_GUARD_H
#define LR_GUARD_H

#include <stdint.h>
#include <sys/types.h>

#include "lr_error.h"

enum lr_guard_kind {
	LR_GUARD_TASK = 1, /* a task's uffd (+ pidfd when its host pid is known) */
	LR_GUARD_FORK = 2, /* a uffd of a child forked after restore */
	LR_GUARD_DONE = 3, /* every page placed: nothing to guard any more */
};

struct lr_guard_msg {
	uint32_t kind;
	int32_t vpid;
	int32_t host_pid;
	uint32_t reserved;
};

/* Exit status of the guardian when it had to kill the tree. */
#define LR_EXIT_TREE_KILLED 3

/*
 * Fork. In the child (the daemon) returns 0 and sets *guard_fd; the parent
 * never returns: it guards until the daemon exits, then exits itself.
 */
int lr_guard_fork(int *guard_fd, struct lr_error *err);
/* Daemon side: hand the guardian a duplicate of uffd (and a pidfd of host_pid when > 0). */
int lr_guard_send(int guard_fd, enum lr_guard_kind kind, int32_t vpid, pid_t host_pid, int uffd,
		  struct lr_error *err);

#endif /* LR_GUARD_H */
