"""lr-pageserver against a hostile network: replayed handshakes, other protocol versions, truncated frames,
pipelined overlapping requests, out-of-range requests, slow-loris and non-reading clients, connection floods.

The checkpoint is synthetic (no CRIU run): a lazy record of 66 checksum blocks, unaligned at both ends, so
block ranges can overlap and a request can ask for more than LR_PAGES_MAX_DATA. Every test runs against both
page stores: "images", every record in pages-1.img, and "live" (--live PIDMAP), the lazy records read from the
memory of two stopped helper processes mapped at the records' exact addresses (the eager record stays in
pages-1.img); the pages a client gets are checked against pages-1.img or that memory, their sums against the
index or XXH3 of that memory. The server is lr-pageserver, or its ASan/UBSan build when LAZYRESTORE_SANITIZED
is set (test_pageserver.Server, which always runs the sanitized build, is reused with the build chosen here).
Every refusal must carry a named ERROR (or, when the peer cannot read one, a log line), and after every attack
an honest client is still served (the files, and the right first block of every record). The memory and
descriptor figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import os
import random
import resource
import select
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash

from lazyrestore import lazyindex, livetree, secret
from lazyrestore.lazyindex import RANGE_LAZY, RANGE_LIVE, IndexEntry, LazyIndex
from lazyrestore.paths import native_binary

from . import test_pageserver, wire
from .test_live_store import memory, stop
from .test_pageserver import Server

SANITIZED = bool(os.environ.get("LAZYRESTORE_SANITIZED"))
PS, BS = 4096, 64 * 1024
MIB = 1 << 20
# Records of the synthetic checkpoint: (pid, lazy, start, pages). BIG has 66 blocks: 13 pages, 64 full, 3 pages.
LAYOUT = ((1, True, 0x10003000, 1040), (1, False, 0x20000000, 3), (1, True, 0x30000000, 1), (2, True, 0x10000000, 16))
BIG, EAGER, ONE_PAGE, ALIGNED = range(4)
BIG_BLOCKS = 66
TASKS = tuple(sorted({pid for pid, *_ in LAYOUT}))  # the live store reads each from a helper process of its own
LIVE = RANGE_LAZY | RANGE_LIVE
GENEROUS = 30.0  # seconds: waits that only end early, never a measure of speed

# A task of the live store: maps anonymous memory at the exact (address, bytes) of its argv, fills it with random
# bytes, says "ready", then waits to be stopped (MAP_FIXED_NOREPLACE: nothing of its own is moved out of the way).
HELPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
for arg in sys.argv[1:]:
    addr, size = (int(x, 0) for x in arg.split(":"))
    got = libc.mmap(addr, size, 3, 0x22 | 0x100000, -1, 0)  # rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
    if got != addr:
        sys.exit(f"mmap at {addr:#x}: got {got}, errno {ctypes.get_errno()}")
    ctypes.memmove(addr, os.urandom(size), size)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@dataclass(frozen=True)
class Checkpoint:
    """The synthetic checkpoint as one store serves it, and what PAGES for any block range must carry: the
    index's checksums and pages-1.img's bytes, or for a live record the helper's memory and XXH3 of it."""

    path: Path
    store: str  # "images" or "live"
    server_args: tuple[str, ...]
    index: LazyIndex = field(repr=False)
    data: tuple[bytes, ...] = field(repr=False)  # each record's bytes: pages-1.img's, or its stopped task's memory

    def blocks(self, rec: int, first: int, n: int) -> list[bytes]:
        e = self.index.entries[rec]
        return [self.data[rec][addr - e.start:][:length]
                for addr, length in lazyindex.block_spans(e.start, e.nr_pages * PS, BS)[first:first + n]]

    def sums(self, rec: int, first: int, n: int) -> tuple[int, ...]:
        e = self.index.entries[rec]
        if e.flags & RANGE_LIVE:  # the index holds 0s: the server sums the bytes as it reads them
            return tuple(xxhash.xxh3_64_intdigest(b) for b in self.blocks(rec, first, n))
        return e.checksums[first:first + n]

    def check(self, p: wire.Pages, want: tuple[int, int, int]) -> None:
        assert (p.record, p.first_block, p.nblocks) == want
        assert p.checksums == self.sums(*want)
        pos = 0
        for want_block, want_sum in zip(self.blocks(*want), p.checksums):
            block = p.data[pos:pos + len(want_block)]
            assert xxhash.xxh3_64_intdigest(block) == want_sum
            assert block == want_block, f"{self.store}: record {p.record}: bytes differ at {pos}"
            pos += len(want_block)
        assert pos == len(p.data)


