"""A runc checkpoint made live by the CRIU plugin (LAZYRESTORE_LIVE=HOST:PORT in runc's environment): the source
container stays stopped and is served from its memory, as `lazyrestore migrate` serves a tree, and a plain
`runc restore` of the kit on the destination runs it. Source in test host A, destination in test host B.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyrestore import testhosts

from .containers import RUNC_PATH, RUNC_ROOT, cgroup_of, placed_bytes, remove, remove_parent_cgroups, report, state
from .test_runc import DST, MIB, SRC, assert_kit_complete, restore_dest, run_source


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for n in names:
        remove(n)
    remove_parent_cgroups()


def live_checkpoint(workdir: Path, name: str, **env: str) -> tuple[subprocess.Popen[str], Path]:
    """`LAZYRESTORE_LIVE=ADDR_A:0 runc checkpoint` in host A, in the background: it returns once the tree's fate
    is decided."""
    images = workdir / "images"
    ck = subprocess.Popen(["runc", "--root", RUNC_ROOT, "checkpoint", "--image-path", str(images), "--work-path",
                           str(workdir / "work-src"), name], text=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "PATH": RUNC_PATH, "LAZYRESTORE_LIVE": f"{testhosts.ADDR_A}:0", **env},
                          preexec_fn=testhosts.enter(testhosts.HOST_A))
    return ck, images


def live_events(images: Path) -> list[dict[str, Any]]:
    path = images / "lazyrestore" / "live.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def wait_event(images: Path, name: str, ck: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in live_events(images) if e["event"] == name]
        if found:
            return found[-1]
        log = images / "lazyrestore" / "live.log"
        assert time.monotonic() < deadline, (f"no {name!r} event in {timeout} s: {live_events(images)[-5:]}\n"
                                             f"{log.read_text()[-3000:] if log.exists() else '(no live.log)'}")
        if ck.poll() is not None and name != "rolled_back":
            pytest.fail(f"runc checkpoint exited {ck.returncode} before {name!r}: {ck.stderr.read() if ck.stderr else ''}"
                        f"\n{live_events(images)[-5:]}")
        time.sleep(0.1)


def finish(ck: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, err = ck.communicate(timeout=timeout)
    return ck.returncode, err


def test_a_live_runc_checkpoint_is_restored_by_a_plain_runc_restore(hosts, workdir: Path,
                                                                    containers: list[str]) -> None:
    src, before = run_source(workdir, containers)
    ck, images = live_checkpoint(workdir, SRC)
    try:
        listening = wait_event(images, "listening", ck)
        assert listening["live"] is True and listening["port"] > 0
        kit = images / "lazyrestore" / "kit"
        assert_kit_complete(kit, images)
        # Only the metadata was written: the memory stays in the stopped container.
        assert sum(f.stat().st_size for f in images.iterdir() if f.is_file()) < (MIB << 20) // 8
        assert state(SRC)["status"] != "stopped"  # runc's checkpoint is still under way
        dest = src.copy(workdir / "dst", cgroup_of(DST))
        dst_images = workdir / "dst-images"
        shutil.copytree(kit, dst_images)
        containers.append(DST)
        res = restore_dest(dest, dst_images, workdir / "work-dst", DST)  # no --lazy-pages: the plugin makes it lazy
        log = (workdir / "work-dst" / "restore.log").read_text()
        assert res.returncode == 0, f"{res.stderr}\n{log[-3000:]}"
        assert "made lazy" in log
        assert report(dest, DST).checksum == before.checksum
        code, err = finish(ck)  # the destination has every page: CRIU kills the source, runc's checkpoint succeeds
        assert code == 0, f"{err}\n{live_events(images)[-5:]}"
    finally:
        if ck.poll() is None:
            ck.kill()
            ck.communicate()
    events = live_events(images)
    assert [e["reason"] for e in events if e["event"] == "source_ended"] == ["delivered"], events[-5:]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["action"] == "live-dump" and summary["delivered"] == 1, summary
    assert state(SRC) is None  # runc removed the checkpointed container
    lazyd = (workdir / "work-dst" / "lazyd.log").read_text()
    assert "every page placed" in lazyd
    assert placed_bytes(lazyd) >= (MIB << 20) * 15 // 16
    assert report(dest, DST).checksum == before.checksum


@pytest.mark.parametrize("stop", ["sigterm", "timeout"])
def test_a_live_runc_checkpoint_no_destination_takes_rolls_back(hosts, workdir: Path, containers: list[str],
                                                                stop: str) -> None:
    src, before = run_source(workdir, containers)
    ck, images = live_checkpoint(workdir, SRC, **({"LAZYRESTORE_LIVE_TIMEOUT": "3"} if stop == "timeout" else {}))
    try:
        wait_event(images, "listening", ck)
        if stop == "sigterm":  # the operator stops the live dump
            os.kill(int((images / "lazyrestore" / "migrate.pid").read_text()), signal.SIGTERM)
        code, err = finish(ck)
    finally:
        if ck.poll() is None:
            ck.kill()
            ck.communicate()
    assert code != 0, "runc checkpoint succeeded though no destination took the container"
    rolled = wait_event(images, "rolled_back", ck, timeout=30)
    assert rolled["pid"] > 0
    events = live_events(images)
    assert not [e for e in events if e["event"] == "source_ended"], events
    if stop == "timeout":
        assert [e for e in events if e["event"] == "timeout"], events
    st = state(SRC)
    assert st is not None and st["status"] == "running", st
    assert report(src, SRC).checksum == before.checksum  # it runs on where it stopped, memory intact
