"""`lazyrestore demo`: the sample workload checkpointed and restored, memory compared by checksum.

Until lazy migration exists this is the eager round trip on one host.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from . import checkpoint, criu, procs, restore, sample
from .errors import VerificationFailed
from .output import Reporter


def run(mib: int, workdir: Path | None, rep: Reporter) -> int:
    procs.require_root()
    criu.find_criu()
    base = workdir or Path(tempfile.mkdtemp(prefix="lazyrestore-demo-", dir="/dev/shm"))
    base.mkdir(parents=True, exist_ok=True)
    live: list[int] = []
    try:
        return _round_trip(mib, base, live, rep)
    finally:
        for pid in live:
            sample.Workload(pid, base / "app.log", ()).kill()
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def _round_trip(mib: int, base: Path, live: list[int], rep: Reporter) -> int:
    rep.progress(f"starting the sample workload ({mib} MiB, 2 threads, 1 child) in {base}")
    w = sample.start(base, mib, threads=2, children=1)
    live.append(w.pid)
    before = w.request_report()
    _show(rep, "before", before)
    t0 = time.monotonic()
    cp = checkpoint.checkpoint(w.pid, base / "images", False, False, rep)
    rep.result(checkpoint.summary_text(cp), "checkpoint", **cp.__dict__)
    rs = restore.restore(base / "images", rep)
    elapsed = time.monotonic() - t0
    live.append(rs.pid)
    rep.result(restore.summary_text(rs), "restore", **rs.__dict__)
    after = sample.Workload(rs.pid, w.log, w.roles).request_report()
    _show(rep, "after", after)
    same = all(before[r].checksum == after[r].checksum for r in w.roles)
    rep.result(f"checksums {'match' if same else 'DIFFER'}; checkpoint + restore took {elapsed:.2f} s "
               f"(frozen {cp.frozen_s:.2f} s, restore {rs.restore_s:.2f} s)",
               "summary", match=same, seconds=round(elapsed, 6))
    if not same:
        raise VerificationFailed("memory checksums differ after restore")
    return 0


def _show(rep: Reporter, when: str, reports: dict[str, sample.Report]) -> None:
    for role, r in sorted(reports.items()):
        rep.result(f"  {when:<6} {role:<7} checksum {r.checksum} ({r.mib} MiB)", "checksum",
                   when=when, role=role, checksum=r.checksum, mib=r.mib)