def build_checkpoint(images: Path, live: bool) -> LazyIndex:
    """A checkpoint lr-pageserver serves: pages-1.img, lazyrestore/{index.bin,manifest.json,secret}, tiny.img.
    live: the lazy records are RANGE_LIVE (pages id, offset and checksums 0), only the eager one is in pages-1.img."""
    entries, offset = [], 0
    for pid, lazy, start, n in LAYOUT:
        if lazy and live:
            entries.append(IndexEntry(pid, LIVE, start, n, 0, 0, (0,) * lazyindex.block_count(start, n * PS, BS)))
        else:
            entries.append(IndexEntry(pid, RANGE_LAZY if lazy else 0, start, n, 1, offset))
            offset += n * PS
    (images / "lazyrestore").mkdir(parents=True)
    (images / "pages-1.img").write_bytes(os.urandom(offset))
    summed = iter(lazyindex.checksum_entries([e for e in entries if not e.flags & RANGE_LIVE],
                                             images / "pages-1.img", PS, BS))
    index = LazyIndex(PS, BS, len(TASKS), os.urandom(16),
                      tuple(e if e.flags & RANGE_LIVE else next(summed) for e in entries))
    lazyindex.write(images / "lazyrestore" / "index.bin", index)
    (images / "lazyrestore" / "manifest.json").write_text("{}\n")
    (images / "tiny.img").write_bytes(b"ok")
    secret.create(images)
    return index


def start_tasks(procs: list[subprocess.Popen]) -> dict[int, int]:
    """A stopped helper per task holding its lazy records at their addresses (each added to procs as it starts,
    for kill_tasks); returns vpid -> host pid."""
    for vpid in TASKS:
        ranges = [f"{start:#x}:{n * PS}" for pid, lazy, start, n in LAYOUT if pid == vpid and lazy]
        procs.append(subprocess.Popen([sys.executable, "-c", HELPER, *ranges], stdout=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL))
        line = procs[-1].stdout.readline()
        assert line == "ready\n", f"the helper of task {vpid} said {line!r}"
        stop(procs[-1].pid)  # the live store serves only a stopped tree
    return {vpid: p.pid for vpid, p in zip(TASKS, procs)}


