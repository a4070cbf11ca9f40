"""Real applications migrated lazily, as test_apps.py drives them: a service of a test host (hostservice.py) with
its clients in the hosts' namespaces (RESP, HTTP/1.1, UDP), the migration with the times a user would see, and
the figures kept in a JSON file.

Times are the test's monotonic clock, from the start of the checkpoint (`migrate`, or `checkpoint` for a local
restore): resumed (the restore's "resumed" event read), first answer (the first correct answer of a client on the
destination), resident (resumed plus lr-lazyd's resident_s: every page placed).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from lazyrestore import hostservice, procs, testhosts

from .helpers import Background, run_cli
from .migration import Source, restore_on_b

FIGURES = Path(os.environ.get("LAZYRESTORE_APPS_FIGURES", "/dev/shm/lazyrestore-apps-figures.json"))
TIMEOUT = 60.0  # seconds any one client waits for an answer (redis's DEBUG DIGEST of 1 GiB takes ~5 s)


def require_tools(*names: str) -> None:
    """Skip unless every program is installed (`make bootstrap` installs them); on CI a missing one fails."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    reason = f"needs {', '.join(missing)} (make bootstrap installs redis-server, redis-tools and nginx-light)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def start_service(host: str, workdir: Path, argv: list[str], address: str, reaper) -> hostservice.HostService:
    svc = hostservice.start(host, workdir, argv, address)
    reaper.add(svc.pid)
    return svc


def connect(host: str, address: str, port: int, wait: float = 0.0) -> socket.socket:
    """A TCP connection from test host `host` (IPv4 or IPv6 address); retried for `wait` seconds while refused
    (the service is still starting)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with testhosts.inside(host):
                return socket.create_connection((address, port), timeout=TIMEOUT)
        except OSError:  # refused, or no route yet
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


@contextmanager
def netns_of(pid: int) -> Iterator[None]:
    """Run the calling thread in pid's network namespace (sockets made inside stay there); back afterwards.
    Close such sockets before the tree is checkpointed: they keep its namespace, and so its veth, alive."""
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(target, flags=0)
        try:
            yield
        finally:
            netns.setns(saved, flags=0)
    finally:
        os.close(saved)
        os.close(target)


def start_tree(host: str, workdir: Path, argv: list[str], reaper) -> int:
    """argv as the init of its own pid namespace only, in test host `host`'s network namespace (cwd workdir,
    output in workdir/tree.log, unshare's apart: CRIU-NOTES); its pid."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = f"exec {shlex.join(argv)} > {shlex.quote(str(workdir / 'tree.log'))} 2>&1"
    with open(workdir / "unshare.log", "wb") as ulog:
        unshare = subprocess.Popen(["unshare", "-p", "-f", "setsid", "sh", "-c", cmd], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=ulog, stderr=ulog, start_new_session=True,
                                   preexec_fn=testhosts.enter(host))
    return reaper.add(procs.wait_pidns_init(unshare, time.monotonic() + 30, argv[0]))


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.02)


def link_master(host: str, name: str) -> str | None:
    """The master (bridge) of link `name` in test host `host`: None when there is no such link, "" without one."""
    with IPRoute(netns=host, flags=0) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        master = ipr.get_links(found[0])[0].get("IFLA_MASTER")
        return ipr.get_links(master)[0].get("IFLA_IFNAME") if master else ""


def children(pid: int) -> list[int]:
    """pid's children, from /proc (every thread's list)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


# ------------------------------------------------------------------------------------------------------ RESP


class RespError(Exception):
    """An error reply ("-ERR ...") from redis."""


class Resp:
    """A redis client over one TCP connection: commands as RESP arrays, replies parsed (bulk strings as bytes)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def call(self, *args: str | bytes | int) -> Any:
        words = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words))
        return self._reply()

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"redis closed the connection (read {line!r})")
        return line[:-2]

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError(f"redis closed the connection in a bulk string of {n} bytes")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise AssertionError(f"not a RESP reply: {line!r}")

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section).decode()
        return dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln and not ln.startswith("#"))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def populated_value(n: int, size: int) -> bytes:
    """The value redis's DEBUG POPULATE gives key:n with values of `size` bytes: "value:n", NUL-padded."""
    return (b"value:%d" % n).ljust(size, b"\0")[:size]


