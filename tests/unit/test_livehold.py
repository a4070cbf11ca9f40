"""livehold: the live source's own SIGSTOP hold, its release (SIGCONT) and end (SIGKILL), on plain processes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from lazyrestore import livehold, procs


def state(pid: int) -> str:
    return procs.status_fields(pid)["State"][:1] if procs.is_running(pid) else "gone"


def settle(pid: int, want: str) -> str:
    deadline = time.monotonic() + 5
    while state(pid) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return state(pid)


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    """A parent with one child: `sh -c 'sleep 60 & wait'`."""
    p = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    deadline = time.monotonic() + 5
    while len(livehold.treefacts.tree_pids(p.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    yield p
    p.kill()
    p.wait()


def test_hold_stops_every_process_and_release_continues_them(tree: subprocess.Popen[bytes]) -> None:
    pids = livehold.treefacts.tree_pids(tree.pid)
    assert len(pids) == 2
    h = livehold.hold(tree.pid, livehold.stopped_now(tree.pid))
    assert [settle(p, "T") for p in pids] == ["T", "T"]
    assert sorted(livehold.release(h)) == sorted(pids)
    assert [settle(p, "S") for p in pids] == ["S", "S"]


def test_a_process_stopped_before_stays_stopped_after_a_release(tree: subprocess.Popen[bytes]) -> None:
    child = [p for p in livehold.treefacts.tree_pids(tree.pid) if p != tree.pid][0]
    subprocess.run(["kill", "-STOP", str(child)], check=True)
    assert settle(child, "T") == "T"
    h = livehold.hold(tree.pid, livehold.stopped_now(tree.pid))
    assert livehold.release(h) == [tree.pid]
    assert settle(tree.pid, "S") == "S" and settle(child, "T") == "T"
    subprocess.run(["kill", "-CONT", str(child)], check=True)


def test_end_kills_every_process(tree: subprocess.Popen[bytes]) -> None:
    pids = livehold.treefacts.tree_pids(tree.pid)
    h = livehold.hold(tree.pid, set())
    assert livehold.end(h)
    assert tree.wait(timeout=5) == -signal.SIGKILL
    assert all(settle(p, "gone") == "gone" for p in pids)
    assert not h.pidfds, "the pidfds are closed"
