"""The ways to move a running workload to another host, measured from the checkpoint's start.

Every method migrates a fresh Source (a migration consumes its source tree) and
returns a dict of figures with the restored root's pid; all times are seconds on
the bench's monotonic clock from t0, the start of the checkpoint:
  resume_s  until the restored tree runs,
  total_s   until every page is resident on the destination (eager: = resume_s).

  lr-live      `lazyrestore migrate` (live) on the source, then `lazyrestore restore --from` on the destination
  lr-live-first  the same, the destination started first with a shared secret (it waits for the source)
  lr-remote    `lazyrestore migrate --via-disk` on the source, `lazyrestore restore --from` on the destination
  criu-remote  CRIU's own remote lazy mode (criu dump --lazy-pages + page server, criu lazy-pages
               --page-server, criu restore --lazy-pages), with fs.pipe-max-size raised for it only
  eager-copy   `lazyrestore checkpoint`, a copy of the images dir, `lazyrestore restore --images`

A method that fails raises MethodFailed (with the root pid when a tree was restored);
CRIU's daemon still placing pages at the drain time limit raises RemoteTimedOut (a bound).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .local_methods import CRIU_DAEMON_LOG, CRIU_DAEMON_VERBOSITY, CRIU_RESTORE_LOG, MethodFailed, lazyrestore_cmd
from .memory import REPORT_TIMEOUT_S
from .procs import TIMEOUT_S, is_alive, kill_and_wait, wait_exit_rusage, wait_gone
from .netprocs import JsonProc, Network, finish, pipe_max_size, wait_event

from lazyrestore import criu, images, sample
from lazyrestore.procs import ready_byte
from lazyrestore.manifest import META_DIR
from lazyrestore.restore import SETTLE_S
from lazyrestore.secret import SECRET_NAME

SCANNERS = 2  # the "scanning" workload of local.py: faults happen during the drain
WORKLOADS = {"idle": 0, "scanning": SCANNERS}  # workload -> scanner threads
DISK_METHODS = ("lr-remote", "eager-copy")  # keep a full copy of the memory on tmpfs beside source and destination
SOURCE_EXIT_TIMEOUT_S = 60.0
CRIU_DUMP_LOG = "dump.log"
CRIU_VERBOSITY = f"-v{criu.log_level()}"  # dump and restore at lazyrestore's own CRIU level


class RemoteTimedOut(MethodFailed):
    """CRIU's lazy-pages daemon was still placing pages at the time limit: a bound, not a failure."""

    def __init__(self, pid: int, figures: dict[str, Any], limit_s: float) -> None:
        super().__init__(f"criu lazy-pages had not placed every page {limit_s:.0f} s after the restore started", pid)
        self.figures = figures


@dataclass
class Source:
    """A fresh sample workload to migrate once: where it runs, what its memory must read back as."""

    size_mib: int
    net: Network
    scratch: Path
    pid: int
    log: Path
    roles: tuple[str, ...]
    checksums: dict[str, str]
    log_size: int = -1

    def source_gone(self) -> None:
        """After the checkpoint: wait until the source tree is gone, then note its log's size
        (CRIU restores the open log at that size)."""
        if not wait_gone(self.pid, 60.0):
            raise MethodFailed(f"the source tree {self.pid} is still alive after its checkpoint")
        self.note_log_size()

    def note_log_size(self) -> None:
        """The log's size now; with the tree gone or frozen (CRIU's lazy dump keeps it frozen while its
        page server runs), its size at the checkpoint."""
        self.log_size = self.log.stat().st_size

    def rewind_log(self) -> None:
        os.truncate(self.log, self.log_size)


def methods_at(size_mib: int, methods: list[str], disk_max_mib: int) -> list[str]:
    """The methods run at this size: those of DISK_METHODS only up to disk_max_mib."""
    return [m for m in methods if size_mib <= disk_max_mib or m not in DISK_METHODS]


