"""Fixtures for privileged integration tests: real CRIU, real processes, tmpfs images.

These tests need root and CRIU >= 4.2 (`make bootstrap`). Off CI they skip with
the reason when either is missing; on CI (CI=true) a missing CRIU is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests' own test hosts (lrt-host-a/b), apart from any a user or `make bench` has up.
os.environ.setdefault("LAZYRESTORE_TESTHOSTS_PREFIX", "lrt")

from lazyrestore import criu, sample, testhosts  # noqa: E402
from lazyrestore.errors import LazyRestoreError  # noqa: E402

from .helpers import run_cli  # noqa: E402
from .reaper import Reaper  # noqa: E402


def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CRIU checkpoints other processes)"
    try:
        criu.find_criu()
    except LazyRestoreError as exc:
        return f"needs CRIU >= 4.2: {exc}"
    return None


@pytest.fixture(scope="session", autouse=True)
def criu_available() -> None:
    reason = _unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"integration tests cannot run on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh directory on tmpfs, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="lazyrestore-test-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    yield r
    r.kill_all()


@pytest.fixture
def start_workload(workdir: Path, reaper: Reaper):
    def start(mib: int = 256, threads: int = 0, children: int = 0) -> sample.Workload:
        w = sample.start(workdir, mib, threads=threads, children=children)
        reaper.add(w.pid)
        return w
    return start


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def hosts() -> Iterator[testhosts.TestHosts]:
    """Test hosts A and B for the module's tests, removed afterwards."""
    h = testhosts.up()
    yield h
    testhosts.down()
