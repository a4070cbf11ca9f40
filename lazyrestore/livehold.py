"""The live source's own hold on its stopped tree, so that CRIU dying never lets it run.

`criu dump --lazy-pages` holds the tree in ptrace-stop while it is served. If CRIU dies (killed, crashed), the
kernel detaches its ptrace and the tasks would run on: beside a destination that may already run the tree (two
copies), and under lr-pageserver reading memory that now changes. So once CRIU holds the tree, every process of
it gets a SIGSTOP, which stays pending while CRIU holds it: a task CRIU lets go stops at once (the signal is
taken on its way back to user space, before it runs an instruction of its own). Then:
  - a rollback (CRIU resumed the tree, or CRIU is gone and no destination holds it): SIGCONT to each process
    that was not stopped before the migration;
  - the end (DONE, or the operator's abort) when CRIU is gone: SIGKILL to each process (CRIU would have).
Processes are held by pidfd: a pid reused after the tree ended is never signalled.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field

from . import procs, treefacts
from .errors import ProcessError

GONE_TIMEOUT_S = 10.0


@dataclass
class Hold:
    """The tree's processes (pidfds by host pid) and those that were stopped before the migration."""

    pidfds: dict[int, int] = field(default_factory=dict)
    stopped_before: set[int] = field(default_factory=set)

    def close(self) -> None:
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()


def stopped_now(root: int) -> set[int]:
    """The tree's processes in a job-control stop (state T) now: taken before CRIU freezes the tree."""
    return {pid for pid in treefacts.tree_pids(root) if _state(pid).startswith("T")}


def hold(root: int, stopped_before: set[int]) -> Hold:
    """SIGSTOP to every process of the tree CRIU holds stopped (pending until CRIU lets go of it)."""
    h = Hold(stopped_before=stopped_before)
    for pid in treefacts.tree_pids(root):
        try:
            h.pidfds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        _signal(h.pidfds[pid], signal.SIGSTOP)
    return h


def release(h: Hold) -> list[int]:
    """A rollback: SIGCONT to the processes that were running before the migration; their pids."""
    woken = [pid for pid, fd in h.pidfds.items() if pid not in h.stopped_before and _signal(fd, signal.SIGCONT)]
    h.close()
    return woken


def end(h: Hold) -> bool:
    """SIGKILL to every process of the tree; True once all have exited (GONE_TIMEOUT_S at most)."""
    for fd in h.pidfds.values():
        _signal(fd, signal.SIGKILL)
    poller = select.poll()
    for fd in h.pidfds.values():
        poller.register(fd, select.POLLIN)  # a pidfd reads as ready once its process has exited
    left, deadline = set(h.pidfds.values()), time.monotonic() + GONE_TIMEOUT_S
    while left and time.monotonic() < deadline:
        left -= {fd for fd, _ in poller.poll(100)}
    h.close()
    return not left


def _signal(pidfd: int, sig: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


def _state(pid: int) -> str:
    try:
        return procs.status_fields(pid).get("State", "")
    except ProcessError:
        return ""