def start_source(size_mib: int, net: Network, scratch: Path, scanners: int = SCANNERS) -> Source:
    """The sample workload with `scanners` scanner threads, started in the source's network namespace."""
    with net.inside_src():
        w = sample.start(scratch, size_mib, scanners=scanners, timeout=TIMEOUT_S)
    try:
        before = w.request_report(timeout=REPORT_TIMEOUT_S)
    except BaseException:
        kill_and_wait(w.pid)
        raise
    return Source(size_mib, net, scratch, w.pid, w.log, w.roles, {r: rep.checksum for r, rep in before.items()})


def lazy_bytes(images_dir: Path) -> int:
    """Bytes of the pages a checkpoint marks lazy (PE_LAZY), from its pagemap images."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for proc in images.read_pstree(images_dir):
        pm = images.read_pagemap(images_dir, proc.pid)
        total += sum(e.nr_pages * page for e in (pm.entries if pm else ()) if e.lazy)
    return total


# --- lazyrestore migrate + restore --from ---------------------------------------

def run_lr_live(src: Source, drain_timeout: float) -> dict[str, Any]:
    """`migrate` (live: the source held stopped, its memory served from there), then `restore --from`."""
    return run_lr_remote(src, drain_timeout, live=True)


def run_lr_live_first(src: Source, drain_timeout: float) -> dict[str, Any]:
    """`restore --from` started first, waiting for the source; `migrate --secret-file` (shared) serves it: both
    ends started at once, as an orchestrator would, so the destination's start-up overlaps the checkpoint."""
    return run_lr_remote(src, drain_timeout, live=True, destination_first=True)


def run_lr_remote(src: Source, drain_timeout: float, live: bool = False,
                  destination_first: bool = False) -> dict[str, Any]:
    images_dir, work = src.scratch / "images", src.scratch / "lr-dst"
    shared = src.scratch / "shared-secret"
    listen, secret_args = f"{src.net.src_addr}:0", []
    rst = None
    if destination_first:
        fd = os.open(shared, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32))
        os.close(fd)
        listen, secret_args = f"{src.net.src_addr}:{src.net.free_port()}", ["--secret-file", str(shared)]
        src.note_log_size()  # the tree runs on until CRIU freezes it, then holds it stopped until DONE
        rst = _restore_from(src, listen, shared, work)
    mig = JsonProc(lazyrestore_cmd("migrate", *([] if live else ["--via-disk"]), "--pid", str(src.pid),
                                   "--images", str(images_dir), "--listen", listen, *secret_args, "--json"),
                   src.scratch / "migrate.stderr", src.net.src_preexec())
    try:
        listening = wait_event(mig, "listening", time.monotonic() + TIMEOUT_S)
        started, cp = mig.first("started"), mig.first("checkpointed")
        if listening is None or started is None or cp is None:
            raise MethodFailed(f"lazyrestore migrate: {mig.error_text()}")
        if rst is None:
            if live:
                src.note_log_size()  # frozen by CRIU until the destination has every page
            else:
                src.source_gone()
            rst = _restore_from(src, f"{src.net.src_addr}:{listening[1]['port']}",
                                images_dir / META_DIR / SECRET_NAME, work)
        figures = _lr_drain(src, rst, mig, drain_timeout, started[0], cp, listening[0], destination_first)
        if live and not wait_gone(src.pid, 60.0):
            raise MethodFailed(f"the live source {src.pid} still runs after the destination had every page")
        figures["server_peak_kib"] = server_peak_kib(Path(listening[1].get("log", "")))
        return figures
    finally:
        mig.close()
        if rst is not None:
            rst.close()


def _restore_from(src: Source, address: str, secret_file: Path, work: Path) -> JsonProc:
    return JsonProc(lazyrestore_cmd("restore", "--from", address, "--secret-file", str(secret_file),
                                    "--workdir", str(work), "--json"),
                    src.scratch / "restore.stderr", src.net.dst_preexec())


