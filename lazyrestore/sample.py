"""The built-in sample workload (native/workload/lr-workload.c), started restorable.

It runs as the init of its own pid namespace, the way a same-host restore needs:
  unshare -p -f setsid sh -c 'exec lr-workload ... > app.log 2>&1'
with unshare's own output kept apart from the workload's log (see CRIU-NOTES).
On SIGUSR1 every process of the tree appends a report line with its memory checksum.

With serve=N (lr-workload --serve N) its memory is a key-value table and it answers
"GET <first_key> <count>" on the abstract unix socket @lr-workload-kv-N of its network
namespace (native/workload/serve.h); kv_get() asks and checks the answer against what
those keys must give.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .errors import LazyRestoreError, VerificationFailed
from .paths import native_binary

REPORT = re.compile(r"^report role=(\S+) pid=(\d+) seq=(\d+) checksum=([0-9a-f]{16}) mib=(\d+)$")
VERIFY = re.compile(r"^verify role=(\S+) pid=\d+ (ok|BAD)\b.*$")
WRITES = re.compile(r"^writes role=main (ok|BAD)\b.*$")
# Real-time signals lr-workload acts on (see native/workload/lr-workload.c).
OPS = {"verify": 1, "fork": 2, "dontneed": 3, "munmap": 4, "mremap": 5, "kwrite": 6}
# lr-workload --serve (native/workload/serve.h): its start line, its answers and how they are computed.
KV_LISTENING = re.compile(r"^kv listening unix=@(\S+) keys=(\d+) stride=(\d+)$")
KV_OK = re.compile(r"^OK (\d+) ([0-9a-f]{16})$")
KV_WORDS = 8
KV_GOLDEN = 0x9E3779B97F4A7C15
KV_SALT = 0x4B565F5245434F52
KV_HASH_INIT = 0xCBF29CE484222325
KV_HASH_PRIME = 0x100000001B3
KV_MAX_REPLY = 256
DEFAULT_SEED = 1  # lr-workload's --seed when start() runs it
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Report:
    """One report line: role ("main", "child0", ...), pid inside the namespace, sequence, checksum."""

    role: str
    pid: int
    seq: int
    checksum: str
    mib: int


class WrongAnswer(VerificationFailed):
    """The key-value server answered something other than what its keys must give: memory is not as it was."""


@dataclass(frozen=True)
class KvTable:
    """Where a --serve workload answers and how its table is laid out (its "kv listening" line)."""

    name: str    # its abstract unix socket, without the leading NUL
    keys: int    # records in the table: keys 0 .. keys - 1
    stride: int  # key k is in slot k * stride mod keys, KV_RECORD bytes each

    def slot(self, key: int) -> int:
        return key * self.stride % self.keys

    def key_in(self, slot: int) -> int:
        """The key whose record is in slot."""
        return slot * pow(self.stride, -1, self.keys) % self.keys


def kv_record(key: int, seed: int = DEFAULT_SEED) -> list[int]:
    """The 8 words of key's record: the key, then the xorshift stream started from seed and key."""
    s = (seed ^ (key * KV_GOLDEN) ^ KV_SALT) & _MASK
    words = [key]
    for _ in range(KV_WORDS - 1):
        s ^= (s << 13) & _MASK
        s ^= s >> 7
        s ^= (s << 17) & _MASK
        words.append(s)
    return words


def kv_expected(first: int, count: int, seed: int = DEFAULT_SEED) -> str:
    """The checksum a correct answer to GET first count carries."""
    h = KV_HASH_INIT
    for key in range(first, first + count):
        for w in kv_record(key, seed):
            h = ((h ^ w) * KV_HASH_PRIME) & _MASK
    return f"{h:016x}"


def kv_check(reply: str, first: int, count: int, seed: int = DEFAULT_SEED) -> str:
    """The checksum of a correct reply to GET first count; WrongAnswer naming what differs otherwise."""
    m = KV_OK.match(reply)
    if not m:
        raise WrongAnswer(f"GET {first} {count}: expected OK {count} <checksum>, got {reply!r}")
    want = kv_expected(first, count, seed)
    if int(m[1]) != count or m[2] != want:
        raise WrongAnswer(f"GET {first} {count}: answered {reply!r}, expected OK {count} {want}")
    return want


