"""`criu dump --lazy-pages --ps-socket` as a live migration drives it (livedump.LiveDump): CRIU dumps the metadata
and holds the tree stopped; PS_IOV_CLOSE ends the migration (the tree is killed), an unknown command rolls it
back (the tree runs on, its memory unchanged), and our end closing without a word lets CRIU kill the tree."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from lazyrestore import checkpoint, criu, lazyindex, livedump, livetree, procs
from lazyrestore.errors import CriuRefused
from lazyrestore.images import read_pagemap, read_pstree


def state(pid: int) -> str:
    return procs.status_fields(pid).get("State", "?")[:1]


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while procs.is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not procs.is_running(pid)


def stopped_dump(start_workload, workdir: Path, children: int = 0):
    w = start_workload(mib=64, children=children)
    before = w.request_report()
    images = workdir / "images"
    images.mkdir()
    dump = livedump.LiveDump(criu.find_criu(), w.pid, images)
    dump.wait_ready(120)
    return w, before, images, dump


def test_the_tree_is_held_stopped_and_its_lazy_pages_are_not_written(start_workload, workdir: Path) -> None:
    w, _, images, dump = stopped_dump(start_workload, workdir, children=1)
    try:
        assert state(w.pid) == "t", "CRIU holds the tree in ptrace-stop while it waits"
        tree = read_pstree(images)
        lazy = sum(pe.nr_pages for p in tree for pe in (read_pagemap(images, p.pid) or ()).entries
                   if pe.lazy and not pe.present)
        assert lazy * 4096 >= 64 << 20, "the workload's memory is left lazy"
        written = sum(f.stat().st_size for f in images.glob("pages-*.img"))
        assert written < 8 << 20, f"{written} bytes of pages written: the lazy pages must stay in the tree"
        pids = livetree.host_pids(w.pid, [p.pid for p in tree])
        assert len(pids) == 2 and pids[1] == w.pid and all(procs.is_running(h) for h in pids.values())
        path = livetree.write_pid_map(images, pids)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().splitlines()[0] == f"1 {w.pid}"
    finally:
        dump.rollback()


def test_a_rollback_resumes_the_tree_with_its_memory_unchanged(start_workload, workdir: Path) -> None:
    w, before, _, dump = stopped_dump(start_workload, workdir)
    dump.rollback()
    assert dump.proc.returncode == 1 and state(w.pid) != "t"
    after = w.request_report()
    assert after["main"].checksum == before["main"].checksum


def test_finish_ends_criu_and_the_source_tree(start_workload, workdir: Path) -> None:
    w, _, _, dump = stopped_dump(start_workload, workdir)
    dump.finish()
    assert dump.proc.returncode == 0
    assert wait_gone(w.pid), "after the migration the source tree is killed"


def test_our_end_closing_lets_criu_kill_the_tree(start_workload, workdir: Path) -> None:
    w, _, _, dump = stopped_dump(start_workload, workdir)
    dump.abandon()
    assert dump.proc.returncode == 0 and wait_gone(w.pid)


def test_a_refused_dump_is_named_and_the_tree_runs_on(workdir: Path, reaper) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])  # its session leader is outside the tree: CRIU refuses it
    reaper.add(sleeper.pid)
    (workdir / "images").mkdir()
    dump = livedump.LiveDump(criu.find_criu(), sleeper.pid, workdir / "images")
    with pytest.raises(CriuRefused, match="session leader"):
        dump.wait_ready(60)
    assert procs.is_running(sleeper.pid) and state(sleeper.pid) != "t"


def test_a_live_index_leaves_lazy_ranges_to_the_tree_and_checksums_the_eager_ones(start_workload,
                                                                                    workdir: Path) -> None:
    w, _, images, dump = stopped_dump(start_workload, workdir)
    try:
        m = checkpoint.write_metadata(images, criu.find_criu(), w.pid, live=True)
        index = lazyindex.read(images / "lazyrestore" / "index.bin")
        live = [e for e in index.entries if e.flags & lazyindex.RANGE_LIVE]
        eager = [e for e in index.entries if not e.lazy]
        assert sum(e.nr_pages for e in live) * index.page_size >= 48 << 20 and m.lazy_pages == index.lazy_pages
        assert all(e.flags == lazyindex.RANGE_LAZY | lazyindex.RANGE_LIVE and set(e.checksums) == {0}
                   and e.pages_id == 0 and e.offset == 0 for e in live)
        assert eager and all(any(e.checksums) for e in eager), "eager ranges are in pages files: checksummed"
        with open(f"/proc/{w.pid}/mem", "rb") as mem:  # a live range's bytes are the stopped tree's memory
            e = max(live, key=lambda e: e.nr_pages)
            mem.seek(e.start)
            assert len(mem.read(e.nr_pages * index.page_size)) == e.nr_pages * index.page_size
        assert m.lazy_view, "the lazy view CRIU restores from is written as for any checkpoint"
    finally:
        dump.rollback()
