"""The built-in sample workload (native/workload/lr-workload.c), started restorable.

It runs as the init of its own pid namespace, the way a same-host restore needs:
  unshare -p -f setsid sh -c 'exec lr-workload ... > app.log 2>&1'
with unshare's own output kept apart from the workload's log (see CRIU-NOTES).
On SIGUSR1 every process of the tree appends a report line with its memory checksum.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .errors import LazyRestoreError
from .paths import native_binary

REPORT = re.compile(r"^report role=(\S+) pid=(\d+) seq=(\d+) checksum=([0-9a-f]{16}) mib=(\d+)$")
VERIFY = re.compile(r"^verify role=(\S+) pid=\d+ (ok|BAD)\b.*$")
WRITES = re.compile(r"^writes role=main (ok|BAD)\b.*$")
# Real-time signals lr-workload acts on (see native/workload/lr-workload.c).
OPS = {"verify": 1, "fork": 2, "dontneed": 3, "munmap": 4, "mremap": 5, "kwrite": 6}


@dataclass(frozen=True)
class Report:
    """One report line: role ("main", "child0", ...), pid inside the namespace, sequence, checksum."""

    role: str
    pid: int
    seq: int
    checksum: str
    mib: int


@dataclass
class Workload:
    """A running sample workload. pid is the host pid of its root (the namespace init)."""

    pid: int
    log: Path
    roles: tuple[str, ...]
    writers: int = 0  # --writers: verify also checks the region they keep rewriting ("writes": ok/BAD)

    def reports(self) -> list[Report]:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return [Report(m[1], int(m[2]), int(m[3]), m[4], int(m[5])) for m in map(REPORT.match, lines) if m]

    def request_report(self, timeout: float = 60.0) -> dict[str, Report]:
        """Signal the whole tree and wait for a fresh report from every role."""
        seen = len(self.reports())
        os.killpg(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = {r.role: r for r in self.reports()[seen:]}
            if all(role in fresh for role in self.roles):
                return fresh
            time.sleep(0.05)
        raise LazyRestoreError(f"workload {self.pid} did not report {self.roles} within {timeout:.0f} s; log {self.log}")

    def last_heartbeat(self) -> str | None:
        """The newest "heartbeat ..." line of the log (lr-workload --heartbeat), or None."""
        beats = [ln for ln in self.lines() if ln.startswith("heartbeat ")]
        return beats[-1] if beats else None

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def bad_lines(self) -> list[str]:
        """Every line in which the workload saw memory it did not expect."""
        return [ln for ln in self.lines() if "BAD" in ln]

    def request_verify(self, timeout: float = 60.0) -> dict[str, str]:
        """Every process compares each page with what it must hold; role -> "ok" or "BAD"."""
        seen = len(self.lines())
        os.killpg(self.pid, signal.SIGRTMIN + OPS["verify"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = self.lines()[seen:]
            found = {m[1]: m[2] for m in map(VERIFY.match, fresh) if m}
            if self.writers:
                found.update({"writes": m[1] for m in map(WRITES.match, fresh) if m})
            if all(role in found for role in self.roles + (("writes",) if self.writers else ())):
                return found
            time.sleep(0.05)
        raise LazyRestoreError(f"workload {self.pid} did not verify {self.roles} within {timeout:.0f} s; log {self.log}")

    def op(self, name: str, timeout: float = 60.0) -> str:
        """Ask the root process for one memory operation; returns its `op NAME ...` line."""
        seen = len(self.lines())
        os.kill(self.pid, signal.SIGRTMIN + OPS[name])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [ln for ln in self.lines()[seen:] if ln.startswith(f"op {name} ")]
            if done:
                return done[0]
            time.sleep(0.02)
        raise LazyRestoreError(f"workload {self.pid} did not finish op {name} within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the namespace init, which takes the whole namespace down."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(workdir: Path, mib: int, threads: int = 0, children: int = 0, child_mib: int = 16,
          timeout: float = 120.0, scanners: int = 0, heartbeat: int = 0, writers: int = 0,
          write_mib: int = 64) -> Workload:
    """Start the workload and wait until every process has filled its memory and reported once."""
    binary = native_binary("lr-workload")
    log = workdir / "app.log"
    args = [str(binary), "--mib", str(mib), "--threads", str(threads), "--children", str(children),
            "--child-mib", str(child_mib), "--scanners", str(scanners), "--heartbeat", str(heartbeat)]
    if writers:
        args += ["--writers", str(writers), "--write-mib", str(write_mib)]
    script = f"exec {shlex.join(args)} > {shlex.quote(str(log))} 2>&1"
    with open(workdir / "unshare.log", "wb") as ulog:
        # Its own cwd: CRIU's parasite mounts a proc at ./proc.crtools of the dumped task, so two dumps of
        # tasks sharing a cwd at the same moment fail with EEXIST.
        unshare = subprocess.Popen(["unshare", "-p", "-f", "setsid", "sh", "-c", script], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=ulog, stderr=ulog, start_new_session=True)
    roles = ("main",) + tuple(f"child{i}" for i in range(children))
    deadline = time.monotonic() + timeout
    pid = _wait_ns_init(unshare, deadline)
    w = Workload(pid, log, roles, writers)
    while {r.role for r in w.reports()} != set(roles):
        if time.monotonic() > deadline or not procs.is_running(pid):
            w.kill()
            raise LazyRestoreError(f"sample workload did not start (see {log} and {workdir / 'unshare.log'})")
        time.sleep(0.05)
    return w


def _wait_ns_init(unshare: subprocess.Popen[bytes], deadline: float) -> int:
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    while time.monotonic() < deadline:
        try:
            kids = [int(x) for x in children.read_text().split()]
        except OSError:
            kids = []
        for kid in kids:
            if procs.is_pidns_init(kid):
                return kid
        if unshare.poll() is not None:
            break
        time.sleep(0.02)
    unshare.kill()
    raise LazyRestoreError("unshare did not start the sample workload as a pid-namespace init")
