"""Remote lazy migration between two test hosts: the page server in host A's network namespace,
lr-lazyd and the restored tree in host B's; pages cross a veth pair over TCP.

lr-pageserver and lr-lazyd are the ASan/UBSan builds (Background sets LAZYRESTORE_SANITIZED).
Every migrated tree's memory is compared by checksum with the original.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lazyrestore import sample, testhosts

from .helpers import Background, run_cli
from .migration import SLOW_DRAIN, Source, checkpoint_on_a, checksums, finished, restore_on_b, serve_a, start_on_a


@pytest.mark.parametrize("mode", [[], ["--via-disk"]], ids=["live", "via-disk"])
def test_migrate_one_process_from_a_to_b(hosts, workdir: Path, reaper, mode: list[str]) -> None:
    w = start_on_a(workdir, reaper)
    before = checksums(w)
    src = Source(["migrate", *mode, "--pid", str(w.pid), "--images", str(workdir / "images"),
                  "--listen", f"{testhosts.ADDR_A}:0"])
    assert src.listening["command"].startswith(f"lazyrestore restore --from {src.address} ")
    run = restore_on_b(src.address, workdir / "images", workdir / "dst")
    restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    summary = finished(run)
    assert summary["source"] == src.address
    assert summary["drain_bytes"] + summary["fault_bytes"] >= (256 << 20) * 15 // 16
    assert checksums(restored) == before
    assert restored.request_verify() == {"main": "ok"}
    with open(f"/proc/{restored.pid}/ns/net", "rb"), open(f"/run/netns/{testhosts.HOST_B}", "rb"):
        assert os.stat(f"/proc/{restored.pid}/ns/net").st_ino == os.stat(f"/run/netns/{testhosts.HOST_B}").st_ino
    res = src.run.finish(timeout=60)  # --once: migrate stops after the delivery
    assert res.code == 0, res.stderr
    assert res.last("summary")["delivered"] == 1


@pytest.fixture(params=["live", "via-disk"])
def live(request: pytest.FixtureRequest) -> bool:
    """The source of a drain test: `migrate` (live: the stopped tree's memory served) or a checkpoint served."""
    return request.param == "live"


def source_on_a(w: sample.Workload, images: Path, live: bool) -> Source:
    if live:
        return Source(["migrate", "--pid", str(w.pid), "--images", str(images), "--listen", f"{testhosts.ADDR_A}:0"])
    checkpoint_on_a(w, images)
    return serve_a(images)


def end_source(src: Source, live: bool) -> None:
    """serve: stopped. migrate: it ends by itself once the destination has every page; if the test failed before,
    SIGKILL (CRIU then kills the stopped source tree)."""
    if not live:
        src.stop()
        return
    try:
        src.run.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        src.run.proc.kill()
        src.run.proc.wait(timeout=30)


@contextmanager
def slow_migration(w: sample.Workload, workdir: Path, reaper,
                   live: bool = False) -> Iterator[tuple[Background, sample.Workload]]:
    """Serve w from A (live, or checkpointed first), restore it on B with a slow drain: (the restore, the restored
    tree)."""
    src = source_on_a(w, workdir / "images", live)
    try:
        run = restore_on_b(src.address, workdir / "images", workdir / "dst", *SLOW_DRAIN)
        yield run, sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    finally:
        end_source(src, live)


def test_threads_touch_memory_during_a_remote_drain(hosts, workdir: Path, reaper, live: bool) -> None:
    w = start_on_a(workdir, reaper, threads=2, scanners=4)
    before = checksums(w)
    with slow_migration(w, workdir, reaper, live) as (run, restored):
        during = checksums(restored)
        summary = finished(run)
    assert summary["faults"] > 0, "the scanners must have faulted on missing pages"
    assert during == before
    assert restored.request_verify() == {"main": "ok"}
    assert not w.bad_lines()


def test_fork_and_dontneed_during_a_remote_drain(hosts, workdir: Path, reaper, live: bool) -> None:
    w = start_on_a(workdir, reaper, children=1, scanners=2)
    before = checksums(w)
    with slow_migration(w, workdir, reaper, live) as (run, restored):
        assert restored.op("fork") == "op fork done"
        for op in ("dontneed", "mremap", "munmap"):
            line = restored.op(op)
            assert line.startswith(f"op {op} done") and "BAD" not in line, line
        summary = finished(run)
    assert summary["faults"] > 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("role=fork" in ln and " ok " in ln for ln in w.lines()):
        time.sleep(0.05)
    assert [ln for ln in w.lines() if ln.startswith("verify role=fork") and " ok " in ln], w.lines()[-5:]
    assert restored.request_verify() == {"main": "ok", "child0": "ok"}
    assert checksums(restored)["child0"] == before["child0"]
    assert not w.bad_lines()


def test_two_concurrent_restores_of_one_checkpoint(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper)
    before = checksums(w)
    checkpoint_on_a(w, workdir / "images")
    log_size = w.log.stat().st_size
    src = serve_a(workdir / "images")
    try:
        runs = [restore_on_b(src.address, workdir / "images", workdir / f"dst{i}", *SLOW_DRAIN) for i in range(2)]
        restored = [sample.Workload(reaper.add(r.first("resumed")["pid"]), w.log, w.roles) for r in runs]
        summaries = [finished(r) for r in runs]
    finally:
        src.stop()
    assert restored[0].pid != restored[1].pid
    assert all(s["resident_s"] > 0 for s in summaries)
    for r in restored:  # both trees write their reports at the same offset of the one log: one at a time
        os.truncate(w.log, log_size)
        assert checksums(r) == before
        os.kill(r.pid, signal.SIGKILL)
    served = src.result.last("summary")
    assert served["delivered"] == 2 and served["sessions"] == 2


def test_wrong_secret_is_refused_and_the_server_serves_on(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=32)
    before = checksums(w)
    checkpoint_on_a(w, workdir / "images")
    wrong = workdir / "wrong-secret"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    src = serve_a(workdir / "images")
    try:
        res = run_cli("restore", "--from", src.address, "--secret-file", str(wrong), "--workdir",
                      str(workdir / "bad"), host="b")
        assert res.code != 0
        assert "wrong proof of the checkpoint secret" in res.last("error")["message"], res.last("error")
        good = restore_on_b(src.address, workdir / "images", workdir / "dst")
        restored = sample.Workload(reaper.add(good.first("resumed")["pid"]), w.log, w.roles)
        finished(good)
    finally:
        src.stop()
    assert checksums(restored) == before
    served = src.result.last("summary")
    assert served["rejected"] >= 1 and served["delivered"] == 1


def test_restore_from_refuses_bad_arguments(hosts, workdir: Path) -> None:
    loose = workdir / "loose-secret"
    loose.write_bytes(os.urandom(32))
    loose.chmod(0o644)
    cases = [
        (["--from", "10.231.0.1", "--secret-file", str(loose), "--workdir", str(workdir / "d")], "HOST:PORT"),
        (["--from", "10.231.0.1:0", "--secret-file", str(loose), "--workdir", str(workdir / "d")], "port 0"),
        (["--from", "10.231.0.1:7411", "--secret-file", str(loose), "--workdir", str(workdir / "d")], "mode 644"),
        (["--from", "10.231.0.1:7411", "--workdir", str(workdir / "d")], "--secret-file"),
        (["--from", "10.231.0.1:7411", "--images", str(workdir)], "either --images"),
    ]
    for args, expected in cases:
        res = run_cli("restore", *args, host="b")
        assert res.code == 2, (args, res.stderr)
        assert expected in res.last("error")["message"], (args, res.last("error"))


def test_nothing_listening_is_a_clear_error(hosts, workdir: Path) -> None:
    secret = workdir / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    res = run_cli("restore", "--from", f"{testhosts.ADDR_A}:9", "--secret-file", str(secret), "--workdir",
                  str(workdir / "d"), "--source-timeout", "2", host="b")
    assert res.code != 0
    assert f"{testhosts.ADDR_A}:9" in res.last("error")["message"], res.last("error")