def kill_tasks(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(timeout=20)
        proc.stdout.close()


def record_bytes(images: Path, entries: tuple[IndexEntry, ...], hosts: dict[int, int]) -> tuple[bytes, ...]:
    """Each record's bytes: a live record's from its task's memory (hosts: vpid -> host pid), others' from
    pages-1.img."""
    pages = (images / "pages-1.img").read_bytes()
    return tuple(memory(hosts[e.pid], e.start, e.nr_pages * PS) if e.flags & RANGE_LIVE
                 else pages[e.offset:e.offset + e.nr_pages * PS] for e in entries)


@pytest.fixture(scope="module", params=["images", "live"])
def images(request: pytest.FixtureRequest) -> Iterator[Checkpoint]:
    assert os.sysconf("SC_PAGE_SIZE") == PS
    base = Path(tempfile.mkdtemp(prefix="lazyrestore-hostile-", dir="/dev/shm"))
    live = request.param == "live"
    tasks: list[subprocess.Popen] = []
    try:
        hosts = start_tasks(tasks) if live else {}
        path = base / "images"
        index = build_checkpoint(path, live)
        args = ("--live", str(livetree.write_pid_map(path, hosts))) if live else ()
        yield Checkpoint(path, request.param, args, index, record_bytes(path, index.entries, hosts))
    finally:
        kill_tasks(tasks)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def build_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    if SANITIZED:  # ASan keeps up to 256 MiB of freed memory by default: it would read as growth of RSS
        monkeypatch.setenv("ASAN_OPTIONS", ":".join(filter(None, (os.environ.get("ASAN_OPTIONS"),
                                                                  "quarantine_size_mb=16"))))
    else:
        monkeypatch.setattr(test_pageserver, "native_binary", lambda name: native_binary(name.removeprefix("san/")))


def until(done: Callable[[], bool]) -> bool:
    """Poll done() for up to GENEROUS seconds."""
    deadline = time.monotonic() + GENEROUS
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Watched(Server):
    """A Server whose events are drained as they come (a full pipe would block it), with its RSS and fds."""

    def __init__(self, images: Path, *extra: str) -> None:
        super().__init__(images, *extra)
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self) -> None:
        for _ in self.events:  # to EOF, when the server exits
            pass

    def rss(self) -> int:
        """Resident bytes (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for lr-pageserver {self.proc.pid}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu(self) -> float:
        """User + system seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_fds(self, want: int) -> int:
        """Wait (generously) until at most `want` descriptors are open; returns the count."""
        until(lambda: self.fds() <= want or self.proc.poll() is not None)
        return self.fds()

    def wait_log(self, text: str) -> str:
        until(lambda: text in self.log_text())
        return self.log_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=20)
        self.drain.join(timeout=20)
        return super().stop()


@contextmanager
def serving(images: Checkpoint, *extra: str) -> Iterator[Watched]:
    s = Watched(images.path, *images.server_args, *extra)
    try:
        yield s
    finally:
        code = s.stop()
    log = s.log_text()
    assert code == 0, log
    assert "ERROR: AddressSanitizer" not in log and "runtime error" not in log, log


@pytest.fixture
def server(images: Checkpoint) -> Iterator[Watched]:
    with serving(images) as s:
        yield s


def secret_of(images: Checkpoint) -> bytes:
    return test_pageserver.secret_of(images.path)


def honest(s: Watched, images: Checkpoint) -> wire.Client:
    return test_pageserver.honest(s, images.path)


def assert_still_serving(s: Watched, images: Checkpoint) -> None:
    """An honest client is served: the files (as test_pageserver.assert_still_serving), and the first block of
    every record, checked against the store's bytes."""
    c = honest(s, images)
    assert "lazyrestore/manifest.json" in c.list_files()
    for record in range(len(LAYOUT)):
        c.request(wire.GET_PAGES_T, wire.PAGE_REQ.pack(record, 0, 1))
        f = c.recv()
        assert f.type == wire.PAGES_T, f
        images.check(wire.parse_pages(f.payload), (record, 0, 1))
    c.close()


@contextmanager
def clients(n: int, port: int, paced: Watched | None = None) -> Iterator[list[wire.Client]]:
    """n connections, closed on exit. paced: opened 32 at a time, each batch accepted by that server before the
    next (a burst overflows the listen backlog of 64, and the kernel completes the rest seconds later)."""
    with ExitStack() as stack:
        out: list[wire.Client] = []
        base = paced.fds() if paced else 0
        for _ in range(n):
            out.append(wire.Client(port, timeout=GENEROUS))
            stack.callback(out[-1].close)
            if paced and (len(out) % 32 == 0 or len(out) == n):
                assert until(lambda: paced.fds() >= base + len(out)), "the server did not accept every connection"
        yield out


def served_after_flood(s: Watched, images: Checkpoint) -> None:
    """An honest client is served once the flood has drained: connections the kernel still completes late
    (their SYN-ACK retried after the backlog overflowed) may keep arriving for a while, and each evicts the
    oldest connection that has not authenticated at --max-conns, an honest one mid-handshake too (its ERROR
    says so); it tries again."""
    def served() -> bool:
        try:
            assert_still_serving(s, images)
            return True
        except (ConnectionError, wire.PeerError):
            return False
    assert until(served), s.log_text()[-2000:]


