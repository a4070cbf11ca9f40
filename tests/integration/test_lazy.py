"""Lazy restore from local images with lr-lazyd: real CRIU, real faults, every byte verified.

The daemon under test is the ASan/UBSan build (LazyRun sets LAZYRESTORE_SANITIZED).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lazyrestore import lazyindex, procs, sample, workingset

from .helpers import LazyRun, checkpoint, run_cli
from .migration import finished as assert_done

SLOW_DRAIN = ("--drain-rate", "48M")  # keeps the drain running while the test acts


def lazy_restore(images: Path, reaper, w: sample.Workload, *extra: str) -> tuple[LazyRun, sample.Workload]:
    run = LazyRun(images, *extra)
    restored = sample.Workload(reaper.add(run.pid), w.log, w.roles)
    return run, restored


def test_one_gib_resumes_and_every_byte_arrives(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=1024)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w)
    summary = assert_done(run)
    assert summary["drain_bytes"] + summary["fault_bytes"] >= (1024 << 20) * 15 // 16
    assert summary["resume_s"] < 30
    after = restored.request_report()
    assert after["main"].checksum == before["main"].checksum
    assert restored.request_verify() == {"main": "ok"}


def test_threads_touch_memory_during_the_drain(start_workload, workdir: Path, reaper) -> None:
    w = sample.start(workdir, 256, threads=2, scanners=4)
    reaper.add(w.pid)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w, *SLOW_DRAIN)
    during = restored.request_report()
    summary = assert_done(run)
    assert summary["faults"] > 0, "the scanners must have faulted on missing pages"
    assert during["main"].checksum == before["main"].checksum
    assert restored.request_verify() == {"main": "ok"}
    scans = [ln for ln in w.lines() if ln.startswith("scan ") and "ok" in ln]
    assert scans and not w.bad_lines()


def test_fork_after_restore_and_children(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=256, children=1)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w, *SLOW_DRAIN)
    assert restored.op("fork") == "op fork done"
    assert restored.op("fork") == "op fork done"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum("role=fork" in ln and " ok " in ln for ln in w.lines()) < 2:
        time.sleep(0.05)
    forks = [ln for ln in w.lines() if ln.startswith("verify role=fork")]
    assert len(forks) == 2 and all(" ok " in ln for ln in forks), forks
    summary = assert_done(run)
    assert summary["faults"] > 0
    after = restored.request_report()
    assert {r: after[r].checksum for r in after} == {r: before[r].checksum for r in before}
    assert not w.bad_lines()


@pytest.mark.parametrize("ops", [("dontneed", "munmap", "mremap"), ("mremap", "dontneed", "kwrite", "munmap")])
def test_layout_changes_during_the_drain(start_workload, workdir: Path, reaper, ops: tuple[str, ...]) -> None:
    w = sample.start(workdir, 256, scanners=2)
    reaper.add(w.pid)
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w, *SLOW_DRAIN)
    for op in ops:
        line = restored.op(op)
        assert line.startswith(f"op {op} done") and "BAD" not in line, line
        assert restored.request_verify() == {"main": "ok"}
    summary = assert_done(run)
    assert summary["resident_s"] > 0
    assert restored.request_verify() == {"main": "ok"}
    assert not w.bad_lines()


def test_kernel_reads_a_lazy_buffer(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=128)
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w, "--drain-rate", "16M")
    assert restored.op("kwrite") == "op kwrite done ok"
    assert_done(run)
    assert restored.request_verify() == {"main": "ok"}


def kill_daemon_mid_drain(w: sample.Workload, images: Path, reaper, *extra: str,
                          env: dict[str, str] | None = None) -> tuple[LazyRun, sample.Workload]:
    """Lazy restore with a slow drain; SIGKILL lr-lazyd while pages are missing, then make the tree read them."""
    run = LazyRun(images, "--drain-rate", "16M", *extra, env=env)
    restored = sample.Workload(reaper.add(run.pid), w.log, w.roles)
    deadline = time.monotonic() + 30
    status: dict = {}
    while time.monotonic() < deadline and not status.get("left_bytes"):
        try:
            status = json.loads((run.workdir / "status.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
    assert status.get("left_bytes", 0) > 0, "the drain must still be running when the daemon is killed"
    os.kill(status["daemon_pid"], signal.SIGKILL)
    os.killpg(restored.pid, signal.SIGUSR1)  # the report reads every page, missing ones included
    return run, restored


def wrong_reports(w: sample.Workload, expected: str) -> list[sample.Report]:
    return [r for r in w.reports() if r.checksum != expected]


def test_daemon_killed_mid_drain_kills_the_tree(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=256, threads=1)
    before = w.request_report()
    log_size = w.log.stat().st_size
    checkpoint(w, workdir / "images")
    run, restored = kill_daemon_mid_drain(w, workdir / "images", reaper)
    res = run.finish()
    assert res.code == 10, res.stderr
    assert "killed the restored tree" in res.last("error")["message"]
    deadline = time.monotonic() + 10
    while procs.is_running(restored.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs.is_running(restored.pid), "the tree must not run on without its pages"
    time.sleep(0.5)
    assert not wrong_reports(w, before["main"].checksum), "a process saw wrong memory"
    # Nothing lost: the same checkpoint restores again, every byte right.
    os.truncate(w.log, log_size)
    run2, again = lazy_restore(workdir / "images", reaper, w)
    assert_done(run2)
    assert again.request_report()["main"].checksum == before["main"].checksum


def test_without_the_guardian_a_killed_daemon_means_zero_pages(start_workload, workdir: Path, reaper) -> None:
    """The hazard the guardian exists for (CRIU's own daemon has it): this test shows the check above can fail."""
    w = start_workload(mib=256)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    run, restored = kill_daemon_mid_drain(w, workdir / "images", reaper,
                                          env={"LAZYRESTORE_LAZYD_ARGS": "--no-guard"})
    deadline = time.monotonic() + 30
    while not wrong_reports(w, before["main"].checksum) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wrong_reports(w, before["main"].checksum), "without a guardian the tree reads zero pages"
    assert procs.is_running(restored.pid)
    os.kill(restored.pid, signal.SIGKILL)
    assert run.finish().code != 0


def test_corrupt_page_data_is_never_placed(start_workload, workdir: Path, reaper) -> None:
    w = sample.start(workdir, 64, scanners=2)
    reaper.add(w.pid)
    checkpoint(w, workdir / "images")
    pages = workdir / "images" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[len(data) // 3] ^= 0xFF
    pages.write_bytes(bytes(data))
    run = LazyRun(workdir / "images")
    if any(e["event"] == "resumed" for e in run.events):
        reaper.add(run.pid)
    res = run.finish()
    assert res.code == 10, res.stderr
    message = res.last("error")["message"]
    assert "pages-1.img" in message and "checksum" in message
    time.sleep(0.5)
    assert not w.bad_lines(), "corrupt bytes reached the process"
    if any(e["event"] == "resumed" for e in run.events):
        assert not procs.is_running(run.pid)


def test_detach_and_status(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=128)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    res = run_cli("restore", "--images", str(workdir / "images"), "--lazy", "--detach", "--drain-rate", "64M")
    assert res.code == 0, res.stderr
    summary = res.last("summary")
    pid = reaper.add(summary["pid"])
    assert summary["detached"] is True
    first = run_cli("status", "--images", str(workdir / "images"))
    assert first.code == 0 and first.last("status")["state"] in ("running", "done")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = run_cli("status", "--workdir", summary["workdir"]).last("status")
        if st["state"] != "running":
            break
        time.sleep(0.2)
    assert st["state"] == "done" and st["left_bytes"] == 0
    restored = sample.Workload(pid, w.log, w.roles)
    assert restored.request_report()["main"].checksum == before["main"].checksum


def test_many_lazy_restores_of_one_checkpoint(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=64)
    before = w.request_report()
    log_size = w.log.stat().st_size
    checkpoint(w, workdir / "images")
    manifest_before = (workdir / "images" / "lazyrestore" / "manifest.json").read_text()
    for _ in range(3):
        run, restored = lazy_restore(workdir / "images", reaper, w)
        assert_done(run)
        assert restored.request_report()["main"].checksum == before["main"].checksum
        reaper.kill_all()
        os.truncate(w.log, log_size)
    assert run_cli("inspect", "--images", str(workdir / "images")).last("report")["consistent"]
    assert (workdir / "images" / "lazyrestore" / "manifest.json").read_text() == manifest_before


def test_opening_a_pages_file_for_writing_stops_the_restore(start_workload, workdir: Path, reaper) -> None:
    """lr-lazyd copies from a leased mapping: a writer showing up must stop it, never slip bytes past the checks."""
    w = start_workload(mib=128)
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w, "--drain-rate", "8M")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (run.workdir / "status.json").exists():
        time.sleep(0.01)
    writer_done = []

    def open_for_writing() -> None:  # blocks until the lease holder lets go
        with open(workdir / "images" / "pages-1.img", "r+b"):
            writer_done.append(time.monotonic())

    import threading
    t = threading.Thread(target=open_for_writing)
    t.start()
    res = run.finish(timeout=120)
    t.join(timeout=120)
    assert res.code == 10, res.stderr
    assert "opened for writing" in res.last("error")["message"]
    assert writer_done, "the writer got its file once the daemon stopped"
    assert not procs.is_running(restored.pid)
    assert not w.bad_lines()


def test_criu_restores_from_the_lazy_view(start_workload, workdir: Path, reaper) -> None:
    """CRIU reads the view's merged pagemap (one entry per lazy VMA part) through links in the work dir."""
    from lazyrestore.images import load_image

    w = start_workload(mib=64)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    images = workdir / "images"
    original = load_image(images / "pagemap-1.img")
    view = load_image(images / "lazyrestore" / "view-pagemap-1.img")
    assert len(view) * 20 < len(original), (len(view), len(original))
    run, restored = lazy_restore(images, reaper, w)
    assert_done(run)
    links = run.workdir / "criu-images"
    assert os.readlink(links / "pagemap-1.img") == str((images / "lazyrestore" / "view-pagemap-1.img").resolve())
    assert os.readlink(links / "core-1.img") == str((images / "core-1.img").resolve())
    assert restored.request_report()["main"].checksum == before["main"].checksum
    assert restored.request_verify() == {"main": "ok"}


def test_checkpoint_without_a_view_restores_lazily(start_workload, workdir: Path, reaper) -> None:
    """Checkpoints made before the view existed have no lazy_view: CRIU reads the images themselves."""
    w = start_workload(mib=64)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    meta = workdir / "images" / "lazyrestore"
    raw = json.loads((meta / "manifest.json").read_text())
    for f in raw.pop("lazy_view"):
        (workdir / "images" / f["name"]).unlink()
    (meta / "manifest.json").write_text(json.dumps(raw))
    run, restored = lazy_restore(workdir / "images", reaper, w)
    assert_done(run)
    assert not (run.workdir / "criu-images").exists()
    assert restored.request_report()["main"].checksum == before["main"].checksum


def test_daemon_exits_once_the_last_page_is_placed(start_workload, workdir: Path, reaper) -> None:
    """Not at the next progress tick: with a 60 s period the restore must still end at once.
    (lr-lazyd used to sleep until the next tick after placing the last page.)"""
    w = start_workload(mib=64)
    before = w.request_report()
    checkpoint(w, workdir / "images")
    run = LazyRun(workdir / "images", env={"LAZYRESTORE_LAZYD_ARGS": "--stats-interval 60000"})
    restored = sample.Workload(reaper.add(run.pid), w.log, w.roles)
    t0 = time.monotonic()
    summary = assert_done(run)
    assert time.monotonic() - t0 < 30, "lr-lazyd waited for its progress tick after the last page"
    assert summary["resident_s"] < 30
    assert restored.request_report()["main"].checksum == before["main"].checksum


def test_the_faults_of_a_restore_are_recorded_as_its_working_set(start_workload, workdir: Path, reaper) -> None:
    """lr-lazyd writes the faulted pages, in order, as checkpoint addresses, once every page is placed."""
    w = start_workload(mib=64)
    checkpoint(w, workdir / "images")
    run, restored = lazy_restore(workdir / "images", reaper, w, *SLOW_DRAIN)
    restored.request_report()  # reads all 64 MiB: faults on the pages the drain has not placed yet
    summary = assert_done(run)
    index = lazyindex.read(workdir / "images" / "lazyrestore" / "index.bin")
    profile = workingset.read(run.workdir / workingset.FILE_NAME, index)
    assert profile.faults, summary
    assert len(profile.faults) <= profile.faults_seen <= summary["faults"]
    assert (profile.max_faults, profile.max_ms) == (65536, 30000)
    times = [f.t_us for f in profile.faults]
    assert times == sorted(times), "faults are recorded in the order they were read"
    assert len({f.addr for f in profile.faults}) == len(profile.faults), "a page faults once, then it is placed"


def test_a_damaged_or_foreign_working_set_is_refused(tmp_path: Path) -> None:
    index = lazyindex.LazyIndex(4096, 65536, 1, b"\x01" * 16, (
        lazyindex.IndexEntry(1, lazyindex.RANGE_LAZY, 0x10000, 4, 1, 0),))
    good = workingset.HEADER.pack(workingset.MAGIC, 2, 4096, b"\x01" * 16, 1, 1, 10, 1000, 1, 0) + \
        workingset.ENTRY.pack(5, 0, 0x11000, 1, 1)
    path = tmp_path / "ws"
    path.write_bytes(good)
    assert workingset.read(path, index).faults == (workingset.Fault(5, 0, 0x11000),)
    cases = {
        "short": (good[:30], "shorter than its"),
        "truncated": (good[:-1], "for 1 entries"),
        "version": (good[:8] + b"\x01" + good[9:], "not a version 2"),
        "foreign": (good[:16] + b"\x02" * 16 + good[32:], "another checkpoint"),
        "outside": (good[:-16] + (0x20000).to_bytes(8, "little") + good[-8:], "not a lazy page"),
        "unaligned": (good[:-16] + (0x11001).to_bytes(8, "little") + good[-8:], "not a lazy page"),
        "no hits": (good[:-8] + bytes(8), "entry 0 is damaged"),
    }
    for name, (data, expected) in cases.items():
        path.write_bytes(data)
        with pytest.raises(workingset.BadProfile, match=expected):
            workingset.read(path, index)


def restore_and_read(images: Path, reaper, w: sample.Workload, before: dict, *extra: str) -> dict:
    """A lazy restore that reads all memory at once (faults where the drain has not been), checked, then killed.
    The workload's log is cut back to its size at the checkpoint first (CRIU checks it)."""
    os.truncate(w.log, before["log_size"])
    run, restored = lazy_restore(images, reaper, w, *SLOW_DRAIN, *extra)
    after = restored.request_report()
    summary = assert_done(run)
    assert after["main"].checksum == before["main"].checksum, "a restored byte differs"
    assert restored.request_verify() == {"main": "ok"}
    reaper.kill_all()
    return {**summary, "warnings": [e["message"] for e in run.events if e.get("event") == "warning"]}


def checkpointed(w: sample.Workload, images: Path) -> tuple[sample.Workload, dict, lazyindex.LazyIndex]:
    """w checkpointed into images: its report (and log size) then, and the checkpoint's lazy index."""
    before = w.request_report()
    checkpoint(w, images)
    before["log_size"] = w.log.stat().st_size
    return w, before, lazyindex.read(images / "lazyrestore" / "index.bin")


def test_the_working_set_is_stored_beside_the_checkpoint_and_placed_first_next_time(
        start_workload, workdir: Path, reaper) -> None:
    images = workdir / "images"
    w, before, index = checkpointed(start_workload(mib=64), images)
    stored = images / workingset.STORED

    first = restore_and_read(images, reaper, w, before)
    assert first["prefetch_restores"] == 0 and first["prefetch_bytes"] == 0 and not first["warnings"]
    assert first["near_bytes"] > 0, "the drain goes on from where the tree faulted"
    one = workingset.read(stored, index)
    assert one.restores == 1 and one.faults_seen == len(one.faults) > 0, "every fault within the bounds is kept"

    second = restore_and_read(images, reaper, w, before)
    assert second["prefetch_restores"] == 1, second
    assert second["prefetch_bytes"] >= 40 << 20, "most of what the first restore faulted on is placed up front"
    assert second["data_faults"] * 5 <= first["data_faults"], (first["data_faults"], second["data_faults"])
    two = workingset.read(stored, index)
    assert two.restores == 2
    assert {f.addr for f in one.faults} <= {f.addr for f in two.faults}, "pages placed ahead stay in the set"

    off = restore_and_read(images, reaper, w, before, "--prefetch", "off")
    assert off["prefetch_bytes"] == 0 and off["data_faults"] > second["data_faults"] * 5, \
        (off["data_faults"], second["data_faults"])


def test_a_damaged_stale_or_foreign_working_set_is_ignored_with_a_warning(start_workload, workdir: Path,
                                                                          reaper) -> None:
    """Whatever the stored working set holds, every byte restored is right; a bad one is named and replaced."""
    images = workdir / "images"
    w, before, index = checkpointed(start_workload(mib=32), images)
    stored = images / workingset.STORED
    restore_and_read(images, reaper, w, before)
    good = workingset.read(stored, index)
    lazy = next(e for e in index.entries if e.lazy)
    cases = {
        "flipped byte": (bytes([stored.read_bytes()[0] ^ 1]) + stored.read_bytes()[1:], "not a version 2"),
        "truncated": (stored.read_bytes()[:-5], "bytes for"),
        "another checkpoint": (workingset.encode(replace(good, checkpoint_id=bytes(16))), "another checkpoint"),
        "outside the index": (workingset.encode(replace(good, faults=(workingset.Fault(1, len(index.entries), 0),))),
                              "names record"),
        "not a lazy page": (workingset.encode(replace(good, faults=(workingset.Fault(1, 0, lazy.start + 1),))),
                            "not a lazy page"),
    }
    for name, (data, expected) in cases.items():
        stored.write_bytes(data)
        summary = restore_and_read(images, reaper, w, before)
        assert summary["prefetch_bytes"] == 0 and summary["prefetch_restores"] == 0, name
        assert len(summary["warnings"]) == 1 and expected in summary["warnings"][0], (name, summary["warnings"])
        assert "restoring without prefetch" in summary["warnings"][0]
        assert workingset.read(stored, index).restores == 1, f"{name}: replaced by the last restore's"
    explicit = workdir / "ws-copy"
    explicit.write_bytes(stored.read_bytes())
    summary = restore_and_read(images, reaper, w, before, "--prefetch", str(explicit))
    assert summary["prefetch_restores"] == 1 and summary["prefetch_bytes"] > 0 and not summary["warnings"]
