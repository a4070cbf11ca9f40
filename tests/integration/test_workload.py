"""lr-workload run directly (no CRIU, no pid namespace): page model, verify, ops, scanners; and its --serve
key-value server, directly and across a lazy restore between the test hosts.

Signals: SIGRTMIN+1 verify; SIGRTMIN+2..6 the ops fork, dontneed, munmap, mremap, kwrite
(main process only); SIGUSR1 report; SIGUSR2 exit.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazyrestore import sample, testhosts
from lazyrestore.paths import native_binary
from lazyrestore.sample import REPORT

from .migration import SLOW_DRAIN, checkpoint_on_a, serve_a, start_on_a
from .migration import finished as assert_done
from .migration import restore_on_b

VERIFY = re.compile(r"^verify role=(\S+) pid=(\d+) (ok|BAD page=(\d+) addr=0x[0-9a-f]+) pages=(\d+)$")
SCAN_OK = re.compile(r"^scan thread=(\d+) pass=(\d+) ok$")
SCAN_BAD = re.compile(r"^scan thread=(\d+) BAD page=(\d+) addr=0x[0-9a-f]+$")

SIG_VERIFY = signal.SIGRTMIN + 1
OPS = {"fork": signal.SIGRTMIN + 2, "dontneed": signal.SIGRTMIN + 3, "munmap": signal.SIGRTMIN + 4,
       "mremap": signal.SIGRTMIN + 5, "kwrite": signal.SIGRTMIN + 6}
PAGES_PER_MIB = 256
TIMEOUT = 30.0


class Workload:
    """One lr-workload process (leader of its own process group) and its stdout log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, err: Path) -> None:
        self.proc, self.log, self.err = proc, log, err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        """Complete lines only: a line still being written has no newline yet."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.split("\n")[:-1]

    def wait_for(self, pattern: str | re.Pattern[str], start: int = 0, timeout: float = TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines()[start:]:
                if m := regex.match(line):
                    return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no line matching {regex.pattern!r} after line {start} (exit {self.proc.poll()}); "
                            f"log:\n{self.tail()}\nstderr:\n{self.err.read_text(errors='replace')}")
            time.sleep(0.02)

    def send(self, sig: int, pattern: str, group: bool = False) -> re.Match[str]:
        """Send sig (to the process group if group) and wait for a new line matching pattern."""
        mark = len(self.lines())
        (os.killpg if group else os.kill)(self.pid, sig)
        return self.wait_for(pattern, mark)

    def op(self, name: str, result: str = "done") -> re.Match[str]:
        return self.send(OPS[name], rf"^op {name} {result}$")

    def verify(self, role: str = "main") -> re.Match[str]:
        return self.send(SIG_VERIFY, rf"^verify role={role} pid=\d+ .*$")

    def tail(self) -> str:
        return "\n".join(line for line in self.lines() if not SCAN_OK.match(line))[-4000:] or "(empty)"

    def stop(self, timeout: float = 5.0) -> int:
        os.kill(self.pid, signal.SIGUSR2)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Callable[..., Workload]]:
    """Start lr-workload with the given options; the process group is SIGKILLed at teardown."""
    started: list[Workload] = []

    def start(*args: str) -> Workload:
        n = len(started)
        log, err = tmp_path / f"log{n}", tmp_path / f"err{n}"
        with open(log, "wb") as out, open(err, "wb") as errf:
            proc = subprocess.Popen([str(native_binary("lr-workload")), *args], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=errf, start_new_session=True)
        w = Workload(proc, log, err)
        started.append(w)
        w.wait_for(REPORT)
        return w

    try:
        yield start
    finally:
        for w in started:
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.proc.wait(timeout=10)


def verify_ok(w: Workload, pages: int, role: str = "main") -> None:
    m = VERIFY.match(w.verify(role)[0])
    assert m and m[3] == "ok" and int(m[5]) == pages, m and m[0]


def assert_no_trouble(w: Workload) -> None:
    bad = [line for line in w.lines() if " BAD " in line or " failed " in line]
    assert not bad, bad
    assert w.err.read_text() == ""


def expected_checksum(mib: int, seed: int) -> str:
    """The report checksum of unmodified memory, as defined before the page model existed."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for page in range(mib * PAGES_PER_MIB):
        if page % 16 == 15:  # a hole: 512 zero words
            for _ in range(512):
                h = (h * 0x100000001B3) & mask
            continue
        s = (seed ^ (page * 0x9E3779B97F4A7C15) ^ 0xD1B54A32D192ED03) & mask
        for _ in range(512):
            s ^= (s << 13) & mask
            s ^= s >> 7
            s ^= (s << 17) & mask
            h = ((h ^ s) * 0x100000001B3) & mask
    return f"{h:016x}"