def refused(c: wire.Client, code: int) -> str:
    """The ERROR c gets next (it must be `code`), after which the server closes; returns its message."""
    with pytest.raises(wire.PeerError) as info:
        while True:
            c.recv()
    assert info.value.code == code, info.value
    assert info.value.message
    assert c.closed()
    return info.value.message


def readable(conns: list[wire.Client]) -> set[int]:
    """The indices of the connections that have something to read now (a frame, or the end of the stream)."""
    ready, _, _ = select.select([c.sock for c in conns], [], [], 0)
    return {i for i, c in enumerate(conns) if c.sock in ready}


def pages_req(record: int, first: int, n: int, req_id: int, type_: int = wire.GET_PAGES_T) -> bytes:
    return wire.frame(type_, wire.PAGE_REQ.pack(record, first, n), req_id)


def hello(version: int = wire.VERSION) -> bytes:
    return wire.frame(wire.HELLO_T, wire.HELLO.pack(version, wire.URGENT, 0, os.urandom(32)))


# --- attacks: each leaves the server as it found it, and checks an honest client is served after it ---------


def replayed_handshake(s: Watched, images: Checkpoint, channel: int = wire.URGENT) -> None:
    """An honest client's HELLO + AUTH, replayed verbatim on a new connection: the server's fresh nonce voids it."""
    original = wire.Client(s.port, record=True)
    original.handshake(secret_of(images))
    recorded = original.sent
    if channel == wire.BULK:
        bulk = wire.Client(s.port, record=True)
        bulk.handshake(secret_of(images), wire.BULK, original.session)
        bulk.close()  # its session waits for a bulk channel again
        recorded = bulk.sent
    replay = wire.Client(s.port)
    replay.sock.sendall(b"".join(recorded))
    assert replay.recv().type == wire.CHALLENGE_T
    assert "wrong proof" in refused(replay, wire.ERR_AUTH)
    assert "lazyrestore/manifest.json" in original.list_files()
    original.close()
    assert_still_serving(s, images)


def other_version(s: Watched, images: Checkpoint, version: int = 1, tail: bytes = b"") -> None:
    c = wire.Client(s.port)
    c.send(wire.HELLO_T, wire.HELLO.pack(version, wire.URGENT, 0, os.urandom(32)) + tail)
    message = refused(c, wire.ERR_VERSION)
    assert f"version {version}" in message and f"speaks {wire.VERSION}" in message, message
    assert_still_serving(s, images)


def truncated_frame(s: Watched, images: Checkpoint, authenticated: bool = True, cut: str = "payload",
                    half_close: bool = True) -> None:
    """A frame cut in its header or payload, then the end of the stream (shutdown, or a whole close)."""
    c = honest(s, images) if authenticated else wire.Client(s.port)
    whole = pages_req(BIG, 0, 1, 9) if authenticated else hello()
    sent = 10 if cut == "header" else wire.FRAME.size + 5
    of = f"{sent} of {wire.FRAME.size if cut == 'header' else len(whole)} bytes"
    c.sock.sendall(whole[:sent])
    peer = "127.0.0.1:%d" % c.sock.getsockname()[1]
    if half_close:
        c.sock.shutdown(socket.SHUT_WR)
        message = refused(c, wire.ERR_PROTOCOL)
        assert "truncated" in message and of in message, message
    else:
        c.close()
        log = s.wait_log(f"({peer}): protocol error: truncated")
        assert of in log.split(f"({peer}): protocol error: truncated")[1].splitlines()[0], log
    c.close()
    assert_still_serving(s, images)


