"""Plumbing for the remote-migration benchmark: where each side runs, commands read as they go, the sysctl.

- Network: the loopback of the root namespace, or the two test hosts (netns A -> netns B).
- JsonProc: a `lazyrestore ... --json` command in the background; each JSON line it prints is
  stamped with the bench's monotonic clock when it arrives, so times can be taken across
  processes (the checkpoint's start on the source, the resume on the destination).
- pipe_max_size(): fs.pipe-max-size raised for CRIU's remote lazy mode only, and put back.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import clean_env

from lazyrestore import testhosts

LOOPBACK = "loopback"
HOSTS = "hosts"
NETWORKS = (LOOPBACK, HOSTS)
PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
CRIU_PIPE_MAX = 4194304  # CRIU's page server wants a 3.3 MB pipe (CRIU-NOTES.md)
NETEM_DELAY_MS = 1.0


@dataclass(frozen=True)
class Network:
    """Where the source (checkpoint, page server) and the destination (restore) run.

    src_ns / dst_ns: network namespace names, None for the root namespace.
    src_addr: the address the source serves pages on.
    """

    name: str
    label: str
    src_addr: str
    src_ns: str | None = None
    dst_ns: str | None = None

    def src_preexec(self) -> Callable[[], None] | None:
        return testhosts.enter(self.src_ns) if self.src_ns else None

    def dst_preexec(self) -> Callable[[], None] | None:
        return testhosts.enter(self.dst_ns) if self.dst_ns else None

    def inside_src(self) -> contextlib.AbstractContextManager[None]:
        return testhosts.inside(self.src_ns) if self.src_ns else contextlib.nullcontext()

    def free_port(self) -> int:
        """A TCP port free on the source's address now (CRIU's page server needs one given)."""
        with self.inside_src():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.bind((self.src_addr, 0))
            return int(sock.getsockname()[1])


def loopback() -> Network:
    return Network(LOOPBACK, "loopback", "127.0.0.1")


def hosts_up() -> tuple[Network, dict[str, Any]]:
    """The test hosts with a 1 ms netem delay if this kernel has netem, else without delay.

    Returns the network and what was set up: {"netem": bool, "delay_ms": float, "note": str}.
    """
    try:
        h = testhosts.up(delay_ms=NETEM_DELAY_MS)
        info = {"netem": True, "delay_ms": h.delay_ms, "note": f"netem delay {h.delay_ms:g} ms on each veth end"}
    except testhosts.NetemUnavailable as exc:
        h = testhosts.up()
        info = {"netem": False, "delay_ms": 0.0,
                "note": f"netem unavailable ({exc}); the test hosts run WITHOUT the 1 ms delay"}
    label = "test hosts A → B" + (f", netem {h.delay_ms:g} ms" if info["netem"] else " (no netem)")
    return Network(HOSTS, label, h.addr_a, h.a, h.b), info


# --- commands printing JSON lines --------------------------------------------

class JsonProc:
    """A command printing JSON lines, run in the background; events arrive as (bench time, event)."""

    def __init__(self, args: list[str], stderr: Path, preexec: Callable[[], None] | None = None) -> None:
        self.launched = time.monotonic()
        self.stderr_path = stderr
        with open(stderr, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         env=clean_env(), preexec_fn=preexec, start_new_session=True)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.eof = False
        self._partial = b""

    def read_ready(self) -> None:
        """Take whatever the command has printed so far (call when its stdout is readable)."""
        now = time.monotonic()
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.eof = True
            return
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            try:
                self.events.append((now, json.loads(line)))
            except ValueError:
                continue

    def first(self, name: str) -> tuple[float, dict[str, Any]] | None:
        return next(((t, e) for t, e in self.events if e.get("event") == name), None)

    def last(self, name: str) -> tuple[float, dict[str, Any]] | None:
        found = [(t, e) for t, e in self.events if e.get("event") == name]
        return found[-1] if found else None

    def error_text(self) -> str:
        err = self.last("error")
        if err:
            return str(err[1].get("message"))
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else f"exit {self.proc.returncode}"

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def pump(procs: list[JsonProc], until: Callable[[], bool], deadline: float) -> bool:
    """Read every command's output as it comes until until() holds (True) or the deadline passes (False)."""
    while not until():
        left = deadline - time.monotonic()
        open_ = [p for p in procs if not p.eof]
        if left <= 0 or not open_:
            return until()
        ready, _, _ = select.select([p.fd for p in open_], [], [], min(left, 1.0))
        for p in open_:
            if p.fd in ready:
                p.read_ready()
    return True


def wait_event(proc: JsonProc, name: str, deadline: float,
               others: tuple[JsonProc, ...] = ()) -> tuple[float, dict[str, Any]] | None:
    """The first `name` event of proc (reading others meanwhile), None if it ended or timed out first."""
    pump([proc, *others], lambda: proc.first(name) is not None or proc.eof, deadline)
    return proc.first(name)


def finish(proc: JsonProc, deadline: float, others: tuple[JsonProc, ...] = ()) -> int | None:
    """Read proc to its end and reap it; its exit code, None if it is still running at the deadline."""
    pump([proc, *others], lambda: proc.eof, deadline)
    try:
        return proc.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


# --- fs.pipe-max-size ----------------------------------------------------------

@contextlib.contextmanager
def pipe_max_size(value: int = CRIU_PIPE_MAX) -> Iterator[int]:
    """Raise fs.pipe-max-size to at least value for the block; the old value comes back afterwards
    (also on Ctrl-C or SIGTERM, which a second Ctrl-C cannot cut short). Yields the old value."""
    old = int(PIPE_MAX_SIZE.read_text())
    try:
        if old < value:
            PIPE_MAX_SIZE.write_text(f"{value}\n")
        yield old
    finally:
        with shielded():
            if int(PIPE_MAX_SIZE.read_text()) != old:
                PIPE_MAX_SIZE.write_text(f"{old}\n")


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for the block (cleanup that must not be cut short)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