# ------------------------------------------------------------------------------------------------------ HTTP


class Http:
    """An HTTP/1.1 keep-alive connection: GETs, each answer read by its Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: lazyrestore.test\r\n\r\n".encode())
        status = self.file.readline()
        if not status:
            raise ConnectionError(f"the server closed the connection before answering GET {path}")
        code = int(status.split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = self.file.read(length)
        if len(body) != length:
            raise ConnectionError(f"GET {path}: {len(body)} of {length} bytes before the connection closed")
        return code, headers, body

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def http_once(host: str, address: str, path: str, port: int, inside_of: int | None = None) -> bytes:
    """GET path on a new connection (from test host `host`, or from inside pid inside_of's network namespace);
    the body, after checking the status is 200."""
    if inside_of is None:
        conn = Http(connect(host, address, port))
    else:
        with netns_of(inside_of):
            conn = Http(socket.create_connection((address, port), timeout=TIMEOUT))
    try:
        code, _, body = conn.get(path)
        assert code == 200, f"GET {path} from {address}:{port}: status {code}"
        return body
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ UDP


def udp_ask(sock: socket.socket, request: bytes, tries: int = 5, wait: float = 3.0) -> bytes:
    """Send a datagram and return the answer, sending again after `wait` seconds of silence (UDP may drop)."""
    sock.settimeout(wait)
    for _ in range(tries):
        sock.send(request)
        try:
            return sock.recv(65536)
        except socket.timeout:
            continue
    raise AssertionError(f"no answer to {request!r} after {tries} tries")


# ------------------------------------------------------------------------------------------- client loops


@dataclass
class ClientLoop:
    """A client asking the service again and again from test host `host` until stopped, in a thread: ask(conn,
    rng) raises on a wrong answer. Keeps the first error, the number of answers and when the first one came."""

    host: str
    opener: Callable[[], Any]
    ask: Callable[[Any, random.Random], None]
    answers: int = 0
    first_answer: float | None = None
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(1)
        conn = None
        try:
            with testhosts.inside(self.host):
                conn = self.opener()
            while not self._stop.is_set():
                self.ask(conn, rng)
                if self.first_answer is None:
                    self.first_answer = time.monotonic()
                self.answers += 1
        except BaseException as exc:  # noqa: BLE001 (kept for the test's thread to raise)
            self.errors.append(exc)
        finally:
            if conn is not None:
                conn.close()

    def wait_first(self, timeout: float = TIMEOUT) -> float:
        deadline = time.monotonic() + timeout
        while self.first_answer is None and not self.errors and time.monotonic() < deadline:
            time.sleep(0.001)
        self.check()
        assert self.first_answer is not None, f"no answer in {timeout} s"
        return self.first_answer

    def stop(self) -> int:
        """Stop; the number of answers, after raising the loop's error if there was one."""
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the client loop is stuck"
        self.check()
        return self.answers

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"the client loop failed after {self.answers} correct answers: "
                                 f"{self.errors[0]!r}") from self.errors[0]


# --------------------------------------------------------------------------------------------- migrations


