"""CRIU's documented remote lazy flow for a normal dump, with the plugin loaded: `criu page-server --lazy-pages`
serves the dump's images, `lazyrestore lazy-pages --page-server` (the drop-in for `criu lazy-pages --page-server`)
takes the pages from it, `criu restore --lazy-pages` restores."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lazyrestore import lazyindex, procs, sample

from .helpers import pipe_max_size

CRIU = "/usr/local/sbin/criu"
ENV = {"PATH": "/usr/local/sbin:/usr/bin:/bin"}  # the plugin on: it indexes the dump


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blank_lazy_pages(images: Path, index: lazyindex.LazyIndex) -> int:
    """Zero the lazy pages' bytes in the copy's pages files: only CRIU's page server has them now. Bytes zeroed."""
    zeroed = 0
    for e in index.entries:
        if e.flags & lazyindex.RANGE_LAZY:
            with open(images / f"pages-{e.pages_id}.img", "r+b") as f:
                f.seek(e.offset)
                f.write(bytes(e.nr_pages * index.page_size))
            zeroed += e.nr_pages * index.page_size
    return zeroed


def test_criu_page_server_of_a_normal_dump_serves_lazy_pages(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=64, threads=1)
    before = w.request_report()
    images, copy, work = workdir / "images", workdir / "copy", workdir / "work"
    images.mkdir()
    work.mkdir()
    dump = subprocess.run([CRIU, "dump", "-D", str(images), "-t", str(w.pid), "-o", "dump.log"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert dump.returncode == 0, dump.stderr + (images / "dump.log").read_text()[-2000:]
    index = lazyindex.read(images / "lazyrestore" / "index.bin")  # the plugin's index, with checksums
    assert index.lazy_pages and not any(e.flags & lazyindex.RANGE_UNVERIFIED for e in index.entries)
    shutil.copytree(images, copy)
    assert blank_lazy_pages(copy, index) >= 32 << 20

    port = free_port()
    with pipe_max_size(4 << 20):
        ps = subprocess.run([CRIU, "page-server", "--lazy-pages", "-D", str(images), "--address", "127.0.0.1",
                             "--port", str(port), "-d", "--pidfile", str(workdir / "ps.pid"), "-o", "ps.log"],
                            capture_output=True, text=True, timeout=120, env=ENV)
        assert ps.returncode == 0, ps.stderr + (images / "ps.log").read_text()[-2000:]
    ps_pid = int((workdir / "ps.pid").read_text())
    status_r, status_w = os.pipe()
    daemon = subprocess.Popen([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "--page-server", "--address",
                               "127.0.0.1", "--port", str(port), "-D", str(copy), "-W", str(work), "-o", "lazyd.log",
                               "--status-fd", str(status_w)], pass_fds=(status_w,), stdin=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    os.close(status_w)
    try:
        ready = procs.ready_byte(status_r, 60)  # closes status_r
        if not ready:
            daemon.wait(timeout=30)
            log = work / "lazyd.log"
            raise AssertionError(f"lazy-pages exited {daemon.returncode} before it listened: {daemon.stderr.read()}"
                                 f"{log.read_text() if log.exists() else ''}")
        out = subprocess.run([CRIU, "restore", "-D", str(copy), "-W", str(work), "--lazy-pages", "-d",
                              "--pidfile", str(work / "root.pid"), "-o", "restore.log"],
                             capture_output=True, text=True, timeout=120, env=ENV)
        assert out.returncode == 0, (work / "restore.log").read_text()[-2000:]
        pid = reaper.add(int((work / "root.pid").read_text()))
        assert daemon.wait(timeout=120) == 0, (work / "lazyd.log").read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        try:  # it exits once lr-lazyd closed it; else it waits for a client forever
            os.kill(ps_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log = (work / "lazyd.log").read_text()
    assert f"connected to CRIU's page server 127.0.0.1:{port}" in log
    assert "every page placed" in log and "closed with status 0" in log
    restored = sample.Workload(pid, w.log, w.roles)
    assert restored.request_report()["main"].checksum == before["main"].checksum