def test_report_checksum_unchanged(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "1", "--seed", "3", "--scanners", "1")
    m = w.wait_for(REPORT)
    assert m and m[1] == "main" and m[3] == "1" and m[5] == "1"
    assert m[4] == expected_checksum(1, 3)
    assert w.stop() == 0


def test_every_op_then_verify(workload: Callable[..., Workload]) -> None:
    pages = 64 * PAGES_PER_MIB
    w = workload("--mib", "64", "--scanners", "2")
    started = time.monotonic()
    first = w.wait_for(REPORT)
    assert first
    verify_ok(w, pages)

    mark = len(w.lines())
    w.op("fork")
    fork = VERIFY.match(w.wait_for(r"^verify role=fork0 .*$", mark)[0])
    assert fork and fork[3] == "ok" and int(fork[5]) == pages and int(fork[2]) != w.pid

    w.op("dontneed")
    verify_ok(w, pages)
    w.op("munmap")
    verify_ok(w, pages - pages // 8)
    w.op("mremap")
    verify_ok(w, pages - pages // 8)
    w.op("kwrite", "done ok")

    mark = len(w.lines())
    for thread in (0, 1):
        w.wait_for(rf"^scan thread={thread} pass=\d+ ok$", mark)
    report = REPORT.match(w.send(signal.SIGUSR1, r"^report role=main .*$")[0])
    assert report and report[3] == "2" and report[4] != first[4]  # dontneed and munmap changed memory
    assert_fork_child_reaped(w)
    assert_no_trouble(w)
    assert_scan_rate_limited(w, time.monotonic() - started)
    assert w.stop() == 0


def assert_fork_child_reaped(w: Workload) -> None:
    children = Path(f"/proc/{w.pid}/task/{w.pid}/children")
    deadline = time.monotonic() + TIMEOUT
    while children.read_text().split():
        assert time.monotonic() < deadline, f"fork child not reaped: {children.read_text()}"
        time.sleep(0.05)


def assert_scan_rate_limited(w: Workload, elapsed: float) -> None:
    per_thread: dict[str, list[int]] = {}
    for m in filter(None, map(SCAN_OK.match, w.lines())):
        per_thread.setdefault(m[1], []).append(int(m[2]))
    assert set(per_thread) == {"0", "1"}
    for passes in per_thread.values():
        assert len(passes) <= elapsed + 2, passes
        assert passes == sorted(passes)


def test_ops_apply_once_but_fork_repeats(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "8")
    for name in ("dontneed", "munmap", "mremap", "kwrite"):
        w.op(name, "done ok" if name == "kwrite" else "done")
        w.op(name, "skipped")
    for k in range(3):
        mark = len(w.lines())
        w.op("fork")
        w.wait_for(rf"^verify role=fork{k} pid=\d+ ok pages={8 * PAGES_PER_MIB * 7 // 8}$", mark)
    verify_ok(w, 8 * PAGES_PER_MIB * 7 // 8)
    assert_no_trouble(w)
    assert w.stop() == 0


@pytest.mark.parametrize("order", [("kwrite", "mremap", "munmap", "dontneed", "fork"),
                                  ("mremap", "fork", "dontneed", "kwrite", "munmap")])
def test_ops_in_other_orders(workload: Callable[..., Workload], order: tuple[str, ...]) -> None:
    w = workload("--mib", "32", "--scanners", "2")
    for name in order:
        mark = len(w.lines())
        w.op(name, "done ok" if name == "kwrite" else "done")
        if name == "fork":
            w.wait_for(r"^verify role=fork0 pid=\d+ ok ", mark)
        w.verify()
    mark = len(w.lines())
    for thread in (0, 1):
        w.wait_for(rf"^scan thread={thread} pass=\d+ ok$", mark)
    verify_ok(w, 32 * PAGES_PER_MIB * 7 // 8)
    assert_no_trouble(w)
    assert w.stop() == 0


def test_children_verify_their_memory_and_ignore_ops(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "16", "--children", "1", "--child-mib", "4", "--scanners", "1")
    w.wait_for(r"^report role=child0 ")
    main_pages, child_pages = 16 * PAGES_PER_MIB, 20 * PAGES_PER_MIB

    mark = len(w.lines())
    os.killpg(w.pid, SIG_VERIFY)
    assert VERIFY.match(w.wait_for(rf"^verify role=main pid=\d+ ok pages={main_pages}$", mark)[0])
    assert VERIFY.match(w.wait_for(rf"^verify role=child0 pid=\d+ ok pages={child_pages}$", mark)[0])

    mark = len(w.lines())
    os.killpg(w.pid, OPS["munmap"])
    w.wait_for(r"^op munmap done$", mark)
    os.killpg(w.pid, SIG_VERIFY)
    w.wait_for(rf"^verify role=main pid=\d+ ok pages={main_pages * 7 // 8}$", mark)
    w.wait_for(rf"^verify role=child0 pid=\d+ ok pages={child_pages}$", mark)
    assert sum(line.startswith("op ") for line in w.lines()) == 1  # the child ignored the op
    assert_no_trouble(w)
    os.killpg(w.pid, signal.SIGUSR2)
    assert w.proc.wait(timeout=5) == 0


def test_selftest_corrupt_is_caught(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "16", "--scanners", "2", "--selftest-corrupt")
    started = time.monotonic()
    m = VERIFY.match(w.verify()[0])
    assert m and m[3].startswith("BAD page=5 ") and int(m[5]) == 16 * PAGES_PER_MIB, m and m[0]

    mark = len(w.lines())
    w.op("fork")
    m = VERIFY.match(w.wait_for(r"^verify role=fork0 .*$", mark)[0])
    assert m and m[4] == "5", m and m[0]
    w.op("kwrite", "done ok")  # the seventh eighth is intact

    w.wait_for(r"^scan thread=1 BAD page=5 addr=0x[0-9a-f]+$")
    w.wait_for(r"^scan thread=0 pass=\d+ ok$")  # thread 0 scans the even pages only
    time.sleep(2.5)
    bad = [m for m in map(SCAN_BAD.match, w.lines()) if m]
    assert {(m[1], m[2]) for m in bad} == {("1", "5")}
    assert len(bad) <= time.monotonic() - started + 2, "a persistent mismatch is repeated at most once a second"
    assert not any(SCAN_OK.match(line) and line.startswith("scan thread=1 ") for line in w.lines())
    assert w.stop() == 0


WRITES = re.compile(r"^writes role=main (ok|BAD page=\d+) pages=(\d+) generations=(\d+)$")


def test_writers_keep_rewriting_pages_that_verify(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "8", "--writers", "2", "--write-mib", "4")
    first = WRITES.match(w.send(SIG_VERIFY, r"^writes role=main .*$")[0])
    time.sleep(0.5)
    second = WRITES.match(w.send(SIG_VERIFY, r"^writes role=main .*$")[0])
    assert first and second and first[1] == second[1] == "ok", (first, second)
    assert int(first[2]) == 4 * PAGES_PER_MIB
    assert int(second[3]) > int(first[3]) > int(first[2]), "the writers must keep rewriting their pages"
    verify_ok(w, 8 * PAGES_PER_MIB)
    assert w.stop() == 0


# --- --serve: the key-value server (native/workload/serve.h) ---------------------------------------------

HOT_KEYS = 2000  # one request over 2000 scattered pages, as `python -m bench coldstart` asks


def kv_id() -> int:
    """A socket name of our own: tests may run beside other serving workloads in the same namespace."""
    return random.randrange(1 << 32)


def kv_table_of(w: Workload) -> sample.KvTable:
    m = sample.KV_LISTENING.match(w.wait_for(sample.KV_LISTENING)[0])
    assert m
    return sample.KvTable(m[1], int(m[2]), int(m[3]))


def test_serve_answers_every_key_range_and_refuses_bad_requests(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "32", "--serve", str(kv_id()), "--seed", "7")
    t = kv_table_of(w)
    assert t.keys == 32 * PAGES_PER_MIB * 64 and t.name.startswith("lr-workload-kv-")
    assert sample.kv_get(t.name, 0, HOT_KEYS, seed=7) == sample.kv_expected(0, HOT_KEYS, seed=7)
    assert sample.kv_get(t.name, t.keys - 5, 5, seed=7)
    assert len({t.slot(k) // 64 for k in range(HOT_KEYS)}) == HOT_KEYS, "hot keys must be on distinct pages"
    for bad in ("GET 0 0", f"GET {t.keys - 1} 2", "GET -1 1", "GET 1 2 ", "PUT 1 1", "x" * 300):
        assert sample.kv_request(t.name, bad).startswith("ERR "), bad
    assert sample.kv_get(t.name, 12345, 10, seed=7)  # still serving after the refusals
    verify_ok(w, 32 * PAGES_PER_MIB)  # the page model knows the table: no holes
    assert w.stop() == 0


def test_serve_a_wrong_byte_fails_the_clients_check(workload: Callable[..., Workload]) -> None:
    w = workload("--mib", "8", "--serve", str(kv_id()), "--selftest-corrupt")
    t = kv_table_of(w)
    hit = t.key_in(5 * 64 + 123 // 64)  # --selftest-corrupt flips byte 123 of page 5: in that page's record 1
    assert sample.kv_get(t.name, hit + 1, 100)
    with pytest.raises(sample.WrongAnswer, match=f"GET {hit} 1: answered"):
        sample.kv_get(t.name, hit, 1)
    with pytest.raises(sample.WrongAnswer):
        sample.kv_get(t.name, hit - 10, 20)
    m = VERIFY.match(w.verify()[0])
    assert m and m[3].startswith("BAD page=5 "), m and m[0]
    assert w.stop() == 0


def test_serve_answers_after_a_remote_lazy_restore(hosts, workdir: Path, reaper) -> None:
    """Checkpointed on A with its listening socket, restored lazily on B: it answers there, correctly, while its
    pages are still arriving (the answer faults them in), and its memory is whole at the end."""
    w = start_on_a(workdir, reaper, 64, serve=kv_id())
    t = w.kv_table()
    with testhosts.inside(testhosts.HOST_A):
        before = sample.kv_get(t.name, 0, HOT_KEYS)
    checkpoint_on_a(w, workdir / "images")
    src = serve_a(workdir / "images")
    try:
        run = restore_on_b(src.address, workdir / "images", workdir / "dst", *SLOW_DRAIN)
        restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
        with testhosts.inside(testhosts.HOST_B):
            during = sample.kv_get(t.name, 0, HOT_KEYS)
            tail = sample.kv_get(t.name, t.keys - 1000, 1000)
        summary = assert_done(run)
    finally:
        src.stop()
    assert during == before and tail == sample.kv_expected(t.keys - 1000, 1000)
    assert summary["faults"] > 0, "the request must have faulted on pages still missing"
    assert restored.request_verify() == {"main": "ok"}
    assert not w.bad_lines()