def kv_connect(name: str, timeout: float = 30.0) -> socket.socket:
    """A connection to the abstract unix socket `name` of this thread's network namespace (ConnectionRefusedError:
    nothing listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect("\0" + name)
    except OSError:
        sock.close()
        raise
    return sock


def kv_exchange(sock: socket.socket, line: str) -> str:
    """Send one request line on a fresh connection; the reply line (without its newline). OSError on failure."""
    sock.sendall(line.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n") and len(reply) < KV_MAX_REPLY:
        chunk = sock.recv(KV_MAX_REPLY)
        if not chunk:
            break
        reply += chunk
    if not reply.endswith(b"\n"):
        raise ConnectionError(f"the reply to {line!r} ended without a newline: {reply!r}")
    return reply[:-1].decode(errors="replace")


def kv_request(name: str, line: str, timeout: float = 30.0) -> str:
    """One request line to the server at @name, its reply line. OSError if the exchange fails."""
    with kv_connect(name, timeout) as sock:
        return kv_exchange(sock, line)


def kv_get(name: str, first: int, count: int, seed: int = DEFAULT_SEED, timeout: float = 30.0) -> str:
    """GET first count from the server at @name, checked (WrongAnswer): its checksum. OSError if no answer came."""
    return kv_check(kv_request(name, f"GET {first} {count}", timeout), first, count, seed)


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

    def kv_table(self) -> KvTable:
        """Where a workload started with serve= answers (its first "kv listening" line)."""
        found = next(filter(None, map(KV_LISTENING.match, self.lines())), None)
        if found is None:
            raise LazyRestoreError(f"workload {self.pid} is not serving (no \"kv listening\" line in {self.log})")
        return KvTable(found[1], int(found[2]), int(found[3]))

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


FILLS = {"random": 0, "text": 1, "zeros": 2}  # lr-workload --fill: incompressible, compressible, 1/4 zero pages


def start(workdir: Path, mib: int, threads: int = 0, children: int = 0, child_mib: int = 16,
          timeout: float = 120.0, scanners: int = 0, heartbeat: int = 0, writers: int = 0,
          write_mib: int = 64, serve: int | None = None, fill: str = "random") -> Workload:
    """Start the workload and wait until every process has filled its memory and reported once.

    serve: answer key-value requests on the abstract unix socket @lr-workload-kv-<serve> (Workload.kv_table()).
    fill: the main region's pages, a key of FILLS (random: incompressible; text: compressible; zeros: random
    with a quarter of the pages all zeros)."""
    binary = native_binary("lr-workload")
    log = workdir / "app.log"
    args = [str(binary), "--mib", str(mib), "--threads", str(threads), "--children", str(children),
            "--child-mib", str(child_mib), "--scanners", str(scanners), "--heartbeat", str(heartbeat)]
    if writers:
        args += ["--writers", str(writers), "--write-mib", str(write_mib)]
    if serve is not None:
        args += ["--serve", str(serve)]
    if fill != "random":
        args += ["--fill", str(FILLS[fill])]
    script = f"exec {shlex.join(args)} > {shlex.quote(str(log))} 2>&1"
    with open(workdir / "unshare.log", "wb") as ulog:
        # Its own cwd: CRIU's parasite mounts a proc at ./proc.crtools of the dumped task, so two dumps of
        # tasks sharing a cwd at the same moment fail with EEXIST.
        unshare = subprocess.Popen(["unshare", "-p", "-f", "setsid", "sh", "-c", script], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=ulog, stderr=ulog, start_new_session=True)
    roles = ("main",) + tuple(f"child{i}" for i in range(children))
    deadline = time.monotonic() + timeout
    pid = procs.wait_pidns_init(unshare, deadline, "the sample workload")
    w = Workload(pid, log, roles, writers)
    while {r.role for r in w.reports()} != set(roles):
        if time.monotonic() > deadline or not procs.is_running(pid):
            w.kill()
            raise LazyRestoreError(f"sample workload did not start (see {log} and {workdir / 'unshare.log'})")
        time.sleep(0.05)
    return w
