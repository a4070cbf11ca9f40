"""A checkpoint that cannot be written (disk full, read-only images directory): a clear error, the source
process left running with its memory intact, and nothing presented as a complete checkpoint."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore import procs

from . import faults
from .helpers import run_cli


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: room for the metadata, not for the pages of a 64 MiB workload."""
    mnt = workdir / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "lazyrestore-test", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("case", ["disk full", "read-only"])
def test_checkpoint_that_cannot_be_written(small_disk: Path, start_workload, case: str) -> None:
    w = start_workload(64)
    before = {role: r.checksum for role, r in w.request_report().items()}
    images = small_disk / "images"
    if case == "read-only":
        images.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    t0 = time.monotonic()
    res = run_cli("checkpoint", "--pid", str(w.pid), "--images", str(images))
    detect = time.monotonic() - t0
    assert res.code != 0
    err = res.last("error")["message"]
    expected = "No space left on device" if case == "disk full" else "Read-only file system"
    assert expected in err and str(small_disk) in err, err
    assert procs.is_running(w.pid), "the source process must be left running"
    after = {role: r.checksum for role, r in w.request_report().items()}
    assert after == before and w.request_verify() == {"main": "ok"}
    assert not (images / "lazyrestore" / "manifest.json").exists(), "a partial checkpoint must not look complete"
    listed = run_cli("restore", "--images", str(images))
    assert listed.code != 0
    faults.record(f"checkpoint: images directory {case}", injected=1, mismatches=int(after != before),
                  detect_s=detect, recover_s=None, outcome="named error; source runs on; no manifest")
