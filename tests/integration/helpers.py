"""Helpers for integration tests: the CLI as a runtime would call it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyrestore import sample, testhosts

from .reaper import Reaper


@dataclass
class CliResult:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def last(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == name]
        assert found, f"no {name!r} event in {self.events}; stderr: {self.stderr}"
        return found[-1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, host: str | None = None) -> CliResult:
    """Run `lazyrestore ARGS --json` in a subprocess, as a runtime would (in test host `host`: a or b)."""
    proc = subprocess.run([sys.executable, "-m", "lazyrestore.cli", *args, "--json"], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          preexec_fn=_in_host(host))
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return CliResult(proc.returncode, events, proc.stderr)


def checkpoint(workload: sample.Workload, images: Path, *extra: str) -> dict[str, Any]:
    res = run_cli("checkpoint", "--pid", str(workload.pid), "--images", str(images), *extra)
    assert res.code == 0, res.stderr
    return res.last("summary")


@contextmanager
def small_checkpoint(prefix: str, mib: int = 32, children: int = 0) -> Iterator[Path]:
    """A checkpoint of a small sample workload on tmpfs (the workload is gone), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    try:
        w = sample.start(base, mib, children=children)
        try:
            checkpoint(w, base / "images")
        finally:
            w.kill()
        yield base / "images"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def restore(images: Path, reaper: Reaper, workload: sample.Workload) -> sample.Workload:
    res = run_cli("restore", "--images", str(images))
    assert res.code == 0, res.stderr
    pid = reaper.add(res.last("summary")["pid"])
    return sample.Workload(pid, workload.log, workload.roles)


def _in_host(host: str | None) -> Callable[[], None]:
    """The child's preexec: into test host `host` (if any), with SIGINT at its default as in a terminal (a
    background job of a non-interactive shell, e.g. `make reliability` under nohup, inherits it ignored)."""
    enter = None if host is None else testhosts.enter(testhosts.host_name(host))

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if enter:
            enter()

    return preexec


class Background:
    """`lazyrestore ARGS --json` in the background (in test host `host`), its events read up to one of `until`."""

    def __init__(self, args: list[str], until: tuple[str, ...], host: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "lazyrestore.cli", *args, "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, preexec_fn=_in_host(host),
                                     env={**os.environ, "LAZYRESTORE_SANITIZED": "1", **(env or {})})
        self.events: list[dict[str, Any]] = []
        self.read_until(*until)

    def read_until(self, *names: str) -> dict[str, Any] | None:
        """Events up to the first named one (or "error", or the end); that event, else None."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))
            if self.events[-1]["event"] in (*names, "error"):
                return self.events[-1] if self.events[-1]["event"] in names else None
        return None

    def first(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e["event"] == name]
        assert found, f"no {name!r} event: {self.events}; stderr: {self.stderr_now()}"
        return found[0]

    def stderr_now(self) -> str:
        return "" if self.proc.poll() is None else (self.proc.stderr.read() if self.proc.stderr else "")

    def finish(self, timeout: float = 300) -> CliResult:
        """Wait for the end; the events after those read so far. Not communicate(): it reads the pipes' fds
        and would miss lines the line iterator of read_until had already buffered."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        texts: dict[str, str] = {}
        readers = [threading.Thread(target=lambda k=k, f=f: texts.__setitem__(k, f.read()), daemon=True)
                   for k, f in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for r in readers:
            r.start()
        deadline = time.monotonic() + timeout
        for r in readers:
            r.join(max(0.0, deadline - time.monotonic()))
        if any(r.is_alive() for r in readers):
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        self.proc.wait(max(1.0, deadline - time.monotonic()))
        self.events += [json.loads(line) for line in texts["out"].splitlines() if line.strip()]
        return CliResult(self.proc.returncode, self.events, texts["err"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(timeout=60)


class LazyRun(Background):
    """`lazyrestore restore --lazy --json` running in the background, as a runtime would drive it."""

    def __init__(self, images: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        super().__init__(["restore", "--images", str(images), "--lazy", *extra], ("resumed",), env=env)

    @property
    def pid(self) -> int:
        return self.first("resumed")["pid"]

    @property
    def workdir(self) -> Path:
        return Path(self.first("listening")["workdir"])


@contextmanager
def pipe_max_size(size: int) -> Iterator[None]:
    """CRIU's page server needs a 3.3 MB pipe (without CAP_SYS_RESOURCE it cannot exceed this sysctl)."""
    path = Path("/proc/sys/fs/pipe-max-size")
    old = path.read_text().strip()
    path.write_text(str(size))
    try:
        yield
    finally:
        path.write_text(old)


def flip_last_byte(path: Path) -> None:
    """Invert the file's last byte in place (a page server holding it open sends what it reads)."""
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))


def wait_text(path: Path, text: str, timeout: float = 30) -> str:
    """path's text once it holds text (or what it holds at the timeout)."""
    deadline = time.monotonic() + timeout
    while text not in (found := path.read_text() if path.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    return found
