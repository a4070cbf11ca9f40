"""lr-pageserver --live: a checkpoint's lazy ranges read from the stopped tree's memory (issue 17).

A real tree is stopped (SIGSTOP here; CRIU holds it in ptrace-stop in production): the sample workload and
a small helper with a read-write region, a PROT_NONE one and a write-only one, all holding data. The index
covers their anonymous memory with RANGE_LAZY | RANGE_LIVE records (checksums 0, pages id and offset 0) and
one eager record in a pages file, as a live checkpoint does; the pid map names the tasks. A client of the
wire protocol (wire.py) then checks that every byte served equals /proc/PID/mem and every checksum sent is
XXH3 of those bytes, on request and in the bulk stream, compressed or not; that a task killed mid-serve is a
named error and not bytes; that bad pid maps are refused; and that the server's memory stays small.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from lazyrestore import lazyindex, sample
from lazyrestore.paths import native_binary

from . import wire
from .reaper import Reaper

PAGE = 4096
BLOCK = lazyindex.DEFAULT_BLOCK_SIZE
RANGE_LIVE = lazyindex.RANGE_LIVE
LIVE = lazyindex.RANGE_LAZY | RANGE_LIVE
HELPER_VPID = 100
EAGER_ADDR = 0x10000  # below every mapping of the workload (vpid 1): an eager record served from pages-1.img

# The helper: three regions of known data, then PROT_NONE and write-only on two of them, then stopped by the test.
# The read-write one has all-zero blocks (sent compressed to a client that takes zstd), and is larger than what
# loopback sockets buffer (the kill test needs blocks still unread when the helper dies).
HELPER = r"""
import ctypes, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
out = []
for name, size, prot in (("rw", 48 << 20, 3), ("none", 1 << 20, 0), ("wo", 1 << 20, 2)):
    a = libc.mmap(None, size, 3, 0x22, -1, 0)
    data = bytearray(random.Random(name).randbytes(size))
    data[64 << 10:192 << 10] = bytes(128 << 10)
    ctypes.memmove(a, bytes(data), size)
    assert libc.mprotect(a, size, prot) == 0, ctypes.get_errno()
    out.append(f"{name}={a:#x}:{size}")
print(" ".join(out), flush=True)
while True:
    time.sleep(60)
"""


@dataclass(frozen=True)
class Task:
    vpid: int
    pid: int
    ranges: tuple[tuple[int, int], ...]  # (start, length) of the anonymous memory indexed


@dataclass
class Tree:
    """The stopped tasks, their live checkpoint and the records of the index (in order)."""

    images: Path
    tasks: list[Task]
    entries: tuple[lazyindex.IndexEntry, ...]
    helper: subprocess.Popen
    eager_bytes: bytes

    def pid_of(self, vpid: int) -> int:
        return next(t.pid for t in self.tasks if t.vpid == vpid)

    @property
    def secret(self) -> bytes:
        return (self.images / "lazyrestore" / "secret").read_bytes()


def anonymous_ranges(pid: int) -> tuple[tuple[int, int], ...]:
    """The private anonymous read-write mappings of pid (no file, no [stack]/[vdso]-like name)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) == 5 and fields[1] == "rw-p":
            out.append((lo, hi - lo))
    return tuple(out)


