"""Process plumbing for the benchmark: subreaper, waiting with timeouts, killing by pid, JSON commands.

The bench makes itself a child subreaper, so every restored tree (whose CRIU or
lazyrestore parent exits) and every orphaned daemon becomes its child: it can
wait for them exactly and, on any failure or Ctrl-C, kill all of its descendants
by pid.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
# Limit for every step (start, checkpoint, restore, report)...
TIMEOUT_S = 600.0
# ...and for every page to be resident (bench --drain-timeout). CRIU's lazy-pages daemon
# needed 500 s, and once more than 900 s, for a 4 GiB scanning workload here: when it runs
# out of time the bench reports a bound (resident > limit) for it instead of a figure.
DRAIN_TIMEOUT_S = 600.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text.rsplit(")", 1)[1].split()
    return rest[0], int(rest[1])


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    st = _stat_fields(pid)
    return st is not None and st[0] not in ("Z", "X")


def _reap(pid: int) -> bool:
    """Reap pid if it is our exited child; True when it is gone for good."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return _stat_fields(pid) is None


def kill_and_wait(pid: int, timeout: float = 60.0) -> bool:
    """SIGKILL pid and wait until it no longer exists (reaping it when it is our child)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reap(pid):
            return True
        time.sleep(0.01)
    return False


def wait_gone(pid: int, timeout: float = 60.0) -> bool:
    """Wait (without signalling) until pid has exited and was reaped by whoever is its parent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reap(pid) or not is_alive(pid):
            return True
        time.sleep(0.01)
    return False


def descendants(root: int | None = None) -> list[int]:
    """Every live process below root (default: this process), from /proc."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat_fields(int(entry.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def kill_descendants(timeout: float = 30.0) -> list[int]:
    """SIGKILL every descendant by pid and reap them; returns the pids that were still alive."""
    killed = [p for p in descendants() if is_alive(p)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = descendants()
        if not left:
            break
        for pid in left:
            if is_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _reap(pid)
        time.sleep(0.02)
    return killed


def wait_exit_rusage(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float, float]:
    """Wait for a Popen child with a pidfd; (exit code, monotonic time of exit, CPU seconds from wait4)."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        exited_at = time.monotonic()
        if not ready:
            raise TimeoutError(f"pid {proc.pid} did not exit within {timeout:.0f} s")
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        os.close(pidfd)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, exited_at, usage.ru_utime + usage.ru_stime


@dataclass
class JsonRun:
    """A command that prints JSON lines: its exit code, events, stderr and wall time."""

    code: int
    events: list[dict[str, Any]]
    stderr: str
    wall_s: float

    def last(self, name: str) -> dict[str, Any] | None:
        found = [e for e in self.events if e.get("event") == name]
        return found[-1] if found else None

    def error_text(self) -> str:
        err = self.last("error")
        if err:
            return str(err.get("message"))
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else f"exit {self.code}"


def clean_env() -> dict[str, str]:
    """The environment for lazyrestore: no test-only switches (sanitized daemon, extra daemon args)."""
    return {k: v for k, v in os.environ.items() if k not in ("LAZYRESTORE_SANITIZED", "LAZYRESTORE_LAZYD_ARGS")}


def run_json(args: list[str], timeout: float = TIMEOUT_S) -> JsonRun:
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=clean_env(),
                          stdin=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - t0
    events = []
    for line in proc.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return JsonRun(proc.returncode, events, proc.stderr, wall)
