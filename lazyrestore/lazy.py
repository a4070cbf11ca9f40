"""`lazyrestore restore --lazy`: the tree resumes at once; lr-lazyd places its memory behind it.

Flow: verify the checkpoint's metadata (page bytes are verified by lr-lazyd as it
places them), start lr-lazyd with its guardian in a fresh CRIU work dir, run
`criu restore --lazy-pages` through RPC, report the time to resume, then follow
lr-lazyd's progress until every page is placed. With --detach, return once the
tree runs and leave lr-lazyd and its guardian to finish; `status` reads their
progress file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


from . import criu, lazyview, procs
from .daemons import EXIT_TREE_KILLED, Lazyd, LazydOptions, read_status
from .errors import CriuFailed, DaemonFailed
from .lazydstats import LazydStats
from .output import Reporter, human_bytes
from .criuopts import CriuOptions
from .restore import RESTORE_LOG, check_pids_free, criu_options_for, new_run_dir, run_restore, wait_running
from .manifest import Manifest
from .verify import verify_for_lazy

PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class LazySummary:
    """What a lazy restore reports. Times in seconds; latencies in microseconds.

    resume_s: from starting CRIU's restore to the tree running.
    resident_s: from "restore finished" to every page placed (None with --detach).
    """

    images_dir: str
    checkpoint_id: str
    pid: int
    processes: int
    workdir: str
    verify_s: float
    resume_s: float
    resident_s: float | None
    faults: int
    fault_bytes: int
    data_faults: int
    drain_bytes: int
    zero_pages: int
    lat_p50_us: float
    lat_p99_us: float
    lat_max_us: float
    daemon_cpu_s: float
    detached: bool
    prefetch_bytes: int = 0       # working-set bytes placed before the tree asked
    prefetch_restores: int = 0    # restores the working set used was merged from (0: none used)
    near_bytes: int = 0           # of drain_bytes, placed right after a fault's window (locality)
    link_bps: int = 0             # remote: the link measured while fetching ahead (0: not measured)
    compress: bool = False        # remote: page data came zstd-compressed (--compress, or auto on a slow link)
    zstd_frames: int = 0          # remote: page frames that came compressed (all-zero blocks always do)
    wire_bytes: int = 0           # remote: page frame bytes as they crossed the link


def restore_lazy(images_dir: Path, workdir: Path | None, detach: bool, options: LazydOptions,
                 reporter: Reporter, extra: CriuOptions = CriuOptions()) -> LazySummary:
    procs.require_root()
    binary = criu.find_criu()
    t0 = time.monotonic()
    m = verify_for_lazy(images_dir)
    check_pids_free(images_dir)
    criu_options = criu_options_for(images_dir, m, extra)
    verify_s = time.monotonic() - t0
    run = new_run_dir(images_dir, workdir)
    reporter.progress(f"lazy restore of {m.processes} process(es) ({human_bytes(m.lazy_pages * m.page_size)} lazy); "
                      f"work dir {run}")
    daemon = Lazyd(images_dir, run, options, detach)
    return resume_and_follow(binary, images_dir, m, run, daemon, verify_s, reporter, criu_options)


INTERRUPTED = "interrupted before every page was placed: the restored tree was killed; the checkpoint is intact"
# The start of lr-lazyd's errors when CRIU's restore closed its connection before "restore finished" (both in
# native/lazyd/criu_sock.c: before a task's uffd, or after them all).
CRIU_WENT_AWAY = "CRIU restore closed the lazy-pages connection"


def resume_and_follow(binary: criu.CriuBinary, images_dir: Path, m: Manifest, run: Path, daemon: Lazyd,
                      verify_s: float, reporter: Reporter, criu_options: CriuOptions = CriuOptions()) -> LazySummary:
    """With lr-lazyd listening in run: CRIU's lazy restore, then (unless detached) the drain to its end."""
    try:
        criu_images = lazyview.criu_dir(images_dir, m, run)
    except OSError:
        daemon.stop()
        raise
    reporter.event("listening", workdir=str(run), daemon_log=str(daemon.log))
    pid, resume_s = _resume(binary, criu_images, run, daemon, reporter, m.lazy_pages * m.page_size, criu_options)
    try:
        reporter.event("resumed", pid=pid, resume_s=round(resume_s, 6))
        reporter.progress(f"resumed: root pid {pid} after {resume_s * 1000:.1f} ms")
        if daemon.detached:
            last = read_status(run) or {}
        else:
            last = _follow(daemon, m.lazy_pages * m.page_size, reporter)
    except KeyboardInterrupt:  # wherever it lands once the tree runs: stop the daemon, so the tree is killed
        daemon.stop()
        raise DaemonFailed(INTERRUPTED) from None
    return _summary(images_dir, m.checkpoint_id, pid, m.processes, run, verify_s, resume_s, last, daemon.detached)


