"""Unit tests for lazyrestore.procs.check_checkpointable (reads /proc, no CRIU)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore import procs
from lazyrestore.errors import ProcessError


def absent_pid(start: int = 4_000_000) -> int:
    """A pid with no /proc entry, scanning upward from a large number."""
    pid = start
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_refuses_itself() -> None:
    with pytest.raises(ProcessError) as info:
        procs.check_checkpointable(os.getpid(), allow_host_pids=True)
    assert str(os.getpid()) in str(info.value)
    assert info.value.exit_code == 5


def test_refuses_host_init() -> None:
    with pytest.raises(ProcessError, match="refusing to checkpoint pid 1"):
        procs.check_checkpointable(1, allow_host_pids=True)


@pytest.mark.parametrize("pid", [0, -3])
def test_refuses_non_positive_pid(pid: int) -> None:
    with pytest.raises(ProcessError, match="positive"):
        procs.check_checkpointable(pid, allow_host_pids=True)


@pytest.mark.parametrize("allow", [False, True])
def test_absent_pid(allow: bool) -> None:
    pid = absent_pid()
    with pytest.raises(ProcessError) as info:
        procs.check_checkpointable(pid, allow_host_pids=allow)
    assert "no process" in str(info.value)
    assert str(pid) in str(info.value)


def test_host_pid_child_is_refused_unless_allowed(sleeper: subprocess.Popen[bytes]) -> None:
    pid = sleeper.pid
    chain = procs.ns_pids(pid)
    assert chain[-1] != 1, "sleep must not be a pid namespace init for this test"
    with pytest.raises(ProcessError) as info:
        procs.check_checkpointable(pid, allow_host_pids=False)
    msg = str(info.value)
    assert "not the init of its own pid namespace" in msg
    assert "unshare" in msg
    assert "--allow-host-pids" in msg
    assert f"process {pid} " in msg
    assert procs.check_checkpointable(pid, allow_host_pids=True) is None


def test_ns_pids_and_is_running(sleeper: subprocess.Popen[bytes]) -> None:
    chain = procs.ns_pids(sleeper.pid)
    assert chain[0] == sleeper.pid or sleeper.pid in chain
    assert procs.is_running(sleeper.pid) is True
    assert procs.is_pidns_init(sleeper.pid) is False
    assert procs.is_running(absent_pid()) is False


def test_status_fields_absent_pid() -> None:
    with pytest.raises(ProcessError, match="no process with pid"):
        procs.status_fields(absent_pid())


def test_status_fields_of_self() -> None:
    fields = procs.status_fields(os.getpid())
    assert fields["Pid"] == str(os.getpid())
    assert "State" in fields