def pipelined_pages(s: Watched, images: Checkpoint, count: int = 120) -> None:
    """Overlapping and duplicate GET_PAGES, sent in one write before reading: each answered, with the right data."""
    rng = random.Random(count)
    wants = [(BIG, 1, 32), (BIG, 0, 32), (BIG, 34, 32), (BIG, 65, 1), (BIG, 0, 1), (BIG, 0, 1), (EAGER, 0, 1),
             (ONE_PAGE, 0, 1), (ONE_PAGE, 0, 1), (ALIGNED, 0, 1), (BIG, 10, 8), (BIG, 10, 8), (BIG, 12, 4)]
    while len(wants) < count:
        first = rng.randrange(BIG_BLOCKS)
        wants.append((BIG, first, rng.randint(1, min(8, BIG_BLOCKS - first))))
    c = honest(s, images)
    c.sock.sendall(b"".join(pages_req(*w, req_id=i + 1) for i, w in enumerate(wants)))
    answered = set()
    for _ in wants:
        f = c.recv()
        assert f.type == wire.PAGES_T and 1 <= f.req_id <= len(wants) and f.req_id not in answered, f.req_id
        images.check(wire.parse_pages(f.payload), wants[f.req_id - 1])
        answered.add(f.req_id)
    c.close()


OUT_OF_RANGE = [  # (record, first_block, nblocks)
    (BIG, 5, 0), (BIG, 0, 1 << 31), (BIG, 1, (1 << 32) - 1), (BIG, BIG_BLOCKS, 1), (BIG, BIG_BLOCKS - 1, 2),
    (BIG, (1 << 32) - 1, 1), ((1 << 64) - 1, 0, 1), (len(LAYOUT), 0, 1), (BIG, 1, 33), (BIG, 0, 34)]


def out_of_range(s: Watched, images: Checkpoint, record: int = (1 << 64) - 1, first: int = 0, n: int = 1) -> None:
    c = honest(s, images)
    c.sock.sendall(pages_req(record, first, n, 5))
    message = refused(c, wire.ERR_RANGE)
    assert f"record {record} blocks {first}+{n}" in message and str(wire.PAGES_MAX_DATA) in message, message
    assert_still_serving(s, images)


def slow_loris(s: Watched, images: Checkpoint, n: int = 200, handshake_ms: int = 0) -> float:
    """n connections that send one byte of a HELLO a second: each dropped with ERROR timeout (after handshake_ms,
    when given). While they are all connected (the handshake time must leave room for that: 3 s or more), an
    honest client is served; returns the seconds it took."""
    base = s.fds()
    with clients(n, s.port, paced=s) as loris:
        whole, sent = hello(), 0
        timeouts: dict[int, str] = {}
        sel = selectors.DefaultSelector()
        for i, c in enumerate(loris):
            sel.register(c.sock, selectors.EVENT_READ, i)
        deadline, served_in, next_drip = time.monotonic() + GENEROUS, None, 0.0
        while len(timeouts) < n and time.monotonic() < deadline:
            if time.monotonic() >= next_drip:  # one more byte to every connection still open
                for i, c in enumerate(loris):
                    if i not in timeouts:
                        try:
                            c.sock.send(whole[sent:sent + 1])
                        except OSError:
                            pass  # closed by the server: its ERROR is read below
                sent, next_drip = sent + 1, time.monotonic() + 1.0
                if served_in is None:  # every attacker is mid-HELLO now
                    assert s.fds() >= base + n
                    t0 = time.monotonic()
                    assert_still_serving(s, images)
                    served_in = time.monotonic() - t0
            for key, _ in sel.select(timeout=0.2):
                sel.unregister(key.fileobj)
                timeouts[key.data] = refused(loris[key.data], wire.ERR_TIMEOUT)
        sel.close()
        assert sent < len(whole), "the HELLOs were finished: the attack was not slow enough"
        assert len(timeouts) == n, f"{n - len(timeouts)} slow connections were not dropped in {GENEROUS} s"
        if handshake_ms:
            assert all(m == f"did not authenticate within {handshake_ms} ms" for m in timeouts.values())
    assert s.wait_fds(base) == base
    assert served_in is not None
    return served_in


