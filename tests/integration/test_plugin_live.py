"""The CRIU plugin's live dump (LAZYRESTORE_LIVE=HOST:PORT in CRIU's environment) where it must not happen or
cannot go on: real `criu dump` runs with only the plugin built into a temporary directory (`-L DIR`). Each must
fail the dump and leave the tree running with its memory as it was; a live dump that works is tested with runc
(test_runc.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lazyrestore import criu, procs, sample

from .test_plugin_version import build_plugin, criu_env, criu_run

LIVE = {"LAZYRESTORE_LIVE": "127.0.0.1:0"}


@pytest.fixture
def plugin(workdir: Path) -> Path:
    return build_plugin(workdir / "plugin")


def start(workdir: Path, reaper) -> tuple[sample.Workload, str]:
    w = sample.start(workdir, 16)
    reaper.add(w.pid)
    return w, w.request_report()["main"].checksum


def live_dump(workdir: Path, w: sample.Workload, libdir: Path, *extra: str,
              env: dict[str, str] = LIVE) -> tuple[int, str, Path]:
    images = workdir / "images"
    images.mkdir()
    res = criu_run("dump", "-t", str(w.pid), "-D", str(images), "-o", "dump.log", "-v4", *extra, libdir=libdir, env=env)
    return res.returncode, (images / "dump.log").read_text(), images


@pytest.mark.parametrize("extra, said", [
    (("--leave-running",), "this dump is to leave it running (--leave-running or --leave-stopped): two copies"),
    (("--lazy-pages",), "but this dump is already --lazy-pages"),
])
def test_a_live_dump_the_plugin_refuses_fails_and_the_tree_runs_on(workdir: Path, reaper, plugin: Path,
                                                                   extra: tuple[str, ...], said: str) -> None:
    w, before = start(workdir, reaper)
    code, log, images = live_dump(workdir, w, plugin, *extra)
    assert code != 0, log[-3000:]
    assert said in log, log[-3000:]
    assert not (images / "lazyrestore" / "live.jsonl").exists()  # no live-dump process was started
    assert w.request_report()["main"].checksum == before


def test_a_plugin_built_for_another_criu_refuses_a_live_dump(workdir: Path, reaper) -> None:
    libdir = build_plugin(workdir / "plugin-0.0.0", built_for="0.0.0")
    w, before = start(workdir, reaper)
    code, log, _ = live_dump(workdir, w, libdir)
    assert code != 0, log[-3000:]
    assert "asks for a live dump, but this plugin was not built for this CRIU" in log, log[-3000:]
    assert w.request_report()["main"].checksum == before


def test_a_plugin_built_for_a_criu_that_reads_the_options_early_refuses_a_live_dump(workdir: Path, reaper) -> None:
    libdir = build_plugin(workdir / "plugin-late", None, "DUMP_LIVE=0")
    w, before = start(workdir, reaper)
    code, log, _ = live_dump(workdir, w, libdir)
    assert code != 0, log[-3000:]
    assert "reads --lazy-pages, --ps-socket or --status-fd before it starts plugins" in log, log[-3000:]
    assert w.request_report()["main"].checksum == before


def test_a_live_dump_that_cannot_serve_rolls_back(workdir: Path, reaper, plugin: Path) -> None:
    """The address is checked once CRIU holds the tree (before, a rollback could not undo CRIU's lock): a bad one
    rolls back, CRIU resumes the tree and fails the dump."""
    w, before = start(workdir, reaper)
    code, log, images = live_dump(workdir, w, plugin, env={"LAZYRESTORE_LIVE": "no-such-address"})
    assert code != 0, log[-3000:]
    assert "live dump: the tree stays stopped" in log and "Lazy pages transfer FAILED" in log, log[-3000:]
    deadline = time.monotonic() + 30
    while True:  # the live-dump process writes its last events after CRIU has exited
        events = [json.loads(line) for line in (images / "lazyrestore" / "live.jsonl").read_text().splitlines()]
        if events and events[-1]["event"] == "error" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    names = [e["event"] for e in events]
    assert "checkpointed" in names and "rolled_back" in names and names[-1] == "error", events
    assert "no-such-address" in events[-1]["message"]
    assert w.request_report()["main"].checksum == before


def test_a_live_dump_says_ready_on_the_runtime_s_status_fd_once_it_serves(workdir: Path, reaper, plugin: Path) -> None:
    """A runtime's own --status-fd gets its byte once the kit is written and the tree served (not when CRIU is
    ready: the destination needs the kit); stopped then, the dump rolls back and CRIU fails it."""
    w, before = start(workdir, reaper)
    images = workdir / "images"
    images.mkdir()
    r, wfd = os.pipe()
    dump = subprocess.Popen([criu.find_criu().path, "dump", "-t", str(w.pid), "-D", str(images), "-o", "dump.log",
                             "-v4", "--status-fd", str(wfd), "-L", str(plugin)], pass_fds=(wfd,), env=criu_env(LIVE),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.close(wfd)
    try:
        assert procs.ready_byte(r, 60), (images / "dump.log").read_text()[-3000:]
        events = [json.loads(line) for line in (images / "lazyrestore" / "live.jsonl").read_text().splitlines()]
        assert "listening" in [e["event"] for e in events], events
        assert (images / "lazyrestore" / "kit" / "lazyrestore" / "source.json").is_file()
        os.kill(int((images / "lazyrestore" / "migrate.pid").read_text()), signal.SIGTERM)
        assert dump.wait(timeout=60) != 0
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    assert "Lazy pages transfer FAILED" in (images / "dump.log").read_text()
    assert w.request_report()["main"].checksum == before