def _lr_drain(src: Source, rst: JsonProc, mig: JsonProc, drain_timeout: float, t0: float,
              cp: tuple[float, dict[str, Any]], served_at: float, waited: bool) -> dict[str, Any]:
    """The destination to its end (every page resident), then the source's exit; the figures."""
    src.rewind_log()
    code = finish(rst, time.monotonic() + drain_timeout, (mig,))
    figures = _lr_figures(rst, code, drain_timeout, t0, cp, served_at, waited)
    figures["source_exit"] = finish(mig, time.monotonic() + SOURCE_EXIT_TIMEOUT_S)
    if figures["source_exit"] != 0:
        raise MethodFailed(f"lazyrestore migrate: exit {figures['source_exit']} after the destination had "
                           f"every page: {mig.error_text()}", figures["pid"])
    return figures


def server_peak_kib(log: Path) -> int | None:
    """lr-pageserver's peak resident memory (its exit line in the serve log), or None."""
    try:
        found = re.findall(r"peak resident memory (\d+) KiB", log.read_text(errors="replace"))
    except OSError:
        return None
    return int(found[-1]) if found else None


def _lr_figures(rst: JsonProc, code: int | None, limit: float, t0: float,
                cp: tuple[float, dict[str, Any]], served_at: float, waited: bool = False) -> dict[str, Any]:
    """waited: the destination was started first and waited for the source (its start-up is no part of the time;
    its fetch is from the source's "listening" to its own, before CRIU's restore)."""
    resumed, summary, ready = rst.first("resumed"), rst.last("summary"), rst.first("listening")
    pid = resumed[1]["pid"] if resumed else None
    if code is None:
        raise MethodFailed(f"lazyrestore restore --from: not every page resident {limit:.0f} s after it started", pid)
    if code != 0 or summary is None or ready is None or summary[1].get("resident_s") is None:
        raise MethodFailed(f"lazyrestore restore --from: exit {code}: {rst.error_text()}", pid)
    s = summary[1]
    resume_at = ready[0] + s["resume_s"]  # its "listening" event comes just before CRIU's restore starts
    placed = s["drain_bytes"] + s["fault_bytes"]
    return {
        "pid": s["pid"], "resume_s": resume_at - t0, "total_s": resume_at - t0 + s["resident_s"],
        "drain_gbps": placed / s["resident_s"] / 1e9 if s["resident_s"] > 0 else None, "placed_bytes": placed,
        "lat_p50_us": s["lat_p50_us"], "lat_p99_us": s["lat_p99_us"], "lat_max_us": s["lat_max_us"],
        "faults": s["faults"], "fault_bytes": s["fault_bytes"], "drain_bytes": s["drain_bytes"],
        "daemon_cpu_s": s["daemon_cpu_s"],
        "breakdown": {"dump_s": cp[1]["dump_s"], "index_s": cp[1]["index_s"], "checkpoint_s": cp[0] - t0,
                      "serve_start_s": served_at - cp[0],
                      "fetch_s": ready[0] - served_at if waited else s["verify_s"],
                      "restore_start_s": None if waited else ready[0] - served_at - s["verify_s"],
                      "criu_resume_s": s["resume_s"],
                      "resident_after_resume_s": s["resident_s"]},
        "resumed_event_s": resumed[0] - t0 if resumed else None,  # printed after the tool's liveness wait
    }


# --- CRIU's own remote lazy mode ----------------------------------------------------

@dataclass
class CriuRun:
    """The processes and dirs of one CRIU remote lazy migration."""

    src: Source
    port: int
    src_dir: Path
    dst_dir: Path
    work: Path
    dump: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None


def run_criu_remote(src: Source, drain_timeout: float) -> dict[str, Any]:
    """CRIU-NOTES.md's recipe; fs.pipe-max-size is raised for this method only and put back after it."""
    run = CriuRun(src, src.net.free_port(), src.scratch / "criu-src", src.scratch / "criu-dst",
                  src.scratch / "criu-work")
    run.src_dir.mkdir()
    run.work.mkdir()
    try:
        with pipe_max_size() as old:
            figures = _criu_migrate(run, drain_timeout)
            figures["pipe_max_size_before"] = old
            return figures
    finally:
        for proc in (run.daemon, run.dump):
            if proc is not None and proc.poll() is None:
                kill_and_wait(proc.pid)


