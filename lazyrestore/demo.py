"""`lazyrestore demo`: one checkpoint of the sample workload, restored eagerly and then lazily.

Every process's memory checksum is compared with the one taken before the
checkpoint, and the two restores' times to resume are set side by side.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from . import checkpoint, criu, lazy, procs, restore, sample
from .daemons import LazydOptions
from .errors import VerificationFailed
from .output import Reporter


def run(mib: int, workdir: Path | None, rep: Reporter) -> int:
    procs.require_root()
    criu.find_criu()
    base = workdir or Path(tempfile.mkdtemp(prefix="lazyrestore-demo-", dir="/dev/shm"))
    base.mkdir(parents=True, exist_ok=True)
    live: list[int] = []
    try:
        return _demo(mib, base, live, rep)
    finally:
        for pid in live:
            sample.Workload(pid, base / "app.log", ()).kill()
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def _demo(mib: int, base: Path, live: list[int], rep: Reporter) -> int:
    rep.progress(f"starting the sample workload ({mib} MiB, 2 threads) in {base}")
    w = sample.start(base, mib, threads=2)
    live.append(w.pid)
    before = w.request_report()
    _show(rep, "before checkpoint", before)
    log_size = w.log.stat().st_size
    cp = checkpoint.checkpoint(w.pid, base / "images", False, False, rep)
    rep.result(checkpoint.summary_text(cp), "checkpoint", **cp.__dict__)

    t0 = time.monotonic()
    eager = restore.restore(base / "images", rep)
    eager_resume = time.monotonic() - t0
    live.append(eager.pid)
    rep.result(restore.summary_text(eager), "eager_restore", **eager.__dict__)
    same_eager = _compare(rep, "after eager restore", before, sample.Workload(eager.pid, w.log, w.roles))
    sample.Workload(eager.pid, w.log, w.roles).kill()
    _wait_gone(eager.pid)
    os.truncate(w.log, log_size)  # CRIU restores open files at their checkpoint-time size

    ls = lazy.restore_lazy(base / "images", None, False, LazydOptions(), rep)
    live.append(ls.pid)
    rep.result(lazy.summary_text(ls), "lazy_restore", **ls.__dict__)
    same_lazy = _compare(rep, "after lazy restore", before, sample.Workload(ls.pid, w.log, w.roles))
    rep.result(f"time to resume: eager {eager_resume:.3f} s (all {mib} MiB placed first), "
               f"lazy {ls.resume_s:.3f} s ({eager_resume / max(ls.resume_s, 1e-6):.0f}x sooner; "
               f"every page resident {ls.resident_s:.3f} s later); checksums "
               f"{'match' if same_eager and same_lazy else 'DIFFER'}",
               "summary", match=same_eager and same_lazy, eager_resume_s=round(eager_resume, 6),
               lazy_resume_s=round(ls.resume_s, 6), lazy_resident_s=ls.resident_s)
    if not (same_eager and same_lazy):
        raise VerificationFailed("memory checksums differ after restore")
    return 0


def _compare(rep: Reporter, when: str, before: dict[str, sample.Report], restored: sample.Workload) -> bool:
    after = restored.request_report()
    _show(rep, when, after)
    return all(before[r].checksum == after[r].checksum for r in before)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while procs.is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _show(rep: Reporter, when: str, reports: dict[str, sample.Report]) -> None:
    for role, r in sorted(reports.items()):
        rep.result(f"  {when:<20} {role:<5} checksum {r.checksum} ({r.mib} MiB)", "checksum",
                   when=when, role=role, checksum=r.checksum, mib=r.mib)
