"""The three restore methods measured side by side on the same checkpoint.

Every method returns a Measured with the restored root's host pid; times are in
seconds from the start of CRIU's restore:
  resume_s    until the tree runs,
  resident_s  until every page is resident.
A method that fails raises MethodFailed (with the root pid when a tree was restored).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import DRAIN_TIMEOUT_S, TIMEOUT_S, is_alive, kill_and_wait, run_json, wait_exit_rusage

from lazyrestore import criu
from lazyrestore.restore import SETTLE_S

CRIU_DAEMON_LOG = "lazy-pages.log"
CRIU_RESTORE_LOG = "restore.log"
# CRIU's default verbosity: errors and warnings. At -v4 CRIU's daemon logs every page
# it copies, which slows it down; lr-lazyd runs at its default level (no per-fault lines).
CRIU_DAEMON_VERBOSITY = "-v2"
# The same level lazyrestore uses for its own CRIU restores.
CRIU_RESTORE_VERBOSITY = f"-v{criu.log_level()}"


class MethodFailed(Exception):
    """A restore method failed; pid is the restored root when one exists."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class BaselineTimedOut(MethodFailed):
    """CRIU's lazy-pages daemon was still placing pages when the drain time limit ran out.

    The tree was restored and running, so this is a bound (resident > limit_s), not a failure.
    """

    def __init__(self, pid: int, resume_s: float, limit_s: float, cpu_s: float | None) -> None:
        super().__init__(f"criu lazy-pages had not placed every page {limit_s:.0f} s after the restore started", pid)
        self.resume_s, self.limit_s, self.cpu_s = resume_s, limit_s, cpu_s


@dataclass(frozen=True)
class Target:
    """One restore to do: the checkpoint, a scratch dir on tmpfs, a unique tag for work dirs,
    and how long to wait for every page to be resident."""

    images: Path
    scratch: Path
    tag: str
    drain_timeout: float = DRAIN_TIMEOUT_S


@dataclass
class Measured:
    pid: int
    resume_s: float
    resident_s: float
    wall_s: float
    lat_p50_us: float | None = None
    lat_p99_us: float | None = None
    lat_max_us: float | None = None
    daemon_cpu_s: float | None = None
    faults: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lazyrestore_cmd(*args: str) -> list[str]:
    """The venv's `lazyrestore` entry point (the interpreter running the bench belongs to the venv)."""
    entry = Path(sys.executable).parent / "lazyrestore"
    return [str(entry), *args] if entry.exists() else [sys.executable, "-m", "lazyrestore.cli", *args]


def run_eager(t: Target) -> Measured:
    """`lazyrestore restore --json`: CRIU places every page before the tree resumes."""
    r = run_json(lazyrestore_cmd("restore", "--images", str(t.images), "--json"))
    s = r.last("summary")
    if r.code != 0 or s is None:
        raise MethodFailed(f"lazyrestore restore: exit {r.code}: {r.error_text()}")
    # restore_s ends after the tool's fixed liveness wait (SETTLE_S); without it, it is CRIU's restore.
    resume = s["restore_s"] - SETTLE_S
    return Measured(pid=s["pid"], resume_s=resume, resident_s=resume, wall_s=r.wall_s,
                    extra={"restore_s": s["restore_s"], "verify_s": s["verify_s"]})


def run_lr_lazyd(t: Target) -> Measured:
    """`lazyrestore restore --lazy --json`: the tree resumes at once, lr-lazyd places its memory."""
    work = t.scratch / f"lr-lazyd-{t.tag}"
    r = run_json(lazyrestore_cmd("restore", "--images", str(t.images), "--lazy", "--json", "--workdir", str(work)),
                 timeout=t.drain_timeout)
    resumed, s = r.last("resumed"), r.last("summary")
    pid = resumed["pid"] if resumed else None
    if r.code != 0 or s is None or s.get("resident_s") is None:
        raise MethodFailed(f"lazyrestore restore --lazy: exit {r.code}: {r.error_text()}", pid)
    # resident_s counts from CRIU's "restore finished" message, which comes just before the
    # tree resumes: adding resume_s slightly over-counts, never under-counts.
    return Measured(pid=s["pid"], resume_s=s["resume_s"], resident_s=s["resume_s"] + s["resident_s"],
                    wall_s=r.wall_s, lat_p50_us=s["lat_p50_us"], lat_p99_us=s["lat_p99_us"],
                    lat_max_us=s["lat_max_us"], daemon_cpu_s=s["daemon_cpu_s"], faults=s["faults"],
                    extra={k: s[k] for k in ("resident_s", "verify_s", "fault_bytes", "drain_bytes", "zero_pages")})