def never_reads(s: Watched, images: Checkpoint) -> int:
    """An authenticated client that pipelines requests (2 MiB of pages each, lists, files) and reads nothing:
    the server stops reading it, its memory stays bounded, others are served. Returns the RSS growth."""
    start = s.rss()
    c = honest(s, images)
    name = b"lazyrestore/index.bin"
    burst = b"".join(pages_req(BIG, 1, 32, i) + wire.frame(wire.LIST_T, b"", i) + pages_req(BIG, 0, 1, i, wire.HINT_T)
                     + wire.frame(wire.GET_FILE_T, wire.FILE_REQ.pack(len(name), 0) + name, i) for i in range(64))
    c.sock.settimeout(2.0)
    rounds = 0
    with pytest.raises(socket.timeout):  # the server stopped reading: its queue is full
        while rounds < 20000:
            c.sock.sendall(burst)
            rounds += 1
    grown = s.rss() - start
    assert grown < 64 * MIB, f"RSS grew by {grown >> 20} MiB for a client that does not read"
    assert_still_serving(s, images)
    c.close()
    return grown


def half_closed_after_error(s: Watched, images: Checkpoint) -> None:
    """Requests, then a malformed frame, then shutdown(SHUT_WR), reading nothing: the ERROR cannot be sent
    behind the replies. The server must neither spin on the hung-up socket nor keep it. The image store queues
    its replies as file ranges, so the server reads as far as the malformed frame, refuses it and drops the
    connection past the handshake time; a live store's replies are bytes in memory and fill the queue (16 MiB)
    first, so the server reads no further and drops the connection past --stall-ms, giving them back."""
    base = s.fds()
    c = honest(s, images)
    c.sock.sendall(b"".join(pages_req(BIG, 1, 32, i) for i in range(1, 33)) + b"\0" * wire.FRAME.size)
    c.sock.shutdown(socket.SHUT_WR)
    peer = "127.0.0.1:%d" % c.sock.getsockname()[1]
    if images.store == "images":
        assert f"({peer}): protocol error: bad frame magic" in s.wait_log(f"({peer}): protocol error")
    else:
        assert f"({peer}): dropped: it took none of its replies" in s.wait_log(f"({peer}): dropped")
    cpu0, t0 = s.cpu(), time.monotonic()
    time.sleep(1.0)
    busy = (s.cpu() - cpu0) / (time.monotonic() - t0)
    assert busy < 0.5, f"lr-pageserver used {busy:.0%} of a CPU with one idle half-closed connection"
    assert s.wait_fds(base) == base, "the connection that reads nothing was kept"
    if images.store == "images":
        assert f"({peer}): dropped: it did not read its ERROR" in s.log_text()
    c.close()
    assert_still_serving(s, images)


def connection_flood(s: Watched, images: Checkpoint, n: int = 500) -> None:
    """n connections at once that close without a byte (half of them with a reset)."""
    base = s.fds()
    with clients(n, s.port) as flood:
        for c in flood[::2]:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    served_after_flood(s, images)
    assert s.wait_fds(base) == base


# --- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [wire.URGENT, wire.BULK])
def test_replayed_handshake_is_refused(server: Watched, images: Checkpoint, channel: int) -> None:
    replayed_handshake(server, images, channel)


@pytest.mark.parametrize("version,tail", [(0, b""), (1, b""), (2, b""), (wire.VERSION + 1, bytes(16)),
                                          ((1 << 32) - 1, b"")])
def test_other_protocol_version_is_refused_by_name(server: Watched, images: Checkpoint, version: int,
                                                   tail: bytes) -> None:
    other_version(server, images, version, tail)


@pytest.mark.parametrize("half_close", [True, False], ids=["shutdown", "close"])
@pytest.mark.parametrize("cut", ["header", "payload"])
@pytest.mark.parametrize("authenticated", [False, True], ids=["before-auth", "after-auth"])
def test_truncated_frame_is_refused(server: Watched, images: Checkpoint, authenticated: bool, cut: str,
                                    half_close: bool) -> None:
    base = server.fds()
    truncated_frame(server, images, authenticated, cut, half_close)
    assert server.wait_fds(base) == base


def test_overlapping_and_duplicate_requests_get_the_right_pages(server: Watched, images: Checkpoint) -> None:
    pipelined_pages(server, images)
    assert_still_serving(server, images)


@pytest.mark.parametrize("record,first,n", OUT_OF_RANGE)
def test_out_of_range_requests_are_refused(server: Watched, images: Checkpoint, record: int, first: int,
                                           n: int) -> None:
    out_of_range(server, images, record, first, n)


