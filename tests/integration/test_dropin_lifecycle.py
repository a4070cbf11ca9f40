"""`lazyrestore lazy-pages` as CRIU's zdtm runs it: a relative images dir, and `--no-drain` with a tree that exits
(issue 16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from lazyrestore import criu

from .helpers import checkpoint


def _start_daemon(cwd: Path, images: str, work: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """`lazyrestore lazy-pages` run from cwd; returns it once it listens, and the read end of its status pipe."""
    status_r, status_w = os.pipe()
    daemon = subprocess.Popen([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "-D", images, "-W", str(work),
                               "--status-fd", str(status_w), "-o", "lazy.log", *extra], pass_fds=(status_w,),
                              cwd=cwd, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    os.close(status_w)
    assert os.read(status_r, 1) == b"\0", "the daemon signals it listens with one NUL byte"
    return daemon, status_r


def _criu_restore(images: Path, work: Path) -> int:
    out = subprocess.run([criu.find_criu().path, "restore", "-D", str(images), "-W", str(work), "--lazy-pages", "-d",
                          "--pidfile", str(work / "root.pid"), "-o", "restore.log"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (work / "restore.log").read_text()[-2000:]
    return int((work / "root.pid").read_text())


def test_relative_images_dir_stores_the_working_set(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=64)
    (workdir / "dump").mkdir()
    checkpoint(w, workdir / "dump" / "x")
    work = workdir / "work"
    work.mkdir()
    wset = workdir / "dump" / "x" / "lazyrestore" / "workingset"
    assert not wset.exists()
    daemon, status_r = _start_daemon(workdir, "dump/x", work)
    try:
        reaper.add(_criu_restore(workdir / "dump" / "x", work))
        assert daemon.wait(timeout=120) == 0, (work / "lazy.log").read_text()
    finally:
        os.close(status_r)
        if daemon.poll() is None:
            daemon.kill()
    log = (work / "lazy.log").read_text()
    assert "every page placed" in log
    assert "not stored" not in log, log
    assert "working set stored in" in log, log
    assert wset.stat().st_size > 0


def test_no_drain_daemon_exits_when_the_tree_exits(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=64)
    checkpoint(w, workdir / "images")
    work = workdir / "work"
    work.mkdir()
    daemon, status_r = _start_daemon(workdir, str(workdir / "images"), work, "--no-drain")
    try:
        pid = reaper.add(_criu_restore(workdir / "images", work))
        assert f"(host pid {pid})" in (work / "lazy.log").read_text(), "the pidfd watched is the restored root's"
        os.kill(pid, signal.SIGKILL)
        rc = daemon.wait(timeout=10)  # the daemon and its guardian: the guardian exits with the daemon's status
        assert rc == 0, (work / "lazy.log").read_text()
    finally:
        os.close(status_r)
        if daemon.poll() is None:
            daemon.kill()
    log = (work / "lazy.log").read_text()
    assert "the restored tree is gone" in log, log
    assert "guardian" not in log, log