def _criu_migrate(run: CriuRun, drain_timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    run.dump = _start_with_status(
        [criu.find_criu().path, "dump", "-t", str(run.src.pid), "-D", str(run.src_dir), "--lazy-pages",
         "--address", run.src.net.src_addr, "--port", str(run.port), "-o", CRIU_DUMP_LOG, CRIU_VERBOSITY],
        run.src_dir / "dump.stderr", run.src.net.src_preexec(), TIMEOUT_S, "criu dump --lazy-pages",
        run.src_dir / CRIU_DUMP_LOG)
    t_dumped = time.monotonic()
    run.src.note_log_size()  # the source stays frozen until the lazy-pages daemon has every page
    run.src.rewind_log()
    shutil.copytree(run.src_dir, run.dst_dir, symlinks=True)
    t_copied = time.monotonic()
    run.daemon = _start_with_status(
        [criu.find_criu().path, "lazy-pages", "--page-server", "--address", run.src.net.src_addr,
         "--port", str(run.port), "-D", str(run.dst_dir), "-W", str(run.work), "-o", CRIU_DAEMON_LOG,
         CRIU_DAEMON_VERBOSITY],
        run.work / "lazy-pages.stderr", run.src.net.dst_preexec(), 30.0, "criu lazy-pages --page-server",
        run.work / CRIU_DAEMON_LOG)
    t_r0 = time.monotonic()
    pid = _criu_restore(run)
    t_r1 = time.monotonic()
    lazy = lazy_bytes(run.dst_dir)
    times = {"t0": t0, "dumped": t_dumped, "copied": t_copied, "r0": t_r0, "r1": t_r1}
    return _criu_drain(run, pid, lazy, times, drain_timeout)


def _start_with_status(args: list[str], stderr: Path, preexec: Callable[[], None] | None, timeout: float,
                       what: str, log: Path) -> subprocess.Popen[bytes]:
    """Start a CRIU command with --status-fd and wait for its ready byte (its page server or socket is up)."""
    status_r, status_w = os.pipe()
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([*args, "--status-fd", str(status_w)], pass_fds=(status_w,), preexec_fn=preexec,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    os.close(status_w)
    if not ready_byte(status_r, timeout):
        kill_and_wait(proc.pid)
        raise MethodFailed(f"{what} did not get ready: {' | '.join(criu.log_excerpt(log, limit=4))}")
    return proc


def _criu_restore(run: CriuRun) -> int:
    pidfile = run.work / "root.pid"
    out = subprocess.run([criu.find_criu().path, "restore", "-D", str(run.dst_dir), "-W", str(run.work),
                          "--lazy-pages", "-d", "--pidfile", str(pidfile), "-o", CRIU_RESTORE_LOG, CRIU_VERBOSITY],
                         capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, check=False,
                         preexec_fn=run.src.net.dst_preexec())
    try:
        pid: int | None = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if out.returncode != 0 or pid is None:
        excerpt = " | ".join(criu.log_excerpt(run.work / CRIU_RESTORE_LOG, limit=4))
        raise MethodFailed(f"criu restore --lazy-pages: exit {out.returncode}: {excerpt}", pid)
    return pid


def _criu_drain(run: CriuRun, pid: int, lazy: int, t: dict[str, float], drain_timeout: float) -> dict[str, Any]:
    """Wait for the lazy-pages daemon to exit (every page placed), then for the dump's page server."""
    assert run.daemon is not None and run.dump is not None
    figures: dict[str, Any] = {
        "pid": pid, "resume_s": t["r1"] - t["t0"], "lazy_bytes": lazy, "placed_bytes": lazy,
        "breakdown": {"dump_s": t["dumped"] - t["t0"], "copy_s": t["copied"] - t["dumped"],
                      "daemon_start_s": t["r0"] - t["copied"], "criu_resume_s": t["r1"] - t["r0"]}}
    try:
        code, exited_at, cpu = wait_exit_rusage(run.daemon, drain_timeout - (time.monotonic() - t["r0"]))
    except TimeoutError:
        now = time.monotonic()
        figures.update(total_s=now - t["t0"], drain_gbps=lazy / (now - t["r1"]) / 1e9)
        raise RemoteTimedOut(pid, figures, now - t["r0"]) from None
    if code != 0:
        raise MethodFailed(f"criu lazy-pages: exit {code}: "
                           f"{' | '.join(criu.log_excerpt(run.work / CRIU_DAEMON_LOG, limit=4))}", pid)
    if not is_alive(pid):
        raise MethodFailed(f"restored root {pid} died", pid)
    figures.update(total_s=exited_at - t["t0"], drain_gbps=lazy / (exited_at - t["r1"]) / 1e9, daemon_cpu_s=cpu)
    figures["breakdown"]["resident_after_resume_s"] = exited_at - t["r1"]
    try:
        figures["source_exit"] = run.dump.wait(timeout=SOURCE_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        figures["source_exit"] = None
    if figures["source_exit"] != 0:
        raise MethodFailed(f"criu dump --lazy-pages: exit {figures['source_exit']} after the daemon had every page: "
                           f"{' | '.join(criu.log_excerpt(run.src_dir / CRIU_DUMP_LOG, limit=4))}", pid)
    return figures


# --- eager: checkpoint, copy, restore ---------------------------------------------------

def run_eager_copy(src: Source, drain_timeout: float) -> dict[str, Any]:
    images_dir, dst = src.scratch / "images", src.scratch / "eager-dst"
    ck = JsonProc(lazyrestore_cmd("checkpoint", "--pid", str(src.pid), "--images", str(images_dir), "--json"),
                  src.scratch / "checkpoint.stderr", src.net.src_preexec())
    try:
        code = finish(ck, time.monotonic() + TIMEOUT_S)
        started, summary = ck.first("started"), ck.last("summary")
    finally:
        ck.close()
    if code != 0 or started is None or summary is None:
        raise MethodFailed(f"lazyrestore checkpoint: exit {code}: {ck.error_text()}")
    src.source_gone()
    t_copy = time.monotonic()
    shutil.copytree(images_dir, dst, symlinks=True)
    t_copied = time.monotonic()
    src.rewind_log()
    rs = JsonProc(lazyrestore_cmd("restore", "--images", str(dst), "--json"), src.scratch / "restore.stderr",
                  src.net.dst_preexec())
    try:
        code = finish(rs, time.monotonic() + max(TIMEOUT_S, drain_timeout))
        verified, done = rs.first("verified"), rs.last("summary")
    finally:
        rs.close()
    if code != 0 or verified is None or done is None:
        raise MethodFailed(f"lazyrestore restore --images: exit {code}: {rs.error_text()}",
                           done[1].get("pid") if done else None)
    return _eager_figures(started[0], summary, (t_copy, t_copied), verified[0], done[1])


def _eager_figures(t0: float, cp: tuple[float, dict[str, Any]], copy: tuple[float, float], verified_at: float,
                   s: dict[str, Any]) -> dict[str, Any]:
    criu_restore = s["restore_s"] - SETTLE_S  # restore_s ends after the tool's fixed liveness wait
    resume_at = verified_at + criu_restore
    return {
        "pid": s["pid"], "resume_s": resume_at - t0, "total_s": resume_at - t0,
        "breakdown": {"dump_s": cp[1]["dump_s"], "index_s": cp[1]["index_s"], "checkpoint_s": cp[0] - t0,
                      "copy_s": copy[1] - copy[0], "restore_start_s": verified_at - copy[1] - s["verify_s"],
                      "verify_s": s["verify_s"], "criu_restore_s": criu_restore},
    }


METHODS: dict[str, Callable[[Source, float], dict[str, Any]]] = {
    "lr-live": run_lr_live,
    "lr-live-first": run_lr_live_first,
    "lr-remote": run_lr_remote,
    "criu-remote": run_criu_remote,
    "eager-copy": run_eager_copy,
}
LABELS = {
    "lr-live": "lazyrestore migrate (live) → restore --from",
    "lr-live-first": "restore --from started first → migrate (live, shared secret)",
    "lr-remote": "lazyrestore migrate --via-disk → restore --from",
    "criu-remote": "CRIU remote lazy-pages",
    "eager-copy": "eager: checkpoint + copy + restore",
}