def test_hint_out_of_range_is_refused(server: Watched, images: Checkpoint) -> None:
    c = honest(server, images)
    c.sock.sendall(pages_req(BIG, BIG_BLOCKS, 1, 3, wire.HINT_T))
    assert f"record {BIG} block {BIG_BLOCKS}: outside the index" in refused(c, wire.ERR_RANGE)
    assert_still_serving(server, images)


def test_slow_loris_is_dropped_while_others_are_served(images: Checkpoint) -> None:
    with serving(images, "--handshake-ms", "4000") as s:
        served_in = slow_loris(s, images, 200, 4000)
    print(f"\nslow loris: 200 connections, an honest client served in {served_in:.3f} s during the attack")


def test_client_that_never_reads_is_bounded(server: Watched, images: Checkpoint) -> None:
    grown = never_reads(server, images)
    print(f"\nnever-reading client: RSS grew by {grown / MIB:.1f} MiB")


def test_a_client_that_stops_taking_its_replies_is_dropped_after_the_stall_time(images: Checkpoint) -> None:
    """An authenticated client that fills its queue and then reads nothing keeps what it pinned (up to 16 MiB of
    a live store's pages) only for --stall-ms: then it is dropped and others are served."""
    with serving(images, "--stall-ms", "1000") as s:
        base = s.fds()
        c = honest(s, images)
        peer = "127.0.0.1:%d" % c.sock.getsockname()[1]
        c.sock.settimeout(2.0)
        burst = b"".join(pages_req(BIG, 1, 32, i) for i in range(1024))
        # the server stops reading once its queue is full (the socket buffers fill: a timeout), or drops the
        # connection while they still fill
        with pytest.raises((socket.timeout, ConnectionError)):
            for _ in range(20000):
                c.sock.sendall(burst)
        assert f"({peer}): dropped: it took none of its replies for 1000 ms" in s.wait_log(f"({peer}): dropped")
        assert s.wait_fds(base) == base
        assert_still_serving(s, images)
        c.close()


def test_half_closed_client_after_an_error_is_dropped(images: Checkpoint) -> None:
    with serving(images, "--handshake-ms", "1500", "--stall-ms", "1500") as s:
        half_closed_after_error(s, images)


def test_connection_flood(server: Watched, images: Checkpoint) -> None:
    connection_flood(server, images)


def test_silent_connection_flood_is_dropped(images: Checkpoint) -> None:
    """500 connections that send nothing: at --max-conns each new one evicts the oldest (a log line a second at
    most), and the last --max-conns are dropped after the handshake time."""
    with serving(images, "--handshake-ms", "1500", "--max-conns", "16") as s:
        base = s.fds()
        with clients(500, s.port):
            assert "evicted: 16 connections (--max-conns)" in s.wait_log("evicted so far")
            assert s.wait_fds(base) == base
            assert s.proc.poll() is None
        served_after_flood(s, images)
        assert s.wait_fds(base) == base


EVICTED = "evicted: the server is full ({} connections, --max-conns) and this connection had not authenticated"


def test_slow_loris_past_max_conns_is_evicted_for_an_honest_client(images: Checkpoint) -> None:
    """40 connections that send a byte of HELLO now and then, at --max-conns 16 with a minute to authenticate:
    each new connection evicts the oldest that has not authenticated, with a named ERROR, so an honest client is
    served while the attack holds every slot, long before the handshake time ends."""
    n, limit = 40, 16
    with serving(images, "--max-conns", str(limit), "--handshake-ms", "60000") as s:
        base, whole = s.fds(), hello()
        with clients(n, s.port) as loris:
            for c in loris:
                c.sock.sendall(whole[:1])
            assert until(lambda: len(readable(loris)) >= n - limit), s.log_text()[-2000:]
            assert readable(loris) == set(range(n - limit)), "the oldest were not the ones evicted"
            for c in loris[n - limit:]:
                c.sock.sendall(whole[1:2])
            assert s.fds() == base + limit
            t0 = time.monotonic()
            assert_still_serving(s, images)
            served_in = time.monotonic() - t0
            assert served_in < 10.0, f"an honest client took {served_in:.1f} s (the handshake time is 60 s)"
            assert readable(loris) == set(range(n - limit + 1)), "the honest client evicted not just the oldest"
            for i in (0, 1, n - limit - 1, n - limit):
                assert refused(loris[i], wire.ERR_TIMEOUT) == EVICTED.format(limit)
            assert s.wait_fds(base + limit - 1) == base + limit - 1
        assert s.wait_fds(base) == base
        assert "evicted: 16 connections (--max-conns) and it had not authenticated" in s.log_text()
    print(f"\nslow loris past --max-conns {limit}: {n} connections, {n - limit + 1} evicted, "
          f"an honest client served in {served_in:.3f} s")


