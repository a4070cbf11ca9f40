"""lr-pageserver's COMMIT and ABORT (issue 17: two copies of a tree must never run), driven by wire.py.

COMMIT: "this destination starts its restore now: its tree may run". With --live (a held source tree) the
server answers only when no other live session holds the tree, else ERROR busy naming the holder; a holder
whose session ends holds it no more. ABORT: "my tree never ran": echoed, and the session holds the tree no
more. Both reach --events-fd in order with the other events ("committed", "aborted", with the session id).
The live server here serves a checkpoint with no live range (a sleeping process stands in for the tree in
its pid map): which session holds the tree does not depend on where the pages come from.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import wire
from .helpers import small_checkpoint
from .test_pageserver import Server, damaged, honest


@pytest.fixture(scope="module")
def images() -> Iterator[Path]:
    with small_checkpoint("lazyrestore-commit-") as path:
        yield path


@pytest.fixture(scope="module")
def pid_map(images: Path) -> Iterator[Path]:
    sleeper = subprocess.Popen(["sleep", "3600"])
    path = images.parent / "live-pids"
    path.write_text(f"1 {sleeper.pid}\n")
    yield path
    sleeper.kill()
    sleeper.wait()


@pytest.fixture
def live(images: Path, pid_map: Path) -> Iterator[Server]:
    s = Live(images, "--live", str(pid_map))
    yield s
    assert s.stop() == 0, s.log_text()
    assert "ERROR: AddressSanitizer" not in s.log_text() and "runtime error" not in s.log_text()


@pytest.fixture
def disk(images: Path) -> Iterator[Server]:
    s = Live(images)
    yield s
    assert s.stop() == 0, s.log_text()


class Live(Server):
    """Server whose events are read from the pipe with a buffer of its own: select on the text file's descriptor
    misses lines its buffer already holds (two events written together, as "rejected" and "session_lost")."""

    def __init__(self, images: Path, *extra: str) -> None:
        self.pending = b""
        super().__init__(images, *extra)

    def next_event(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.events.fileno()], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no event from lr-pageserver in {timeout} s; log: {self.log_text()}"
            chunk = os.read(self.events.fileno(), 65536)
            assert chunk, f"lr-pageserver closed its events; log: {self.log_text()}"
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)


def session_of(server: Server) -> int:
    ev = server.next_event()
    assert ev["event"] == "session", ev
    assert isinstance(ev["session"], int)
    return ev["session"]


def event(server: Server, kind: str, session: int) -> dict:
    ev = server.next_event()
    assert ev["event"] == kind and ev["session"] == session, ev
    return ev


def ask(c: wire.Client, kind: int) -> wire.Frame:
    """kind (COMMIT or ABORT) and its answer, which echoes the request id and carries its checksum."""
    rid = c.request(kind)
    f = c.recv()
    assert f.type == kind and f.req_id == rid and f.flags & wire.F_SUM and f.payload == b"", f
    return f


def committed(server: Server, images: Path) -> tuple[wire.Client, int]:
    """A new session that commits: its client and session id."""
    c = honest(server, images)
    sid = session_of(server)
    ask(c, wire.COMMIT_T)
    event(server, "committed", sid)
    return c, sid


def refused(c: wire.Client, code: int) -> str:
    with pytest.raises(wire.PeerError) as info:
        c.recv()
    assert info.value.code == code, info.value
    assert c.closed()
    return info.value.message


def test_commit_is_answered_and_reported(live: Server, images: Path) -> None:
    c = honest(live, images)
    sid = session_of(live)
    ask(c, wire.COMMIT_T)
    ev = event(live, "committed", sid)
    assert ev["peer"].startswith("127.0.0.1")
    ask(c, wire.COMMIT_T)  # again: still the holder, no second event
    assert "lazyrestore/manifest.json" in c.list_files()
    c.close()
    ev = live.next_event()
    assert ev["event"] == "session_lost" and ev["session"] == sid, ev
    assert "ended while it held the tree" in live.log_text()


def test_a_second_destination_is_busy_until_the_holder_is_gone(live: Server, images: Path) -> None:
    first, s1 = committed(live, images)
    second = honest(live, images)
    s2 = session_of(live)
    second.request(wire.COMMIT_T)
    message = refused(second, wire.ERR_BUSY)
    assert message == f"another destination holds the tree (session {s1})", message
    ev = live.next_event()
    assert ev["event"] == "rejected" and ev["code"] == "busy", ev
    event(live, "session_lost", s2)
    first.list_files()  # the holder is served on
    first.close()
    event(live, "session_lost", s1)
    third, _ = committed(live, images)
    third.close()


def test_abort_is_echoed_and_frees_the_tree(live: Server, images: Path) -> None:
    first, s1 = committed(live, images)
    ask(first, wire.ABORT_T)
    assert event(live, "aborted", s1)["held"] is True
    second, _ = committed(live, images)  # the first is still connected: its abort freed the tree
    first.close()
    event(live, "session_lost", s1)
    second.close()


def test_abort_without_commit_is_echoed(live: Server, images: Path) -> None:
    c = honest(live, images)
    sid = session_of(live)
    ask(c, wire.ABORT_T)
    assert event(live, "aborted", sid)["held"] is False
    c.close()


def test_images_on_disk_let_every_destination_commit(disk: Server, images: Path) -> None:
    """Serving a checkpoint from disk, which may be restored many times: no session holds it alone."""
    first, _ = committed(disk, images)
    second, _ = committed(disk, images)
    first.close()
    second.close()


@pytest.mark.parametrize("kind", [wire.COMMIT_T, wire.ABORT_T])
def test_a_damaged_commit_or_abort_is_refused(live: Server, images: Path, kind: int) -> None:
    c = honest(live, images)
    sid = session_of(live)
    c.sock.sendall(damaged(wire.frame(kind, b"", 7), 17))
    message = refused(c, wire.ERR_DAMAGED)
    assert "fails its checksum" in message, message
    ev = live.next_event()
    assert ev["event"] == "rejected" and ev["code"] == "damaged", ev
    event(live, "session_lost", sid)
    assert "committed" not in live.log_text() and "aborted" not in live.log_text()


@pytest.mark.parametrize("kind", [wire.COMMIT_T, wire.ABORT_T])
def test_a_payload_is_refused(live: Server, images: Path, kind: int) -> None:
    c = honest(live, images)
    c.request(kind, b"x")
    assert "carries no payload" in refused(c, wire.ERR_PROTOCOL)


def test_commit_before_authentication_is_refused(live: Server, images: Path) -> None:
    c = wire.Client(live.port)
    c.request(wire.COMMIT_T)
    refused(c, wire.ERR_PROTOCOL)
    assert "committed" not in live.log_text()
