"""Eager checkpoint and restore of real process trees, memory verified by checksum."""

from __future__ import annotations

import os
from pathlib import Path

from lazyrestore import procs

from .helpers import checkpoint, restore


def assert_same_memory(before: dict, after: dict) -> None:
    assert set(before) == set(after)
    for role in before:
        assert after[role].checksum == before[role].checksum, f"{role}: memory differs after restore"
        assert after[role].seq > before[role].seq


def test_single_process_round_trip(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=256)
    before = w.request_report()
    summary = checkpoint(w, workdir / "images")
    assert summary["processes"] == 1
    assert summary["lazy_pages"] * summary["page_size"] >= 240 << 20
    assert not procs.is_running(w.pid), "the source must stop after a checkpoint without --leave-running"
    restored = restore(workdir / "images", reaper, w)
    assert procs.is_pidns_init(restored.pid)
    assert_same_memory(before, restored.request_report())


def test_threads_survive(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=256, threads=4)
    before = w.request_report()
    summary = checkpoint(w, workdir / "images")
    assert summary["threads"] == 5
    restored = restore(workdir / "images", reaper, w)
    assert len(os.listdir(f"/proc/{restored.pid}/task")) == 5
    assert_same_memory(before, restored.request_report())


def test_parent_with_children(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=256, children=2)
    before = w.request_report()
    assert len(set(r.checksum for r in before.values())) == 3, "each process must have distinct memory"
    summary = checkpoint(w, workdir / "images")
    assert summary["processes"] == 3
    restored = restore(workdir / "images", reaper, w)
    children = Path(f"/proc/{restored.pid}/task/{restored.pid}/children").read_text().split()
    assert len(children) == 2
    assert_same_memory(before, restored.request_report())


def test_leave_running_then_restore(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=256, threads=1)
    before = w.request_report()
    log_size = w.log.stat().st_size
    checkpoint(w, workdir / "images", "--leave-running")
    assert procs.is_running(w.pid), "--leave-running must keep the source alive"
    assert_same_memory(before, w.request_report())
    os.kill(w.pid, 9)
    # CRIU restores open files at their dump-time size; the source wrote more since.
    os.truncate(w.log, log_size)
    restored = restore(workdir / "images", reaper, w)
    assert_same_memory(before, restored.request_report())


def test_many_restores_of_one_checkpoint(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=64)
    before = w.request_report()
    log_size = w.log.stat().st_size
    checkpoint(w, workdir / "images")
    for _ in range(2):
        restored = restore(workdir / "images", reaper, w)
        assert_same_memory(before, restored.request_report())
        os.kill(restored.pid, 9)
        reaper.kill_all()
        os.truncate(w.log, log_size)