def test_a_server_full_of_authenticated_clients_refuses_with_busy(images: Checkpoint) -> None:
    with serving(images, "--max-conns", "2") as s:
        base = s.fds()
        holders = [honest(s, images) for _ in range(2)]
        late = wire.Client(s.port, timeout=GENEROUS)
        with pytest.raises(wire.PeerError) as info:
            late.handshake(secret_of(images))
        assert (info.value.code, info.value.message) == (wire.ERR_IO, "server busy: 2 connections (--max-conns)")
        assert late.closed()
        late.close()
        for h in holders:  # neither was evicted
            assert "lazyrestore/manifest.json" in h.list_files()
            h.close()
        assert s.wait_fds(base) == base
        assert_still_serving(s, images)
        assert "server busy: 2 connections, all authenticated" in s.log_text()


def test_out_of_descriptors_is_survived(images: Checkpoint) -> None:
    """More connections than the process may open descriptors: accept fails with EMFILE, the server lives."""
    with serving(images, "--max-conns", "4096") as s:
        base = s.fds()
        resource.prlimit(s.proc.pid, resource.RLIMIT_NOFILE, (base + 40, base + 40))
        with clients(100, s.port):
            assert "Too many open files" in s.wait_log("Too many open files")
            assert s.proc.poll() is None, s.log_text()
        assert s.wait_fds(base) == base
        assert_still_serving(s, images)


ATTACKS: list[tuple[str, Callable[[Watched, Checkpoint], object]]] = [
    ("replay", replayed_handshake),
    ("replay bulk", lambda s, i: replayed_handshake(s, i, wire.BULK)),
    ("version", other_version),
    ("version, longer HELLO", lambda s, i: other_version(s, i, 7, bytes(40))),
    *((f"truncated {a} {cut} {h}", lambda s, i, a=a, cut=cut, h=h: truncated_frame(s, i, a, cut, h))
      for a in (False, True) for cut in ("header", "payload") for h in (True, False)),
    ("pipelined", pipelined_pages),
    *((f"range {r}", lambda s, i, r=r: out_of_range(s, i, *r)) for r in OUT_OF_RANGE),
    ("slow loris", lambda s, i: slow_loris(s, i, 100, 3000)),
    ("never reads", never_reads),
    ("half-closed after error", half_closed_after_error),
    ("flood", connection_flood),
]


def test_memory_and_descriptors_return_after_every_attack(images: Checkpoint) -> None:
    with serving(images, "--handshake-ms", "3000", "--stall-ms", "3000") as s:
        fds0 = s.fds()
        assert_still_serving(s, images)
        assert s.wait_fds(fds0) == fds0
        rss0 = s.rss()
        for name, attack in ATTACKS:
            attack(s, images)
            assert s.wait_fds(fds0) == fds0, f"descriptors left open after {name}"
        assert_still_serving(s, images)
        rss1, fds1 = s.rss(), s.wait_fds(fds0)
    bound = (48 if SANITIZED else 16) * MIB
    print(f"\nafter {len(ATTACKS)} attacks: RSS {rss0 / MIB:.1f} -> {rss1 / MIB:.1f} MiB "
          f"(bound +{bound >> 20} MiB), fds {fds0} -> {fds1}")
    assert rss1 - rss0 < bound
    assert fds1 == fds0