@dataclass
class Moved:
    """A tree checkpointed and lazily restored, still draining: pid on `host`; times from t0."""

    pid: int
    host: str
    t0: float
    checkpoint: dict[str, Any]
    resumed_at: float
    run: Background
    source: Source | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> dict[str, Any]:
        """Wait until every page is placed; the restore's summary (and the source's, checked)."""
        res = self.run.finish()
        assert res.code == 0, res.stderr
        self.summary = res.last("summary")
        assert self.summary["lazy"] is True and self.summary["resident_s"] is not None, self.summary
        if self.source is not None:
            served = self.source.run.finish(timeout=60)
            assert served.code == 0, served.stderr
            assert served.last("summary")["delivered"] == 1
        return self.summary

    def figures(self, first_answer: float | None = None) -> dict[str, Any]:
        """Times from the checkpoint's start (s), sizes (bytes), and the drain as lr-lazyd counted it."""
        cp, s = self.checkpoint, self.summary
        out = {
            "frozen_s": round(cp["frozen_s"], 3),
            "checkpoint_to_resumed_s": round(self.resumed_at - self.t0, 3),
            "resume_s": round(s["resume_s"], 3),
            "resident_after_resume_s": round(s["resident_s"], 3),
            "checkpoint_to_resident_s": round(self.resumed_at - self.t0 + s["resident_s"], 3),
            "lazy_bytes": cp["lazy_pages"] * cp["page_size"],
            "eager_bytes": cp["eager_pages"] * cp["page_size"],
            "images_bytes": cp["images_bytes"],
            "drain_bytes": s["drain_bytes"],
            "fault_bytes": s["fault_bytes"],
            "faults": s["faults"],
            "fault_p99_us": s["lat_p99_us"],
        }
        if first_answer is not None:
            out["checkpoint_to_first_answer_s"] = round(first_answer - self.t0, 3)
        out["steps"] = self.steps()
        return out

    def steps(self) -> dict[str, float]:
        """When each command got to each step, in its own clock (s since it started): where the time went."""
        runs = {"restore": self.run} if self.source is None else {"migrate": self.source.run, "restore": self.run}
        return {f"{name}.{e['event']}": e["t"] for name, run in runs.items() for e in run.events
                if e["event"] in ("dumped", "checkpointed", "listening", "fetched", "resumed")}

    def kill(self) -> None:
        """After a failure: stop the CLI runs still going (the restored tree is the reaper's)."""
        for run in (self.run, self.source.run if self.source else None):
            if run is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait(30)


@contextmanager
def migrate_a_to_b(pid: int, workdir: Path, reaper, *extra: str) -> Iterator[Moved]:
    """`migrate` on host A, `restore --from` on host B (lazy); the restored tree is running when this yields."""
    t0 = time.monotonic()
    source = Source(["migrate", "--pid", str(pid), "--images", str(workdir / "images"),
                     "--listen", f"{testhosts.ADDR_A}:0", *extra])
    moved = None
    try:
        run = restore_on_b(source.address, workdir / "images", workdir / "dst")
        resumed_at = time.monotonic()
        restored = reaper.add(run.first("resumed")["pid"])
        moved = Moved(restored, testhosts.HOST_B, t0, source.run.first("checkpointed"), resumed_at, run, source)
        yield moved
    finally:
        if moved is not None:
            moved.kill()
        elif source.run.proc.poll() is None:
            source.run.kill()


@contextmanager
def restore_here(pid: int, workdir: Path, reaper, letter: str, *extra: str) -> Iterator[Moved]:
    """`checkpoint` then `restore --images --lazy`, both on test host `letter` (a or b); the restored tree is
    running when this yields."""
    images = workdir / "images"
    t0 = time.monotonic()
    res = run_cli("checkpoint", "--pid", str(pid), "--images", str(images), *extra, host=letter)
    assert res.code == 0, res.stderr
    run = Background(["restore", "--images", str(images), "--lazy"], ("resumed",), host=letter)
    resumed_at = time.monotonic()
    restored = reaper.add(run.first("resumed")["pid"])
    moved = Moved(restored, testhosts.host_name(letter), t0, res.last("summary"), resumed_at, run)
    try:
        yield moved
    finally:
        moved.kill()


def record(name: str, figures: dict[str, Any]) -> None:
    """Print the figures and keep them under `name` in FIGURES (a JSON object, other tests' entries kept)."""
    print(f"\nFIGURES {name}: {json.dumps(figures, sort_keys=True)}")
    try:
        kept = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        kept = {}
    kept[name] = {**figures, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = FIGURES.with_name(FIGURES.name + ".tmp")
    tmp.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    tmp.replace(FIGURES)
