"""`lazyrestore demo` (`make demo`): a live migration between two test hosts, lazily, then eagerly.

1. Two test hosts, A and B (network namespaces whose bridges a veth pair joins), are set up.
2. The sample workload (1 GiB by default, 2 threads, a heartbeat with its memory
   checksum every second) starts on host A.
3. Lazy migration A -> B: `lazyrestore migrate` on A checkpoints it and serves it
   with lr-pageserver; `restore --from` on B resumes it at once while lr-lazyd
   streams the memory over the veth (a progress bar shows the drain).
4. Eager migration B -> A of the same workload, for comparison: checkpoint on B,
   a copy of the images to A's directory, a full restore on A.
After each migration every process's memory checksum is compared with the one
taken before the first; the lazy migration is drawn as a PNG (`lazyrestore report`:
faults, memory placed, fault latency), whose path is printed. Everything the demo created (trees, page server, images,
test hosts) is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint, criu, procs, remote, report, restore, sample, secret, testhosts
from .daemons import LazydOptions, RemoteSource
from .errors import DaemonFailed, VerificationFailed
from .output import Reporter
from .restore import SETTLE_S


class TimedReporter(Reporter):
    """A Reporter that also notes when each event happened (monotonic seconds)."""

    def __init__(self, inner: Reporter) -> None:
        super().__init__(inner.json_mode, inner.out, inner.err)
        self.seen: dict[str, float] = {}

    def event(self, name: str, **fields: Any) -> None:
        self.seen[name] = time.monotonic()
        super().event(name, **fields)


@dataclass
class Demo:
    base: Path
    rep: Reporter
    trees: list[int] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    keep_base: bool = False  # --workdir given: base stays, and the report with it


def run(mib: int, workdir: Path | None, rep: Reporter) -> int:
    procs.require_root()
    criu.find_criu()
    base = workdir or Path(tempfile.mkdtemp(prefix="lazyrestore-demo-", dir="/dev/shm"))
    base.mkdir(parents=True, exist_ok=True)
    demo = Demo(base, rep, keep_base=workdir is not None)
    try:
        with procs.sigterm_interrupts():
            return _demo(demo, mib)
    finally:
        _clean_up(demo, remove_base=workdir is None)


def _demo(demo: Demo, mib: int) -> int:
    rep = demo.rep
    h = testhosts.up()
    rep.progress(f"test hosts: {h.a} ({h.addr_a}) <-> {h.b} ({h.addr_b}), bridges joined by a veth pair")
    rep.progress(f"starting the sample workload on host A: {mib} MiB, 2 threads, a checksum heartbeat every second")
    with testhosts.inside(h.a):
        w = sample.start(demo.base, mib, threads=2, heartbeat=1)
    demo.trees.append(w.pid)
    before = w.request_report()
    _show(rep, "before migrating", before, w)
    lazy_pid, lazy, lazy_run = _migrate_lazily(demo, w)
    same_lazy = _compare(rep, "on B after the lazy migration", before, sample.Workload(lazy_pid, w.log, w.roles))
    eager_pid, eager = _migrate_eagerly(demo, sample.Workload(lazy_pid, w.log, w.roles))
    same_eager = _compare(rep, "on A after the eager migration", before, sample.Workload(eager_pid, w.log, w.roles))
    match = same_lazy and same_eager
    png = _draw_report(demo, lazy_run)
    rep.result(f"time to resume, from the start of the checkpoint:\n"
               f"  live  A -> B  {lazy['resume_s']:.3f} s  (checkpoint {lazy['checkpoint_s']:.3f} s, fetch "
               f"{lazy['fetch_s']:.3f} s, restore {lazy['restore_s']:.3f} s; every page on B "
               f"{lazy['resident_s']:.3f} s later, {lazy['gbps']:.2f} GB/s)\n"
               f"  eager B -> A  {eager['resume_s']:.3f} s  (checkpoint {eager['checkpoint_s']:.3f} s, copy "
               f"{eager['copy_s']:.3f} s, restore {eager['restore_s']:.3f} s)\n"
               f"  the live migration resumed {eager['resume_s'] / max(lazy['resume_s'], 1e-6):.1f}x sooner; "
               f"memory checksums {'match' if match else 'DIFFER'}\n"
               f"  report of the lazy migration (faults, memory placed, fault latency): {png}",
               "summary", match=match, lazy=lazy, eager=eager, report=str(png))
    if not match:
        raise VerificationFailed("memory checksums differ after a migration")
    return 0


def _migrate_lazily(demo: Demo, w: sample.Workload) -> tuple[int, dict[str, float], Path]:
    """The restored root pid, the timings, and the restore's run dir (its progress.jsonl and working set)."""
    rep = demo.rep
    images = demo.base / "a-images"
    rep.progress("live migration A -> B: `lazyrestore migrate` on A (CRIU dumps the metadata and holds the tree "
                 "stopped; lr-pageserver serves its memory), `lazyrestore restore --from` on B")
    port, t0, served_at = _start_migrate(demo, w.pid, images)
    timed = TimedReporter(rep)
    with testhosts.inside(testhosts.HOST_B):
        ls = remote.restore_remote(RemoteSource(f"{testhosts.ADDR_A}:{port}", secret.secret_path(images)),
                                   demo.base / "b-restore", False, LazydOptions(), timed)
    demo.trees.append(ls.pid)
    # Its "listening" event comes just before CRIU's restore starts: the tree runs resume_s later (the "resumed"
    # event follows the tool's fixed liveness wait, not counted on either side).
    started_restore = timed.seen["listening"]
    resume_s = started_restore + ls.resume_s - t0
    _wait_delivered(demo)
    demo.trees.remove(w.pid)  # B has every page: migrate ended the source
    gbps = (ls.drain_bytes + ls.fault_bytes) / max(ls.resident_s or 0.0, 1e-6) / 1e9
    rep.progress(f"resumed on B {resume_s:.3f} s after the checkpoint started; every page there "
                 f"{ls.resident_s:.3f} s later; {ls.faults} faults (p99 {ls.lat_p99_us:.0f} us)")
    return ls.pid, {"resume_s": resume_s, "resident_s": ls.resident_s or 0.0, "gbps": gbps,
                    "checkpoint_s": served_at - t0, "fetch_s": started_restore - served_at,
                    "restore_s": ls.resume_s}, Path(ls.workdir)