def _resume(binary: criu.CriuBinary, criu_images: Path, run: Path, daemon: Lazyd, reporter: Reporter,
            total: int, criu_options: CriuOptions) -> tuple[int, float]:
    t = time.monotonic()
    try:
        pid = run_restore(binary, criu_images, run / RESTORE_LOG, lazy=True, options=criu_options)
    except CriuFailed as exc:
        # CRIU fails when lr-lazyd stopped under it (e.g. a page failing its checksum): that is the cause. When
        # lr-lazyd only saw CRIU go away, CRIU's failure is the cause: exit 8, as for an eager restore.
        code = daemon.wait_exit(2.0)
        daemon.stop()
        if code not in (None, 0) and not daemon.first_error().startswith(CRIU_WENT_AWAY):
            raise DaemonFailed(f"lr-lazyd stopped during CRIU's restore: {daemon.first_error()}; nothing runs; "
                               f"the checkpoint is intact; log {daemon.log} (CRIU: {exc})") from exc
        raise
    except KeyboardInterrupt:
        daemon.stop()
        raise
    resume_s = time.monotonic() - t
    try:
        wait_running(pid, run / RESTORE_LOG)
    except CriuFailed:
        # The tree died at once: when lr-lazyd failed (e.g. a corrupt page) its error is the cause.
        if daemon.wait_exit(5.0) not in (None, 0):
            _follow(daemon, total, reporter)
        daemon.stop()
        raise
    return pid, resume_s


def _follow(daemon: Lazyd, total: int, reporter: Reporter) -> dict[str, Any]:
    """Show progress until lr-lazyd exits; the last JSON object it wrote, or DaemonFailed."""
    from tqdm import tqdm  # here, once the tree runs: its import (~15-30 ms) is no part of the time to resume

    last: dict[str, Any] = {}
    shown = 0.0
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="placing pages",
               disable=reporter.json_mode, file=reporter.err, leave=False)
    try:
        for ev in daemon.events():
            if ev.get("event") == "warning":
                reporter.event("warning", message=ev.get("message", ""))
                reporter.progress(f"warning: {ev.get('message', '')}")
                continue
            last = ev
            placed = max(0, ev.get("total_bytes", total) - ev.get("left_bytes", 0))
            bar.total = ev.get("total_bytes", total) or total
            bar.update(placed - bar.n)
            if ev.get("event") == "progress" and time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                reporter.event("progress", **{k: ev[k] for k in ("left_bytes", "total_bytes", "faults", "data_faults",
                                                                 "fault_bytes", "drain_bytes") if k in ev})
        code = daemon.wait()
    except KeyboardInterrupt:
        daemon.stop()
        raise DaemonFailed(INTERRUPTED) from None
    finally:
        bar.close()
    if code != 0 or last.get("event") != "done":
        why = last.get("message") or daemon.last_log_lines()
        what = "died" if code == EXIT_TREE_KILLED else f"failed (exit {code})"
        raise DaemonFailed(f"lr-lazyd {what} before every page was placed: {why}; its guardian killed the "
                           f"restored tree; the checkpoint is intact; log {daemon.log}")
    return last


STATS_KEYS = {f.name for f in fields(LazydStats)}  # LazySummary's fields that come from lr-lazyd's stats as they are


def _summary(images_dir: Path, cid: str, pid: int, processes: int, run: Path, verify_s: float, resume_s: float,
             last: dict[str, Any], detach: bool) -> LazySummary:
    stats = LazydStats.from_json(last)
    carried = {f.name: getattr(stats, f.name) for f in fields(LazySummary) if f.name in STATS_KEYS}
    return LazySummary(images_dir=str(images_dir), checkpoint_id=cid, pid=pid, processes=processes,
                       workdir=str(run), verify_s=verify_s, resume_s=resume_s, detached=detach,
                       daemon_cpu_s=stats.cpu_s, **{**carried, "resident_s": None if detach else stats.resident_s})


def summary_text(s: LazySummary) -> str:
    head = f"restored checkpoint {s.checkpoint_id} lazily: root pid {s.pid} ({s.processes} process(es))"
    if s.detached:
        return (f"{head}\n  resumed after {s.resume_s * 1000:.1f} ms; pages still arriving: "
                f"`lazyrestore status --workdir {s.workdir}`")
    return (f"{head}\n  resumed after {s.resume_s * 1000:.1f} ms; every page resident {s.resident_s:.3f} s later\n"
            f"  faults {s.faults}, {s.data_faults} waiting for page data (p50 {s.lat_p50_us:.1f} us, p99 {s.lat_p99_us:.1f} us, max {s.lat_max_us:.1f} us); "
            f"placed by fault {human_bytes(s.fault_bytes)}, by drain {human_bytes(s.drain_bytes)}; "
            f"zero pages {s.zero_pages}\n{_prefetch_text(s)}  lr-lazyd cpu {s.daemon_cpu_s:.3f} s; work dir {s.workdir}")


def _prefetch_text(s: LazySummary) -> str:
    if not s.prefetch_restores:
        return ""
    return (f"  working set of {s.prefetch_restores} earlier restore(s): {human_bytes(s.prefetch_bytes)} placed "
            f"before the tree asked\n")