def children_of(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def ns_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^NSpid:\s+(.*)$", status, re.M).group(1).split()[-1])


def start_helper(reaper: Reaper) -> tuple[subprocess.Popen, tuple[tuple[int, int], ...]]:
    proc = subprocess.Popen([sys.executable, "-c", HELPER], stdout=subprocess.PIPE, text=True)
    reaper.add(proc.pid)
    line = proc.stdout.readline()
    assert line, "the helper did not start"
    ranges = []
    for item in line.split():
        addr, size = item.split("=")[1].split(":")
        ranges.append((int(addr, 16), int(size)))
    return proc, tuple(sorted(ranges))


def stop(pid: int) -> None:
    """SIGSTOP pid and wait until it is stopped (state T)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.01)


def live_entries(tasks: list[Task]) -> list[lazyindex.IndexEntry]:
    out = []
    for t in sorted(tasks, key=lambda t: t.vpid):
        for start, length in t.ranges:
            n = lazyindex.block_count(start, length, BLOCK)
            out.append(lazyindex.IndexEntry(t.vpid, LIVE, start, length // PAGE, 0, 0, (0,) * n))
    return out


def write_checkpoint(images: Path, tasks: list[Task], eager: bytes) -> tuple[lazyindex.IndexEntry, ...]:
    """A live checkpoint's files: secret, manifest, index (live records and one eager record), pid map, pages-1.img."""
    (images / "lazyrestore").mkdir(parents=True)
    secret = images / "lazyrestore" / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    (images / "lazyrestore" / "manifest.json").write_text("{}\n")
    (images / "pages-1.img").write_bytes(eager)
    sums = tuple(xxhash.xxh3_64_intdigest(eager[a - EAGER_ADDR:a - EAGER_ADDR + n])
                 for a, n in lazyindex.block_spans(EAGER_ADDR, len(eager), BLOCK))
    entries = [lazyindex.IndexEntry(1, 0, EAGER_ADDR, len(eager) // PAGE, 1, 0, sums)] + live_entries(tasks)
    entries.sort(key=lambda e: (e.pid, e.start))
    index = lazyindex.LazyIndex(PAGE, BLOCK, len(tasks), os.urandom(16), tuple(entries))
    lazyindex.write(images / "lazyrestore" / "index.bin", index)
    (images / "lazyrestore" / "live-pids").write_text("".join(f"{t.vpid} {t.pid}\n" for t in tasks))
    return index.entries


@pytest.fixture
def tree(workdir: Path, reaper: Reaper) -> Iterator[Tree]:
    """The sample workload (with one child) and the helper, stopped, and their live checkpoint."""
    w = sample.start(workdir, 16, children=1)
    reaper.add(w.pid)
    try:
        pids = [w.pid] + children_of(w.pid)
        helper, helper_ranges = start_helper(reaper)
        tasks = [Task(ns_pid(p), p, anonymous_ranges(p)) for p in pids] + [Task(HELPER_VPID, helper.pid, helper_ranges)]
        assert len(tasks) == 3 and all(t.ranges for t in tasks), tasks
        for t in tasks:
            stop(t.pid)
        eager = os.urandom(5 * PAGE)
        images = workdir / "images"
        entries = write_checkpoint(images, tasks, eager)
        yield Tree(images, tasks, entries, helper, eager)
    finally:
        w.kill()


class LiveServer:
    """lr-pageserver --live on loopback (the ASan/UBSan build unless told)."""

    def __init__(self, images: Path, *extra: str, binary: str = "san/lr-pageserver") -> None:
        r, w = os.pipe()
        self.log = images.parent / f"ps-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([str(native_binary(binary)), "-D", str(images), "--listen", "127.0.0.1:0",
                                      "--events-fd", str(w), "-o", str(self.log), "--live",
                                      str(images / "lazyrestore" / "live-pids"), *extra],
                                     pass_fds=[w], stdin=subprocess.DEVNULL)
        os.close(w)
        self.events = os.fdopen(r, "r")
        ready, _, _ = select.select([self.events], [], [], 20)
        assert ready, self.log_text()
        first = json.loads(self.events.readline() or "{}")
        assert first.get("event") == "listening", (first, self.log_text())
        self.port = first["port"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        assert self.proc.wait(timeout=20) == 0, self.log_text()
        self.events.close()
        text = self.log_text()
        assert "ERROR: AddressSanitizer" not in text and "runtime error" not in text, text


@pytest.fixture
def server(tree: Tree) -> Iterator[LiveServer]:
    s = LiveServer(tree.images)
    yield s
    s.stop()


def client(server: LiveServer, tree: Tree) -> wire.Client:
    c = wire.Client(server.port)
    c.handshake(tree.secret)
    return c


def memory(pid: int, addr: int, length: int) -> bytes:
    """What /proc/PID/mem holds there (it reads PROT_NONE and write-only pages too)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, length, addr)
    finally:
        os.close(fd)


def expected(tree: Tree, rec: int, first: int, nblocks: int) -> tuple[tuple[int, ...], bytes]:
    e = tree.entries[rec]
    spans = lazyindex.block_spans(e.start, e.nr_pages * PAGE, BLOCK)[first:first + nblocks]
    a, b = spans[0][0], spans[-1][0] + spans[-1][1]
    data = tree.eager_bytes[a - e.start:b - e.start] if not e.flags & RANGE_LIVE \
        else memory(tree.pid_of(e.pid), a, b - a)
    sums = tuple(xxhash.xxh3_64_intdigest(data[x - a:x - a + n]) for x, n in spans)
    return sums, data


def requests(e: lazyindex.IndexEntry) -> Iterator[tuple[int, int]]:
    """(first block, nblocks) covering record e in GET_PAGES of at most PAGES_MAX_DATA."""
    n = lazyindex.block_count(e.start, e.nr_pages * PAGE, BLOCK)
    per = wire.PAGES_MAX_DATA // BLOCK
    for k in range(0, n, per):
        yield k, min(per, n - k)


_zstd = ctypes.CDLL("libzstd.so.1")
_zstd.ZSTD_decompress.restype = ctypes.c_size_t
_zstd.ZSTD_decompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
_zstd.ZSTD_isError.argtypes = [ctypes.c_size_t]


def pages_of(f: wire.Frame) -> wire.Pages:
    """A PAGES frame's payload, inflated when it came compressed (lr_zpages.h)."""
    if not f.flags & 2:  # LR_F_ZSTD
        return wire.parse_pages(f.payload)
    rec, first, n, data_len = wire.PAGES_HDR.unpack_from(f.payload)
    prefix = wire.PAGES_HDR.size + 8 * n
    out = ctypes.create_string_buffer(data_len)
    got = _zstd.ZSTD_decompress(out, data_len, f.payload[prefix:], len(f.payload) - prefix)
    assert not _zstd.ZSTD_isError(got) and got == data_len
    return wire.parse_pages(f.payload[:prefix] + out.raw)


def test_every_live_byte_equals_the_task_memory_and_its_sum_is_sent(server: LiveServer, tree: Tree) -> None:
    """Every record, block by block in requests of up to 2 MiB: the bytes are the task's (read with
    process_vm_readv, or /proc/PID/mem for the PROT_NONE and write-only regions) and the sums XXH3 of them; the
    eager record comes from pages-1.img with the index's sums."""
    c = client(server, tree)
    assert sum(e.pid == HELPER_VPID for e in tree.entries) == 3  # rw, PROT_NONE, write-only: all compared below
    for rec, e in enumerate(tree.entries):
        for first, n in requests(e):
            sums, data = c.get_pages(rec, first, n)
            want_sums, want = expected(tree, rec, first, n)
            assert data == want, f"record {rec} blocks {first}+{n}: bytes differ from the task's memory"
            assert sums == want_sums
            if not e.flags & RANGE_LIVE:
                assert sums == e.checksums[first:first + n]
    c.close()


@pytest.mark.parametrize("flags", [2, 2 | 4], ids=["zstd-when-zero-blocks", "compress-all"])
def test_bulk_stream_and_compression_serve_the_task_memory(server: LiveServer, tree: Tree, flags: int) -> None:
    """The bulk stream sends every lazy block once, each equal to the task's memory with its sum; with zstd
    allowed, the all-zero blocks the server found in what it read make frames go compressed."""
    c = client(server, tree)
    bulk = wire.Client(server.port)
    bulk.handshake(tree.secret, wire.BULK, c.session)
    bulk.send(wire.BULK_START_T, wire.PAGE_REQ.pack(0, 0, 0), flags=flags)
    seen, compressed = set(), 0
    while True:
        f = bulk.recv()
        if f.type == wire.BULK_END_T:
            break
        assert f.type == wire.PAGES_T, f
        compressed += bool(f.flags & 2)
        p = pages_of(f)
        want_sums, want = expected(tree, p.record, p.first_block, p.nblocks)
        assert (p.checksums, p.data) == (want_sums, want), f"record {p.record} blocks {p.first_block}+{p.nblocks}"
        seen.update((p.record, p.first_block + k) for k in range(p.nblocks))
    lazy = {(i, k) for i, e in enumerate(tree.entries) if e.lazy
            for k in range(lazyindex.block_count(e.start, e.nr_pages * PAGE, BLOCK))}
    assert seen == lazy
    assert compressed > 0
    bulk.close()
    c.close()


def kill_and_reap(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_a_task_killed_mid_serve_is_a_named_error_not_bytes(server: LiveServer, tree: Tree) -> None:
    """The helper is killed while its blocks stream: the bulk stream ends in an ERROR naming the gone tree (and
    a log line), every frame before it holding the memory as it was; the same on request; the other tasks are
    still served on a new connection."""
    rec = max(range(len(tree.entries)), key=lambda i: tree.entries[i].nr_pages * (tree.entries[i].pid == HELPER_VPID))
    e = tree.entries[rec]
    snapshot = memory(tree.helper.pid, e.start, e.nr_pages * PAGE)
    c = client(server, tree)
    assert c.get_pages(rec, 0, 4) == expected(tree, rec, 0, 4)
    bulk = wire.Client(server.port)
    bulk.handshake(tree.secret, wire.BULK, c.session)
    bulk.send(wire.BULK_START_T, wire.PAGE_REQ.pack(rec, 8, 0))
    got = [pages_of(bulk.recv())]
    kill_and_reap(tree.helper)
    with pytest.raises(wire.PeerError) as info:
        while True:  # what was read before the kill (queued or in the socket buffers), then the ERROR
            got.append(pages_of(bulk.recv()))
    assert info.value.code == wire.ERR_IO
    assert f"the source tree is gone (pid {tree.helper.pid}, task {HELPER_VPID}" in info.value.message, info.value.message
    assert len(got) < e.nr_pages * PAGE // (1 << 20)
    for p in got:
        a = max(e.start, (e.start // BLOCK + p.first_block) * BLOCK)
        assert p.record == rec and p.data == snapshot[a - e.start:a - e.start + len(p.data)]
        assert p.checksums == tuple(xxhash.xxh3_64_intdigest(p.data[x - a:x - a + n]) for x, n in
                                    lazyindex.block_spans(a, len(p.data), BLOCK))
    with pytest.raises(wire.PeerError) as info:
        c.get_pages(rec, 4, 4)
    assert info.value.code == wire.ERR_IO and "the source tree is gone" in info.value.message, info.value.message
    assert c.closed()
    assert "the source tree is gone" in server.log_text()
    other = client(server, tree)
    assert other.get_pages(1, 0, 1) == expected(tree, 1, 0, 1)
    other.close()


def refused(images: Path, *args: str) -> str:
    """lr-pageserver exits 1 at start: its log."""
    r = subprocess.run([str(native_binary("san/lr-pageserver")), "-D", str(images), "--listen", "127.0.0.1:0", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    return r.stderr


BAD_MAPS = {
    "junk": ("1 {p}\nhello\n", "line 2: expected \"VPID HOSTPID\""),
    "no-newline": ("1 {p}", "line 1: expected"),
    "two-spaces": ("1  {p}\n", "line 1: expected"),
    "leading-zero": ("01 {p}\n", "line 1: expected"),
    "negative": ("1 -{p}\n", "line 1: expected"),
    "blank-line": ("1 {p}\n\n", "line 2: expected"),
    "task-twice": ("1 {p}\n1 {q}\n", "task 1 given twice"),
    "host-pid-twice": ("1 {p}\n2 {p}\n", "host pid {p} given twice"),
    "missing-task": ("1 {p}\n", "no line for task"),
    "empty": ("", "empty"),
    "too-big": ("1 99999999999\n", "line 1: expected"),
}


@pytest.mark.parametrize("case", sorted(BAD_MAPS))
def test_a_bad_pid_map_is_refused_by_name(tree: Tree, case: str) -> None:
    text, message = BAD_MAPS[case]
    p, q = tree.tasks[0].pid, tree.tasks[1].pid
    path = tree.images / "lazyrestore" / "bad-pids"
    path.write_text(text.format(p=p, q=q))
    log = refused(tree.images, "--live", str(path))
    assert f"error: pid map {path}: {message.format(p=p)}" in log, log


def test_a_running_task_is_refused_at_start(tree: Tree) -> None:
    """Its memory could change while it is served: every thread of a task with live records must be stopped."""
    os.kill(tree.helper.pid, signal.SIGCONT)
    log = refused(tree.images, "--live", str(tree.images / "lazyrestore" / "live-pids"))
    assert f"task {HELPER_VPID} (pid {tree.helper.pid}): thread {tree.helper.pid} is not stopped (state " in log, log
    assert "served only while its tree is stopped" in log


def test_a_gone_task_or_no_pid_map_is_refused_at_start(tree: Tree) -> None:
    log = refused(tree.images)
    assert "describes a live checkpoint" in log and "give --live PIDMAP" in log, log
    kill_and_reap(tree.helper)
    log = refused(tree.images, "--live", str(tree.images / "lazyrestore" / "live-pids"))
    assert f"the source tree is gone (pid {tree.helper.pid}, task {HELPER_VPID}" in log, log


def test_peak_memory_stays_small_while_serving_a_large_tree(workdir: Path, reaper: Reaper) -> None:
    """The optimized server streams a 256 MiB tree in bulk, then answers requests for all of it sent at once: its
    peak RSS (VmHWM) stays a few MiB, far below the tree (no copy of it is kept; one buffer per frame in flight,
    at most 16 MiB of replies queued per connection)."""
    w = sample.start(workdir, 256)
    reaper.add(w.pid)
    try:
        task = Task(1, w.pid, anonymous_ranges(w.pid))
        stop(w.pid)
        images = workdir / "images"
        entries = write_checkpoint(images, [task], os.urandom(PAGE))
        tree_bytes = sum(e.nr_pages * PAGE for e in entries if e.lazy)
        assert tree_bytes >= 256 << 20
        s = LiveServer(images, binary="lr-pageserver")
        try:
            secret = (images / "lazyrestore" / "secret").read_bytes()
            c = wire.Client(s.port)
            c.handshake(secret)
            bulk = wire.Client(s.port)
            bulk.handshake(secret, wire.BULK, c.session)
            bulk.send(wire.BULK_START_T, wire.PAGE_REQ.pack(0, 0, 0))
            streamed = 0
            while (f := bulk.recv()).type != wire.BULK_END_T:
                streamed += len(wire.parse_pages(f.payload).data)
            assert streamed == tree_bytes
            peak = s.peak_rss_kib()
            print(f"lr-pageserver --live: peak RSS {peak} KiB after streaming {tree_bytes >> 20} MiB")
            assert peak < 32 << 10, f"peak RSS {peak} KiB"
            # A client that asks for the whole main region at once and reads nothing until it has asked: the
            # server stops reading its requests once 16 MiB of replies wait (queue.c), so it never holds more.
            main = max(range(len(entries)), key=lambda i: entries[i].nr_pages)
            asked = list(requests(entries[main]))
            for first, n in asked:
                c.request(wire.GET_PAGES_T, wire.PAGE_REQ.pack(main, first, n))
            for first, n in asked:
                p = wire.parse_pages(c.recv().payload)
                assert (p.record, p.first_block, p.nblocks) == (main, first, n)
            assert len(asked) * wire.PAGES_MAX_DATA >= 200 << 20
            peak = s.peak_rss_kib()
            print(f"lr-pageserver --live: peak RSS {peak} KiB after {len(asked)} requests of 2 MiB sent at once")
            assert peak < 48 << 10, f"peak RSS {peak} KiB"
            bulk.close()
            c.close()
        finally:
            s.stop()
        assert re.search(r"peak resident memory \d+ KiB", s.log_text()), s.log_text()
    finally:
        w.kill()
