"""CRIU's documented remote lazy flow for a normal dump, with the plugin loaded: `criu page-server --lazy-pages`
serves the dump's images, `lazyrestore lazy-pages --page-server` (the drop-in for `criu lazy-pages --page-server`)
takes the pages from it, `criu restore --lazy-pages` restores."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


def normal_dump(start_workload, workdir: Path) -> tuple[sample.Workload, dict, lazyindex.LazyIndex]:
    """A workload dumped by plain `criu dump` into workdir/images (the plugin indexes it), and copied to
    workdir/copy without its lazy pages' bytes. (workload, its report before, the index)"""
    w = start_workload(mib=64, threads=1)
    before = w.request_report()
    images = workdir / "images"
    images.mkdir()
    dump = subprocess.run([CRIU, "dump", "-D", str(images), "-t", str(w.pid), "-o", "dump.log"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert dump.returncode == 0, dump.stderr + (images / "dump.log").read_text()[-2000:]
    index = lazyindex.read(images / "lazyrestore" / "index.bin")  # the plugin's index, with checksums
    assert index.lazy_pages and not any(e.flags & lazyindex.RANGE_UNVERIFIED for e in index.entries)
    shutil.copytree(images, workdir / "copy")
    assert blank_lazy_pages(workdir / "copy", index) >= 32 << 20
    return w, before, index


def serve_and_restore(workdir: Path, served: Path, reaper, *extra: str,
                      restored: Callable[[int], object] = lambda pid: None,
                      pipe_max: int = 4 << 20, must_restore: bool = True) -> tuple[int, int | None, str]:
    """`criu page-server --lazy-pages -D SERVED`, `lazyrestore lazy-pages --page-server ... -D workdir/copy EXTRA`
    and `criu restore --lazy-pages -D workdir/copy`, then restored(root pid). (lazy-pages' exit code, the restored
    root pid, its log)"""
    # CRIU's page server makes its 4 MiB pipe when lr-lazyd connects, not when it starts (a smaller
    # fs.pipe-max-size then makes it fail every read, "splice: Bad file descriptor"): raised for the whole run.
    with pipe_max_size(pipe_max):
        return _serve_and_restore(workdir, served, reaper, extra, restored, must_restore)


def _serve_and_restore(workdir: Path, served: Path, reaper, extra: tuple[str, ...],
                       restored: Callable[[int], object], must_restore: bool) -> tuple[int, int | None, str]:
    copy, work = workdir / "copy", workdir / "work"
    work.mkdir()
    port = free_port()
    ps = subprocess.run([CRIU, "page-server", "--lazy-pages", "-D", str(served), "--address", "127.0.0.1",
                         "--port", str(port), "-d", "--pidfile", str(workdir / "ps.pid"), "-o", "ps.log", "-v4"],
                        capture_output=True, text=True, timeout=120, env=ENV)
    assert ps.returncode == 0, ps.stderr + (served / "ps.log").read_text()[-2000:]
    ps_pid, pid = int((workdir / "ps.pid").read_text()), None
    status_r, status_w = os.pipe()
    daemon = subprocess.Popen([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "--page-server", "--address",
                               "127.0.0.1", "--port", str(port), "-D", str(copy), "-W", str(work), "-o", "lazyd.log",
                               "--status-fd", str(status_w), *extra], pass_fds=(status_w,), stdin=subprocess.DEVNULL,
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
        assert out.returncode == 0 or not must_restore, (work / "restore.log").read_text()[-2000:]
        if out.returncode == 0:
            pid = reaper.add(int((work / "root.pid").read_text()))
            restored(pid)
        code = daemon.wait(timeout=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        try:  # it exits once lr-lazyd closed it; else it waits for a client forever
            os.kill(ps_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code, pid, (work / "lazyd.log").read_text()


def test_criu_page_server_of_a_normal_dump_serves_lazy_pages(start_workload, workdir: Path, reaper) -> None:
    w, before, _ = normal_dump(start_workload, workdir)
    code, pid, log = serve_and_restore(workdir, workdir / "images", reaper)
    assert code == 0, log
    assert "connected to CRIU's page server 127.0.0.1:" in log
    assert "every page placed" in log and "closed with status 0" in log
    assert re.search(r"[1-9]\d* blocks verified", log), log  # the plugin's checksums, checked as pages arrive
    restored = sample.Workload(pid, w.log, w.roles)
    assert restored.request_report()["main"].checksum == before["main"].checksum


def test_criu_page_server_serving_other_bytes_is_caught(start_workload, workdir: Path, reaper) -> None:
    """The page server serves a copy of the dump with one lazy byte changed: lr-lazyd stops (the tree is killed)
    naming the pages, instead of placing bytes that do not match the index."""
    _, _, index = normal_dump(start_workload, workdir)
    served = workdir / "served"
    shutil.copytree(workdir / "images", served)
    e = max((e for e in index.entries if e.flags & lazyindex.RANGE_LAZY), key=lambda e: e.nr_pages)
    with open(served / f"pages-{e.pages_id}.img", "r+b") as f:
        f.seek(e.offset + (e.nr_pages - 1) * index.page_size + 7)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    # --no-drain: the bad page is asked for only when the workload reads all its memory for a report, after CRIU's
    # restore has returned (a daemon failing while CRIU still restores makes CRIU fail or hang)
    code, pid, log = serve_and_restore(workdir, served, reaper, "--no-drain",
                                       restored=lambda pid: os.killpg(pid, signal.SIGUSR1))
    assert code != 0, log
    assert "do not match the index's checksum" in log and f"of pid {e.pid} at" in log, log
    deadline = time.monotonic() + 10
    while pid is not None and procs.is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid is not None and not procs.is_running(pid), "the guardian kills the tree"


def test_a_page_server_without_its_pipe_size_is_named(start_workload, workdir: Path, reaper) -> None:
    """fs.pipe-max-size left at 1 MiB: CRIU's page server fails every read and hangs up; lr-lazyd's error says why."""
    normal_dump(start_workload, workdir)
    # The first page may be asked for while CRIU still restores (then the restore fails) or after it, when the
    # workload reads its memory (--no-drain): either way lr-lazyd fails naming the cause.
    code, pid, log = serve_and_restore(workdir, workdir / "images", reaper, "--no-drain",
                                       restored=lambda pid: os.killpg(pid, signal.SIGUSR1), pipe_max=1 << 20,
                                       must_restore=False)
    assert code != 0, log
    assert "closed the connection" in log and "fs.pipe-max-size here is below the 4 MiB" in log, log
