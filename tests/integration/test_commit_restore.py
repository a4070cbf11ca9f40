"""lr-lazyd commits before its restore may start and aborts when its tree never ran (issue 17).

First lr-lazyd alone against lr-pageserver on loopback (both the ASan/UBSan builds), with this test standing in
for CRIU's restore on lazy-pages.socket: the server's "committed" event comes before lr-lazyd's --status-fd
byte; stopped before CRIU connected, or when CRIU's restore closes its connection before "restore finished",
lr-lazyd sends ABORT and the server reports "aborted"; a second destination of a live tree is refused (busy)
and restores nothing. Then `restore --from` between test hosts A and B: a normal restore's source reports
server_committed and no abort; one that fails before CRIU runs (the checkpoint's pids are in use on B) reports
server_aborted, and its tree never ran.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore.paths import native_binary
from lazyrestore.procs import ready_byte

from .helpers import flip_last_byte, small_checkpoint
from .migration import checkpoint_on_a, finished, restore_on_b, serve_a, start_on_a
from .test_commit import Live, event, session_of


@pytest.fixture(scope="module")
def images() -> Iterator[Path]:
    with small_checkpoint("lazyrestore-commit-lazyd-") as path:
        yield path


@pytest.fixture
def sleeper() -> Iterator[int]:
    p = subprocess.Popen(["sleep", "3600"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture
def live(images: Path, sleeper: int, tmp_path: Path) -> Iterator[Live]:
    """lr-pageserver --live on the checkpoint (a sleeping process stands in for the held tree)."""
    pid_map = tmp_path / "live-pids"
    pid_map.write_text(f"1 {sleeper}\n")
    s = Live(images, "--live", str(pid_map))
    yield s
    assert s.stop() == 0, s.log_text()
    assert "ERROR: AddressSanitizer" not in s.log_text() and "runtime error" not in s.log_text()


class Lazyd:
    """lr-lazyd --source on loopback, in its own images and work dirs, up to its --status-fd byte (or exit)."""

    def __init__(self, server: Live, images: Path, where: Path) -> None:
        self.work = where / "work"
        self.work.mkdir(parents=True)
        self.log = where / "lazyd.log"
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [str(native_binary("san/lr-lazyd")), "-D", str(where / "images"), "-W", str(self.work),
             "-o", str(self.log), "--status-fd", str(w), "--source", f"127.0.0.1:{server.port}",
             "--secret-file", str(images / "lazyrestore" / "secret"), "--source-timeout", "5"],
            pass_fds=[w], stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(w)
        self.listening = ready_byte(r, 60)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self) -> int:
        code = self.proc.wait(timeout=30)
        assert "ERROR: AddressSanitizer" not in self.log_text() and "runtime error" not in self.log_text()
        return code

    def stop(self) -> int:
        """SIGTERM, as lazyrestore stops it (the guardian passes it on)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()


@pytest.fixture
def lazyds() -> Iterator[list[Lazyd]]:
    started: list[Lazyd] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def committed_lazyd(server: Live, images: Path, where: Path, lazyds: list[Lazyd]) -> tuple[Lazyd, int]:
    """lr-lazyd fetched the checkpoint, and the server recorded its commit before it reported listening."""
    d = Lazyd(server, images, where)
    lazyds.append(d)
    assert d.listening, d.log_text()
    sid = session_of(server)
    event(server, "committed", sid)
    assert "committed: the page server 127.0.0.1" in d.log_text()
    return d, sid


def test_lazyd_commits_before_listening_and_aborts_when_stopped_before_criu(live: Live, images: Path,
                                                                           tmp_path: Path, lazyds) -> None:
    d, sid = committed_lazyd(live, images, tmp_path, lazyds)
    assert d.stop() != 0
    assert event(live, "aborted", sid)["held"] is True
    event(live, "session_lost", sid)
    log = d.log_text()
    assert "abort sent to the page server" in log and "stopped by signal" in log, log
    assert f"abort answered by the page server 127.0.0.1:{live.port} (session {sid})" in log, log


def test_lazyd_aborts_when_criu_restore_closes_before_finishing(live: Live, images: Path, tmp_path: Path,
                                                               lazyds) -> None:
    d, sid = committed_lazyd(live, images, tmp_path, lazyds)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as criu:  # a restore that failed before any task
        criu.connect(str(d.work / "lazy-pages.socket"))
    assert d.wait() == 1
    assert event(live, "aborted", sid)["held"] is True
    log = d.log_text()
    assert "CRIU restore closed the lazy-pages connection before 'restore finished'" in log, log
    assert "abort answered by the page server" in log, log


def test_a_second_destination_of_a_live_tree_is_refused(live: Live, images: Path, tmp_path: Path, lazyds) -> None:
    first, s1 = committed_lazyd(live, images, tmp_path / "first", lazyds)
    second = Lazyd(live, images, tmp_path / "second")
    lazyds.append(second)
    assert not second.listening
    assert second.wait() == 1
    s2 = session_of(live)
    ev = live.next_event()
    assert ev["event"] == "rejected" and ev["code"] == "busy", ev
    event(live, "session_lost", s2)
    log = second.log_text()
    assert (f"did not let this restore start (the page server refused: busy error: another destination holds "
            f"the tree (session {s1})): nothing was restored") in log, log
    assert not (second.work / "lazy-pages.socket").exists()
    assert first.proc.poll() is None
    first.stop()
    assert event(live, "aborted", s1)["held"] is True


def test_restore_from_commits_and_never_aborts(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=64)
    checkpoint_on_a(w, workdir / "images")
    src = serve_a(workdir / "images")
    try:
        run = restore_on_b(src.address, workdir / "images", workdir / "dst")
        reaper.add(run.first("resumed")["pid"])
        finished(run)
    finally:
        src.stop()
    events = src.result.events
    committed = [e for e in events if e["event"] == "server_committed"]
    assert len(committed) == 1 and isinstance(committed[0]["session"], int), events
    assert not [e for e in events if e["event"] == "server_aborted"], events
    delivered = [e for e in events if e["event"] == "server_delivered"]
    assert [e["session"] for e in delivered] == [committed[0]["session"]], events


def test_restore_from_whose_checkpoint_fails_verification_aborts(hosts, workdir: Path, reaper) -> None:
    """A metadata image changed on A while it is served: B fetches it, lr-lazyd commits and listens, the
    fetched checkpoint fails its verification, and `restore --from` stops lr-lazyd before CRIU ran: it aborts."""
    w = start_on_a(workdir, reaper, mib=64)
    checkpoint_on_a(w, workdir / "images")
    src = serve_a(workdir / "images")
    core = sorted((workdir / "images").glob("core-*.img"))[0]
    flip_last_byte(core)  # in place: lr-pageserver holds it open and sends what it reads
    try:
        run = restore_on_b(src.address, workdir / "images", workdir / "dst", until=())
        result = run.finish(timeout=120)
        for e in run.events + result.events:
            if e["event"] == "resumed":
                reaper.add(e["pid"])
        assert result.code != 0 and core.name in result.stderr, result.stderr
    finally:
        src.stop()
    assert not [e for e in run.events + result.events if e["event"] == "resumed"]  # no tree ran on B
    events = src.result.events
    committed = [e["session"] for e in events if e["event"] == "server_committed"]
    aborted = [e["session"] for e in events if e["event"] == "server_aborted"]
    assert len(committed) == 1 and aborted == committed, events
    log = (workdir / "dst" / "run" / "lazyd.log").read_text(errors="replace")
    assert "abort answered by the page server" in log, log
