"""livehook and LiveDump.adopt: the live dump the CRIU plugin hands over (LAZYRESTORE_LIVE), with a stand-in for
CRIU: a process it did not start, and the other end of the page-server socket answered as CRIU 4.2.1 does."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore import livedump, livehook
from lazyrestore.errors import CriuFailed, UsageError


@pytest.fixture
def fake_criu() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def adopted(fake: subprocess.Popen[bytes], tmp_path: Path) -> tuple[livedump.LiveDump, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    status_r, status_w = os.pipe()
    os.close(status_w)
    dump = livedump.LiveDump.adopt(ours, status_r, fake.pid, fake.pid, tmp_path, tmp_path / "dump.log")
    dump.release_net = False  # the stand-in shares this host's network namespace: nothing of CRIU's to undo
    return dump, theirs


def play_criu(theirs: socket.socket, fake: subprocess.Popen[bytes], answer: int | None) -> threading.Thread:
    """CRIU's page server: one command read, a status answered (None: none), then CRIU exits."""
    seen: list[int] = []

    def run() -> None:
        cmd = livedump.PS_IOV.unpack(theirs.recv(livedump.PS_IOV.size))[0]
        seen.append(cmd)
        if answer is not None:
            theirs.sendall(struct.pack("<i", answer))
        theirs.close()
        fake.kill()
    t = threading.Thread(target=run, daemon=True)
    t.seen = seen  # type: ignore[attr-defined]
    t.start()
    return t


def test_an_adopted_criu_is_watched_by_pidfd(fake_criu: subprocess.Popen[bytes]) -> None:
    criu = livedump.AdoptedCriu(fake_criu.pid)
    assert criu.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        criu.wait(0.05)
    criu.kill()
    assert criu.wait(5) == livedump.EXIT_UNKNOWN and criu.poll() == livedump.EXIT_UNKNOWN


def test_done_asks_criu_to_end_the_tree(fake_criu: subprocess.Popen[bytes], tmp_path: Path) -> None:
    dump, theirs = adopted(fake_criu, tmp_path)
    t = play_criu(theirs, fake_criu, 0)
    dump.finish(timeout=5)
    t.join(5)
    assert t.seen == [livedump.PS_IOV_CLOSE] and dump.ended  # type: ignore[attr-defined]


@pytest.mark.parametrize("answer", [-1, None])
def test_done_that_criu_does_not_confirm_is_an_error(fake_criu: subprocess.Popen[bytes], tmp_path: Path,
                                                     answer: int | None) -> None:
    dump, theirs = adopted(fake_criu, tmp_path)
    play_criu(theirs, fake_criu, answer)
    with pytest.raises(CriuFailed, match="did not end as asked"):
        dump.finish(timeout=5)


def test_a_rollback_asks_criu_to_resume_the_tree(fake_criu: subprocess.Popen[bytes], tmp_path: Path) -> None:
    dump, theirs = adopted(fake_criu, tmp_path)
    t = play_criu(theirs, fake_criu, None)
    dump.rollback(timeout=5)  # its exit code is the runtime's: not checked
    t.join(5)
    assert t.seen == [livedump.PS_ROLLBACK]  # type: ignore[attr-defined]


def test_an_adopted_dump_that_fails_says_where_criu_logged(fake_criu: subprocess.Popen[bytes],
                                                           tmp_path: Path) -> None:
    dump, _ = adopted(fake_criu, tmp_path)  # the status pipe's write end is closed: CRIU never got ready
    with pytest.raises(CriuFailed) as exc:
        dump.wait_ready(timeout=5)
    assert exc.value.log_path == str(tmp_path / "dump.log")


@pytest.mark.parametrize("raw, want", [("", None), ("2.5", 2.5)])
def test_the_timeout(raw: str, want: float | None) -> None:
    assert livehook.timeout_from_env({livehook.TIMEOUT_ENV: raw}) == want


@pytest.mark.parametrize("raw", ["0", "-3", "soon"])
def test_a_bad_timeout_is_refused(raw: str) -> None:
    with pytest.raises(UsageError, match=livehook.TIMEOUT_ENV):
        livehook.timeout_from_env({livehook.TIMEOUT_ENV: raw})


def test_without_the_plugin_s_environment_the_hook_refuses(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"{livehook.PS_FD_ENV}=None: the CRIU plugin sets it"):
        livehook.adopt({}, tmp_path, tmp_path)


def test_how_long_a_process_has_run(fake_criu: subprocess.Popen[bytes]) -> None:
    assert 0 <= livehook.seconds_since_start(fake_criu.pid) < 30
    assert livehook.seconds_since_start(1) > livehook.seconds_since_start(fake_criu.pid)
    assert livehook.seconds_since_start(2**22 + 1) == 0.0  # no such process
