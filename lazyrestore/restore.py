"""`lazyrestore restore`: verify a checkpoint, then restore it through CRIU's RPC."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pycriu

from . import criu, criuopts, manifest, procs, veths
from .criuopts import CriuOptions
from .errors import CriuFailed, ProcessError, UsageError
from .images import connection_options, read_pstree
from .output import Reporter
from .verify import verify_checkpoint
from .layout import RESTORE_LOG, RUNS_DIR

# How long a restored root must stay alive before restore reports success.
SETTLE_S = 0.2


@dataclass(frozen=True)
class RestoreSummary:
    """What `restore` reports. pid is the restored root's pid on this host."""

    images_dir: str
    checkpoint_id: str
    pid: int
    processes: int
    verify_s: float
    restore_s: float
    log: str


def new_run_dir(images_dir: Path, workdir: Path | None) -> Path:
    """CRIU's work dir for one restore: its log, and lazy-pages.socket for a lazy one.

    By default a new DIR/lazyrestore/runs/restore-TIME-XXXX; the images themselves stay untouched.
    """
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir
    runs = images_dir / manifest.META_DIR / RUNS_DIR
    runs.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"restore-{time.strftime('%Y%m%d-%H%M%S')}-", dir=runs))


def check_pids_free(images_dir: Path) -> None:
    """A tree dumped in the host pid namespace needs its pids free on this host."""
    tree = read_pstree(images_dir)
    if tree[0].pid == 1:
        return
    busy = [p.pid for p in tree if procs.is_running(p.pid)]
    if busy:
        raise ProcessError(f"the checkpoint was taken in the host pid namespace and pids {busy} are in use here; "
                           f"stop those processes or restore on another host")


def criu_options_for(images_dir: Path, m: manifest.Manifest, extra: CriuOptions) -> CriuOptions:
    """The options a restore of m runs CRIU with: those it was dumped with (recorded, or read from the images
    when a runtime's CRIU dumped them), plus the command line's; every bridge a veth is to join must exist here."""
    established, closed = connection_options(images_dir)
    dumped = CriuOptions(tcp_close=True) if closed else CriuOptions(tcp_established=established)
    recorded = m.criu_options.merged(dumped)
    if extra.tcp_close:  # CRIU's restore --tcp-close: connections dumped open come back closed
        recorded = replace(recorded, tcp_established=False)
    options = recorded.merged(extra)
    missing = veths.missing_bridges(options.external)
    if missing:
        wanted = [e for e in options.external if e.rsplit("@", 1)[-1] in missing]
        raise UsageError(f"the checkpoint's network namespace joins bridge {', '.join(missing)} ({', '.join(wanted)}), "
                         f"which does not exist here: create it (ip link add NAME type bridge; ip link set NAME up) "
                         f"with a route to the service's address, or name another with --external "
                         f"veth[IFNAME]:OUTER@BRIDGE")
    return options


def run_restore(binary: criu.CriuBinary, images_dir: Path, log: Path, lazy: bool = False,
                options: CriuOptions = CriuOptions()) -> int:
    """One CRIU restore through RPC; the tree becomes our child; returns its root pid.

    With lazy, CRIU leaves lazy pages missing and hands each task's userfaultfd to the
    daemon listening on lazy-pages.socket in the log's directory (CRIU's work dir).
    """
    client = pycriu.criu()
    client.use_binary(binary.path)
    dir_fd = os.open(images_dir, os.O_DIRECTORY)
    work_fd = os.open(log.parent, os.O_DIRECTORY)
    try:
        client.opts.images_dir_fd = dir_fd
        client.opts.work_dir_fd = work_fd
        client.opts.log_file = log.name
        client.opts.log_level = binary.log_level
        client.opts.rst_sibling = True
        client.opts.lazy_pages = lazy
        criuopts.apply(options, client.opts)
        return client.restore().pid
    except pycriu.CRIUException as exc:
        raise criu.failure("restore", exc, log) from exc
    finally:
        os.close(dir_fd)
        os.close(work_fd)


def wait_running(pid: int, log: Path) -> None:
    """The restored root must be alive (not a zombie) a moment after CRIU returns."""
    time.sleep(SETTLE_S)
    if not procs.is_running(pid):
        raise CriuFailed("restore", f"restored root pid {pid} exited right after restore", str(log),
                         criu.log_excerpt(log))


def restore(images_dir: Path, reporter: Reporter, extra: CriuOptions = CriuOptions()) -> RestoreSummary:
    procs.require_root()
    binary = criu.find_criu()
    reporter.progress(f"verifying checkpoint {images_dir} (manifest, images, index, page checksums)")
    t0 = time.monotonic()
    m = verify_checkpoint(images_dir, pages=True)
    check_pids_free(images_dir)
    options = criu_options_for(images_dir, m, extra)
    t1 = time.monotonic()
    reporter.event("verified", checkpoint_id=m.checkpoint_id, seconds=round(t1 - t0, 6))
    log = new_run_dir(images_dir, None) / RESTORE_LOG
    reporter.progress(f"restoring {m.processes} process(es) with criu {binary.version}; log {log}")
    pid = run_restore(binary, images_dir, log, options=options)
    wait_running(pid, log)
    t2 = time.monotonic()
    return RestoreSummary(str(images_dir), m.checkpoint_id, pid, m.processes, t1 - t0, t2 - t1, str(log))


def summary_text(s: RestoreSummary) -> str:
    return (f"restored checkpoint {s.checkpoint_id}: root pid {s.pid} ({s.processes} process(es))\n"
            f"  verify {s.verify_s:.3f} s, restore {s.restore_s:.3f} s; log {s.log}")
