/*
 * criu_sock.h: CRIU's lazy-pages socket, daemon side (criu/uffd.c in CRIU 4.1).
 *
 * The daemon listens on "lazy-pages.socket" in CRIU's work directory (CRIU
 * connects to that relative name after chdir to it). `criu restore
 * --lazy-pages` connects once; then, per task of pstree.img, the task itself
 * sends its pid in the checkpoint as a host-order int and then its userfaultfd
 * by SCM_RIGHTS with a one-byte payload (a zombie sends a negative pid and no
 * fd). When every task is restored and before any resumes, CRIU sends the
 * uint32 LR_RESTORE_FINISHED. SO_PASSCRED gives each message the sender's
 * host pid, which is how the guardian can later kill the tree.
 */
#ifndef LR_CRIU_SOCK_H
#define LR_CRIU_SOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lr_error.h"

#define LR_LAZY_SOCK_NAME "lazy-pages.socket"
#define LR_RESTORE_FINISHED 0x52535446u /* "RSTF" read as a little-endian word */

enum lr_conn_state {
	LR_CONN_PID,       /* expecting a task's pid */
	LR_CONN_FD,        /* expecting that task's uffd */
	LR_CONN_FINISH,    /* all tasks in: expecting "restore finished" */
	LR_CONN_DONE,      /* restore finished; CRIU may close */
};

struct lr_criu_task {
	int32_t pid;       /* pid in the checkpoint; negative for a zombie */
	pid_t host_pid;    /* sender's pid on this host (SCM_CREDENTIALS), 0 if unknown */
	int uffd;          /* -1 for a zombie */
};

struct lr_criu_conn {
	int fd;
	enum lr_conn_state state;
	uint32_t tasks_expected, tasks_seen;
	unsigned char buf[4];
	size_t have;
	struct lr_criu_task cur;
	bool closed_early;  /* CRIU closed the connection before "restore finished": the restore failed, and
			     * CRIU killed the tasks it made before any ran */
};

/* Bind and listen on LR_LAZY_SOCK_NAME in the current directory (replacing a stale socket). */
int lr_criu_listen(struct lr_error *err);
int lr_criu_accept(int listen_fd, struct lr_criu_conn *c, uint32_t tasks, struct lr_error *err);
/*
 * Read what is available. Returns 1 with *task filled when a task is complete,
 * 2 when "restore finished" arrived, 3 on EOF after it, 0 when more input is needed.
 */
int lr_criu_read(struct lr_criu_conn *c, struct lr_criu_task *task, struct lr_error *err);

#endif /* LR_CRIU_SOCK_H */