def _draw_report(demo: Demo, run_dir: Path) -> Path:
    """`lazyrestore report` of the lazy migration: in its run dir if the demo's dir is kept, else in a new file
    under the temporary directory (the demo's dir is removed at the end)."""
    if demo.keep_base:
        out = run_dir / report.REPORT_NAME
    else:
        fd, name = tempfile.mkstemp(prefix="lazyrestore-demo-report-", suffix=".png")
        os.close(fd)
        out = Path(name)
    return Path(report.report(run_dir, None, out).png)


def _start_migrate(demo: Demo, pid: int, images: Path) -> tuple[int, float, float]:
    """`lazyrestore migrate` on host A in the background; the page server's port, when the checkpoint started (its
    "started" event: the interpreter's start-up is not counted, as in the eager case) and when it was served."""
    cmd = [sys.executable, "-m", "lazyrestore.cli", "migrate", "--pid", str(pid), "--images", str(images),
           "--listen", f"{testhosts.ADDR_A}:0", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            text=True, preexec_fn=testhosts.enter(testhosts.HOST_A))
    demo.servers.append(proc)
    assert proc.stdout is not None
    started = time.monotonic()
    for line in proc.stdout:
        ev = json.loads(line)
        if ev.get("event") == "started":
            started = time.monotonic()
        if ev.get("event") == "listening":  # the source is held stopped until B has every page (then ended)
            return int(ev["port"]), started, time.monotonic()
        if ev.get("event") == "error":
            raise DaemonFailed(f"lazyrestore migrate on host A failed: {ev.get('message')}")
    raise DaemonFailed(f"lazyrestore migrate on host A exited ({proc.wait()}) before serving")


def _wait_delivered(demo: Demo) -> None:
    proc = demo.servers[-1]
    out, _ = proc.communicate(timeout=60)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not any(e.get("event") == "server_delivered" for e in events):
        raise DaemonFailed(f"the page server on A did not report the delivery (exit {proc.returncode})")


def _migrate_eagerly(demo: Demo, w: sample.Workload) -> tuple[int, dict[str, float]]:
    rep = demo.rep
    rep.progress("eager migration B -> A: checkpoint on B, copy of the images to A, restore on A")
    t0 = time.monotonic()
    with testhosts.inside(testhosts.HOST_B):
        checkpoint.checkpoint(w.pid, demo.base / "b-images", False, False, rep)
    demo.trees.remove(w.pid)
    t1 = time.monotonic()
    shutil.copytree(demo.base / "b-images", demo.base / "a-copy")  # the kernel copies (copy_file_range)
    t2 = time.monotonic()
    with testhosts.inside(testhosts.HOST_A):
        s = restore.restore(demo.base / "a-copy", rep)
    demo.trees.append(s.pid)
    t3 = time.monotonic() - SETTLE_S  # the tree ran before the tool's fixed liveness wait
    rep.progress(f"resumed on A {t3 - t0:.3f} s after the checkpoint started, every page already in place")
    return s.pid, {"resume_s": t3 - t0, "checkpoint_s": t1 - t0, "copy_s": t2 - t1, "restore_s": t3 - t2}


def _compare(rep: Reporter, when: str, before: dict[str, sample.Report], restored: sample.Workload) -> bool:
    after = restored.request_report()
    _show(rep, when, after, restored)
    return all(before[r].checksum == after[r].checksum for r in before)


def _show(rep: Reporter, when: str, reports: dict[str, sample.Report], w: sample.Workload) -> None:
    for role, r in sorted(reports.items()):
        rep.result(f"  {when:<32} {role:<5} checksum {r.checksum} ({r.mib} MiB)", "checksum",
                   when=when, role=role, checksum=r.checksum, mib=r.mib)
    beat = w.last_heartbeat()
    if beat:
        rep.progress(f"the workload's last heartbeat: {beat}")


def _clean_up(demo: Demo, remove_base: bool) -> None:
    for proc in demo.servers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `migrate` stops its lr-pageserver
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    for pid in demo.trees:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in demo.trees:
        _wait_gone(pid)
    testhosts.down()
    if remove_base:
        shutil.rmtree(demo.base, ignore_errors=True)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while procs.is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