def run_criu_lazy(t: Target) -> Measured:
    """CRIU's own local lazy mode: `criu lazy-pages` + `criu restore --lazy-pages -d`."""
    work = t.scratch / f"criu-lazy-{t.tag}"
    work.mkdir()
    started = time.monotonic()
    daemon = _start_criu_daemon(t.images, work)
    try:
        return _criu_lazy_restore(t, work, daemon, started)
    finally:
        if daemon.returncode is None and daemon.poll() is None:
            kill_and_wait(daemon.pid)


def _start_criu_daemon(images: Path, work: Path) -> subprocess.Popen[bytes]:
    """`criu lazy-pages` in the background; returns once it listens on WORK/lazy-pages.socket."""
    binary = criu.find_criu().path
    status_r, status_w = os.pipe()
    with open(work / "lazy-pages.stderr", "wb") as err:
        daemon = subprocess.Popen([binary, "lazy-pages", "-D", str(images), "-W", str(work), "-o", CRIU_DAEMON_LOG,
                                   CRIU_DAEMON_VERBOSITY, "--status-fd", str(status_w)],
                                  pass_fds=(status_w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, start_new_session=True)
    os.close(status_w)
    try:
        ready, _, _ = select.select([status_r], [], [], 30.0)
        got = os.read(status_r, 1) if ready else b""
    finally:
        os.close(status_r)
    if got != b"\0" or not (work / "lazy-pages.socket").exists():
        kill_and_wait(daemon.pid)
        raise MethodFailed(f"criu lazy-pages did not start listening: {_excerpt(work / CRIU_DAEMON_LOG)}")
    return daemon


def _criu_lazy_restore(t: Target, work: Path, daemon: subprocess.Popen[bytes], started: float) -> Measured:
    binary, images = criu.find_criu().path, t.images
    pidfile = work / "root.pid"
    t0 = time.monotonic()
    out = subprocess.run([binary, "restore", "-D", str(images), "-W", str(work), "--lazy-pages", "-d",
                          "--pidfile", str(pidfile), "-o", CRIU_RESTORE_LOG, CRIU_RESTORE_VERBOSITY],
                         capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    t1 = time.monotonic()
    pid = _read_pid(pidfile)
    if out.returncode != 0 or pid is None:
        raise MethodFailed(f"criu restore --lazy-pages: exit {out.returncode}: {_excerpt(work / CRIU_RESTORE_LOG)}", pid)
    try:
        code, exited_at, cpu = wait_exit_rusage(daemon, t.drain_timeout - (time.monotonic() - t0))
    except TimeoutError:
        raise BaselineTimedOut(pid, t1 - t0, time.monotonic() - t0, cpu_seconds(daemon.pid)) from None
    if code != 0:
        raise MethodFailed(f"criu lazy-pages: exit {code}: {_excerpt(work / CRIU_DAEMON_LOG)}", pid)
    if not is_alive(pid):
        raise MethodFailed(f"restored root {pid} died; {_excerpt(work / CRIU_RESTORE_LOG)}", pid)
    return Measured(pid=pid, resume_s=t1 - t0, resident_s=exited_at - t0, wall_s=exited_at - started,
                    daemon_cpu_s=cpu, extra={"daemon_exit": code})


def cpu_seconds(pid: int) -> float | None:
    """user+system CPU time of a live process so far, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _excerpt(log: Path) -> str:
    return " | ".join(criu.log_excerpt(log, limit=4))


METHODS: dict[str, Callable[[Target], Measured]] = {
    "eager": run_eager,
    "criu-lazy": run_criu_lazy,
    "lr-lazyd": run_lr_lazyd,
}
LABELS = {
    "eager": "eager (CRIU restore)",
    "criu-lazy": "CRIU lazy-pages (local)",
    "lr-lazyd": "lr-lazyd",
}
