"""`lazyrestore lazy-pages` as a drop-in for `criu lazy-pages`, driven by CRIU's own CLI (runc's flow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lazyrestore import criu, sample

from .helpers import checkpoint


def test_criu_cli_restores_through_lazy_pages(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=128, threads=1)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    work = workdir / "work"
    work.mkdir()
    status_r, status_w = os.pipe()
    daemon = subprocess.Popen([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "-D", str(workdir / "images"),
                               "-W", str(work), "--status-fd", str(status_w), "-o", "lazy.log"], pass_fds=(status_w,))
    os.close(status_w)
    try:
        assert os.read(status_r, 1) == b"\0", "the daemon signals it listens with one NUL byte"
        out = subprocess.run([criu.find_criu().path, "restore", "-D", str(workdir / "images"), "-W", str(work),
                              "--lazy-pages", "-d", "--pidfile", str(work / "root.pid"), "-o", "restore.log"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (work / "restore.log").read_text()[-2000:]
        pid = reaper.add(int((work / "root.pid").read_text()))
        assert daemon.wait(timeout=120) == 0, (work / "lazy.log").read_text()
    finally:
        os.close(status_r)
        if daemon.poll() is None:
            daemon.kill()
    assert "every page placed" in (work / "lazy.log").read_text()
    restored = sample.Workload(pid, w.log, w.roles)
    assert restored.request_report()["main"].checksum == before["main"].checksum


def test_lazy_pages_rejects_bad_options(workdir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "-D", str(workdir),
                          "--fault-around", "3000"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--fault-around" in out.stderr and "power of two" in out.stderr


def test_lazy_pages_names_a_missing_index(workdir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "-D", str(workdir), "--no-guard"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "lazyrestore/index.bin" in out.stderr
