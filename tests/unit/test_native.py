"""C unit tests, built with ASan + UBSan by `make native` (part of `make build`):

* build/native/tests/test_spans: native/lazyd/spans.c (its own checks, plus a randomized model test);
* build/native/tests/test_index: native/common/index.c's lr_index_open on one file, compared here with
  the Python reader (lazyrestore.lazyindex.decode) on valid and corrupted indexes: the two must agree;
* build/native/tests/test_wset: native/common/wset.c (merging working sets across restores, parsing);
* build/native/tests/test_proto: native/common/proto.c's frame checksums (LR_F_SUM) and lr_recv_frame's
  classing of damage;
* build/native/tests/test_live_frame: lr-lazyd's PAGES check (remote_fetch.c) for live records (the server's
  sums, computed as it read the stopped tree) and the others (the index's), and live records' flags;
* build/native/tests/test_uffd_place: lazyd/uffd.c's lr_uffd_place on a userfaultfd of its own: all-zero pages
  mapped as zero pages (no Rss), the others copied;
* build/native/tests/test_src_local: a page source driven into a fake sink (lazyd/source.h): src_local.c over a
  pages file of its own, with the block-grouping helper (blocks.c): exactly the file's bytes of the ranges asked
  for arrive, a damaged pages file fails its checksum.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import xxhash

from lazyrestore import lazyindex
from lazyrestore.errors import CorruptCheckpoint
from lazyrestore.lazyindex import HEADER, RANGE_LAZY, RECORD, TRAILER, IndexEntry, LazyIndex, encode

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "build" / "native" / "tests"
SPANS_BIN = TESTS_DIR / "test_spans"
INDEX_BIN = TESTS_DIR / "test_index"

WSET_BIN = TESTS_DIR / "test_wset"
PROTO_BIN = TESTS_DIR / "test_proto"
LIVE_FRAME_BIN = TESTS_DIR / "test_live_frame"
UFFD_PLACE_BIN = TESTS_DIR / "test_uffd_place"
SRC_LOCAL_BIN = TESTS_DIR / "test_src_local"
needs_spans = pytest.mark.skipif(not SPANS_BIN.exists(), reason=f"{SPANS_BIN} is not built (run `make build` or `make native`)")
needs_index = pytest.mark.skipif(not INDEX_BIN.exists(), reason=f"{INDEX_BIN} is not built (run `make build` or `make native`)")

# A sanitizer report must not look like an ordinary rejection (exit 1): give it its own exit codes.
SAN_ENV = dict(os.environ, ASAN_OPTIONS="exitcode=86:detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="exitcode=87:print_stacktrace=1:halt_on_error=1")

PS = 4096
BS = 64 * 1024
CID = bytes(range(0x10, 0x20))
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1

# Header field offsets (native/include/lr_index.h).
H_MAGIC, H_VERSION, H_HEADER_SIZE, H_RECORD_SIZE, H_PAGE_SIZE, H_BLOCK_SIZE, H_TASK_COUNT = 0, 8, 12, 16, 20, 24, 28
H_RECORD_COUNT, H_CHECKSUM_COUNT, H_LAZY, H_EAGER, H_CID = 32, 40, 48, 56, 64
# Record field offsets.
R_PID, R_FLAGS, R_START, R_NR_PAGES, R_PAGES_ID, R_RESERVED, R_OFFSET, R_FIRST = 0, 4, 8, 16, 24, 28, 32, 40
RECORD_FIELDS = [(R_PID, "<I"), (R_FLAGS, "<I"), (R_START, "<Q"), (R_NR_PAGES, "<Q"), (R_PAGES_ID, "<I"),
                 (R_RESERVED, "<I"), (R_OFFSET, "<Q"), (R_FIRST, "<Q")]


# ---------------------------------------------------------------- test_spans

def run_counted(binary: Path, *args: str) -> str:
    """Run a C unit test (native/tests/check.h): its last line must be "N passed, 0 failed" and its exit status
    0. Its stdout."""
    p = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, env=SAN_ENV)
    lines = p.stdout.strip().splitlines()
    report = f"exit {p.returncode}\n--- stdout\n{p.stdout}--- stderr\n{p.stderr}"
    assert lines and re.fullmatch(r"\d+ passed, 0 failed", lines[-1]), report
    assert p.returncode == 0, report
    return p.stdout


@needs_spans
@pytest.mark.parametrize("seed", ["0x2545f4914f6cdd1d", "20240611"])
def test_spans_unit_and_model(seed: str) -> None:
    out = run_counted(SPANS_BIN, seed)
    assert f"seed {int(seed, 0):#x}" in out, out  # the seed from argv was used


def built(binary: Path):  # noqa: ANN201 (a pytest mark)
    """Skip a test of a C test binary that `make native` has not built here, saying so."""
    return pytest.mark.skipif(not binary.exists(), reason=f"{binary} is not built (run `make build` or `make native`)")


@built(WSET_BIN)
def test_working_set_merge_and_parse() -> None:
    run_counted(WSET_BIN)


@built(PROTO_BIN)
def test_frame_checksums_catch_damage_and_keep_the_stream_in_step() -> None:
    run_counted(PROTO_BIN)


@built(LIVE_FRAME_BIN)
def test_live_pages_are_checked_against_the_sums_sent_and_others_against_the_index() -> None:
    run_counted(LIVE_FRAME_BIN)


@built(UFFD_PLACE_BIN)
def test_all_zero_pages_are_placed_as_zero_pages_allocating_nothing() -> None:
    run_counted(UFFD_PLACE_BIN)


@built(SRC_LOCAL_BIN)
def test_local_source_delivers_exactly_the_checked_bytes_into_a_fake_sink() -> None:
    run_counted(SRC_LOCAL_BIN)


# ---------------------------------------------------------------- building indexes

def nblocks(start: int, nr_pages: int, block_size: int = BS) -> int:
    return lazyindex.block_count(start, nr_pages * PS, block_size)


def entry(pid: int, start: int, nr_pages: int, *, lazy: bool = True, pages_id: int = 1, offset: int = 0,
          block_size: int = BS, extra_sums: int = 0, flags: int | None = None) -> IndexEntry:
    """An IndexEntry with the right number (plus extra_sums) of arbitrary distinct checksums."""
    n = max(0, nblocks(start, nr_pages, block_size) + extra_sums)
    sums = tuple(xxhash.xxh3_64_intdigest(f"{pid}:{start}:{k}".encode()) for k in range(n))
    if flags is None:
        flags = RANGE_LAZY if lazy else 0
    return IndexEntry(pid, flags, start, nr_pages, pages_id, offset, sums)


def base_entries() -> list[IndexEntry]:
    """Several pids, lazy and eager records, single- and multi-block, aligned and unaligned, adjacent."""
    return [
        entry(1, 0x400000, 3, lazy=False, offset=0),                  # inside one block
        entry(1, 0x7F0000001000, 40, offset=3 * PS),                  # unaligned start, 3 blocks
        entry(1, 0x7F0000040000, 32, offset=43 * PS),                 # aligned, 2 blocks
        entry(7, 0x10000, 1, pages_id=2, offset=0),
        entry(7, 0x11000, 17, lazy=False, pages_id=2, offset=PS),     # adjacent to the previous one, 2 blocks
        entry(42, 0x7FFFFFFF0000, 16, lazy=False, pages_id=5, offset=0),
    ]


def base_index() -> LazyIndex:
    return LazyIndex(PS, BS, 3, CID, tuple(base_entries()))


def random_index(rng: random.Random, npids: int, block_size: int) -> LazyIndex:
    entries = []
    for pid in sorted(rng.sample(range(1, 1 << 22), npids)):
        addr, offset = rng.randrange(0, 1 << 35, PS), 0
        for _ in range(rng.randint(0, 8)):
            addr += rng.choice([0, PS, rng.randrange(PS, 1 << 30, PS)])
            n = rng.choice([1, 2, 15, 16, 17, rng.randint(1, 600)])
            entries.append(entry(pid, addr, n, lazy=rng.random() < 0.6, pages_id=pid, offset=offset,
                                 block_size=block_size))
            addr += n * PS
            offset += n * PS
    return LazyIndex(PS, block_size, npids + 1, rng.randbytes(16), tuple(entries))


def refix(data: bytes) -> bytes:
    """Recompute the trailer so that the checks past it are reached."""
    body = data[:-TRAILER.size]
    return body + TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def patch(data: bytes, offset: int, fmt: str, value, fix: bool = True) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return refix(bytes(buf)) if fix else bytes(buf)


def record_at(i: int) -> int:
    return HEADER.size + i * RECORD.size


# ---------------------------------------------------------------- running both readers

@dataclass
class Verdict:
    ok: bool
    counts: tuple[int, ...] | None  # records, checksums, lazy, eager, tasks
    message: str


def python_reader(data: bytes, where: str) -> Verdict:
    try:
        idx = lazyindex.decode(data, where)
    except CorruptCheckpoint as exc:
        return Verdict(False, None, str(exc))
    counts = (len(idx.entries), sum(len(e.checksums) for e in idx.entries), idx.lazy_pages, idx.eager_pages,
              idx.task_count)
    return Verdict(True, counts, "ok")


def c_reader(path: Path) -> Verdict:
    p = subprocess.run([str(INDEX_BIN), str(path)], capture_output=True, text=True, timeout=30, env=SAN_ENV)
    what = f"{INDEX_BIN.name} {path}: exit {p.returncode}, stdout {p.stdout!r}, stderr {p.stderr!r}"
    assert p.returncode in (0, 1) and not p.stderr, f"crash, sanitizer report or internal inconsistency: {what}"
    line = p.stdout.strip()
    assert "\n" not in line, what
    if p.returncode == 0:
        m = re.fullmatch(r"ok records=(\d+) checksums=(\d+) lazy=(\d+) eager=(\d+) tasks=(\d+)", line)
        assert m, what
        return Verdict(True, tuple(int(g) for g in m.groups()), line)
    assert line.startswith("error: "), what
    assert str(path) in line, f"the message does not name the file: {what}"
    return Verdict(False, None, line)


class Readers:
    """Writes candidate index bytes to one file and runs both readers on it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "index.bin"

    def run(self, data: bytes) -> tuple[Verdict, Verdict]:
        self.path.write_bytes(data)
        return python_reader(data, str(self.path)), c_reader(self.path)

    def disagreement(self, name: str, data: bytes, expect: str | None = None) -> str | None:
        """None when both readers agree (both reject, or both accept with the same counts).

        expect: "reject" or "accept" to require that outcome too; a string starting with "reject:"
        also requires the C message to contain what follows.
        """
        py, c = self.run(data)
        where = f"{name}: python {'ok ' + str(py.counts) if py.ok else 'rejects: ' + py.message} / C {c.message}"
        if py.ok != c.ok or (py.ok and py.counts != c.counts):
            return f"DISAGREE {where}"
        if expect is not None:
            want_ok = expect == "accept"
            if py.ok != want_ok:
                return f"expected {expect}: {where}"
            if expect.startswith("reject:") and expect[len("reject:"):] not in c.message:
                return f"expected the C message to say {expect[len('reject:'):]!r}: {where}"
        return None


def assert_all_agree(readers: Readers, cases: list[tuple[str, bytes, str | None]]) -> None:
    problems = [p for name, data, expect in cases if (p := readers.disagreement(name, data, expect))]
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


# ---------------------------------------------------------------- valid indexes

def valid_indexes() -> list[tuple[str, LazyIndex]]:
    rng = random.Random(0x1DE7)
    return [
        ("several pids, lazy/eager, multi-block", base_index()),
        ("empty", LazyIndex(PS, BS, 0, CID, ())),
        ("only eager", LazyIndex(PS, BS, 1, CID, (entry(5, 0x1000, 20, lazy=False),))),
        ("block_size == page_size", LazyIndex(PS, PS, 2, CID, (
            entry(1, 0x1000, 5, block_size=PS), entry(2, 0x1000, 1, lazy=False, block_size=PS)))),
        ("block_size 2 GiB, a 4 GiB record", LazyIndex(PS, 1 << 31, 1, CID, (
            entry(3, (1 << 31) - PS, 1 << 20, block_size=1 << 31),))),
        ("extreme pids and addresses", LazyIndex(PS, BS, U32, CID, (
            entry(0, 0, 1),
            entry(0, 0x1000, 1, lazy=False),  # adjacent
            entry(U32, (1 << 64) - 3 * PS, 2, lazy=False, offset=(1 << 63)),  # ends one page below 2^64
        ))),
        ("same addresses in different pids", LazyIndex(PS, BS, 2, CID, (
            entry(10, 0x7000, 30), entry(11, 0x7000, 30), entry(12, 0x7000, 30, lazy=False)))),
        ("live records (lazy, read from the stopped tree: no pages file)", LazyIndex(PS, BS, 2, CID, (
            entry(1, 0x1000, 3, lazy=False), entry(1, 0x10000, 40, flags=RANGE_LAZY | lazyindex.RANGE_LIVE, pages_id=0),
            entry(2, 0x10000, 8, flags=RANGE_LAZY | lazyindex.RANGE_LIVE, pages_id=0)))),
        ("random, 20 pids, 64 KiB blocks", random_index(rng, 20, BS)),
        ("random, 6 pids, 16 KiB blocks", random_index(rng, 6, 4 * PS)),
        ("random, 9 pids, 1 MiB blocks", random_index(rng, 9, 1 << 20)),
    ]


@needs_index
@pytest.mark.parametrize("name,index", valid_indexes(), ids=[n for n, _ in valid_indexes()])
def test_valid_index_both_readers_accept_with_same_counts(tmp_path: Path, name: str, index: LazyIndex) -> None:
    readers = Readers(tmp_path)
    data = encode(index)
    py, c = readers.run(data)
    assert py.ok, py.message
    assert c.ok, c.message
    want = (len(index.entries), sum(len(e.checksums) for e in index.entries), index.lazy_pages, index.eager_pages,
            index.task_count)
    assert py.counts == want
    assert c.counts == want, c.message


@needs_index
def test_lazyindex_write_then_c_reads(tmp_path: Path) -> None:
    path = tmp_path / "written.bin"
    lazyindex.write(path, base_index())
    c = c_reader(path)
    assert c.ok and c.counts == (6, 10, 73, 36, 3), c.message


@needs_index
def test_index_for_another_page_size_is_rejected_by_c(tmp_path: Path) -> None:
    """A valid index of an 8 KiB-page machine: Python accepts it, lr_index_open on a 4 KiB machine must not."""
    ps = 8192
    index = LazyIndex(ps, BS, 1, CID, (IndexEntry(1, RANGE_LAZY, 0x10000, 4, 1, 0, (1,)),))
    data = encode(index)
    py, c = Readers(tmp_path).run(data)
    assert py.ok, py.message
    assert not c.ok and "page size 8192, this machine uses 4096" in c.message, c.message


@needs_index
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.bin"
    c = c_reader(path)
    assert not c.ok and "No such file" in c.message
    with pytest.raises(CorruptCheckpoint):
        lazyindex.read(path)


# ---------------------------------------------------------------- corrupted headers

def header_cases(data: bytes) -> list[tuple[str, bytes, str | None]]:
    h = dict(zip(("magic", "version", "header_size", "record_size", "page_size", "block_size", "task_count",
                  "record_count", "checksum_count", "lazy", "eager", "cid"), HEADER.unpack_from(data)))
    rc, cc = h["record_count"], h["checksum_count"]
    changes: list[tuple[str, int, str, object, str | None]] = []  # name, offset, fmt, value, C message when fixed

    for v in (b"LRINDEX\x01", b"lrindex\0", bytes(8), b"XLRINDEX", b"LRINDEX "):
        changes.append((f"magic {v!r}", H_MAGIC, "8s", v, "bad magic"))
    for v in (0, 2, U32):
        changes.append((f"version {v}", H_VERSION, "<I", v, "unsupported layout"))
    for v in (0, 79, 81, 88, U32):
        changes.append((f"header_size {v}", H_HEADER_SIZE, "<I", v, "unsupported layout"))
    for v in (0, 47, 49, 56):
        changes.append((f"record_size {v}", H_RECORD_SIZE, "<I", v, "unsupported layout"))
    for v in (0, 1, 2048, 4095, 4097, 3 * PS, 1 << 31, U32):
        changes.append((f"page_size {v}", H_PAGE_SIZE, "<I", v, "page size"))
    for v in (0, 1, 2048, 4095, 4097, BS - 1, BS + 1, 3 * BS, (1 << 31) + 1, U32):
        changes.append((f"block_size {v}", H_BLOCK_SIZE, "<I", v, "block_size"))
    for v in (PS, 2 * BS, 1 << 31):  # valid sizes, but the records' checksum counts no longer fit
        changes.append((f"block_size {v} (a power of two)", H_BLOCK_SIZE, "<I", v, None))
    for v in (0, rc - 1, rc + 1, len(data) // RECORD.size + 1, 1 << 32, rc + (1 << 60), 1 << 63, U64):
        changes.append((f"record_count {v}", H_RECORD_COUNT, "<Q", v, None))
    for v in (0, cc - 1, cc + 1, len(data) // 8 + 1, cc + (1 << 61), 1 << 63, U64):
        changes.append((f"checksum_count {v}", H_CHECKSUM_COUNT, "<Q", v, None))
    for v in (0, h["lazy"] - 1, h["lazy"] + 1, h["eager"], U64):
        changes.append((f"lazy_pages {v}", H_LAZY, "<Q", v, "header page counts differ"))
    for v in (0, h["eager"] + 1, h["lazy"], U64):
        changes.append((f"eager_pages {v}", H_EAGER, "<Q", v, "header page counts differ"))

    cases: list[tuple[str, bytes, str | None]] = []
    for name, off, fmt, value, msg in changes:
        cases.append((f"{name}, trailer recomputed", patch(data, off, fmt, value), "reject:" + msg if msg else "reject"))
        cases.append((f"{name}, stale trailer", patch(data, off, fmt, value, fix=False), "reject"))
    # Fields nobody checks: fine with a recomputed trailer, caught by the trailer otherwise.
    for name, off, fmt, value in (("task_count 0", H_TASK_COUNT, "<I", 0), ("task_count max", H_TASK_COUNT, "<I", U32),
                                  ("checkpoint_id", H_CID, "16s", bytes(16))):
        cases.append((f"{name}, trailer recomputed", patch(data, off, fmt, value), "accept"))
        cases.append((f"{name}, stale trailer", patch(data, off, fmt, value, fix=False), "reject:checksum mismatch"))
    return cases


@needs_index
def test_corrupt_header_both_reject(tmp_path: Path) -> None:
    data = encode(base_index())
    assert_all_agree(Readers(tmp_path), header_cases(data))


@needs_index
def test_record_count_that_wraps_the_size_computation(tmp_path: Path) -> None:
    """record_count * 48 and checksum_count * 8 wrap around 2^64 to the real sizes: the bounds must come first."""
    data = encode(base_index())
    rc, cc = HEADER.unpack_from(data)[7:9]
    cases = [
        ("record_count + 2^60", patch(data, H_RECORD_COUNT, "<Q", rc + (1 << 60)), "reject:counts exceed the file size"),
        ("checksum_count + 2^61", patch(data, H_CHECKSUM_COUNT, "<Q", cc + (1 << 61)), "reject:counts exceed the file size"),
    ]
    assert_all_agree(Readers(tmp_path), cases)


# ---------------------------------------------------------------- corrupted records

def record_cases() -> list[tuple[str, bytes, str | None]]:
    base = base_entries()
    data = encode(base_index())

    def with_entries(entries: list[IndexEntry]) -> bytes:
        return encode(LazyIndex(PS, BS, 3, CID, tuple(entries)))

    def replaced(i: int, e: IndexEntry) -> list[IndexEntry]:
        out = list(base)
        out[i] = e
        return out

    order = "reject:out of order or overlapping"
    cases: list[tuple[str, bytes, str | None]] = [
        # Order and overlap (encode does not sort: first_checksum and the counts stay consistent).
        ("two records of a pid swapped", with_entries([base[0], base[2], base[1]] + base[3:]), order),
        ("pids out of order", with_entries(base[3:5] + base[0:3] + base[5:]), order),
        ("pid interleaved", with_entries([base[0], base[3], base[1], base[2], base[4], base[5]]), order),
        ("same start", with_entries([base[3], entry(7, 0x10000, 1, pages_id=2)] + base[4:]), order),
        ("overlapping by one page", with_entries(
            base[:1] + [entry(1, 0x402000, 5, offset=3 * PS)] + base[1:]), order),
        ("contained in the previous", with_entries(
            base[:2] + [entry(1, 0x7F0000002000, 2, offset=3 * PS)] + base[2:]), order),
        ("same start, different pids swapped", with_entries([entry(9, 0x1000, 1), entry(8, 0x1000, 1)]), order),
        # Flags and reserved.
        *[(f"flags {f:#x}", with_entries(replaced(1, replace(base[1], flags=f))), "reject:unknown flags")
          for f in (8, 9, 0x80000000, U32)],
        # A live record (RANGE_LIVE, 4) must be lazy and not unverified.
        *[(f"flags {f:#x}", with_entries(replaced(1, replace(base[1], flags=f))), "reject:a live record must be lazy")
          for f in (4, 6, 7)],
        *[(f"reserved {v:#x}", patch(data, record_at(i) + R_RESERVED, "<I", v), "reject:reserved field set")
          for i, v in ((0, 1), (5, U32))],
        # Empty, unaligned, beyond the address space.
        ("nr_pages 0", with_entries(replaced(3, replace(base[3], nr_pages=0, checksums=()))), "reject:empty"),
        ("start unaligned by 1", with_entries(replaced(1, entry(1, 0x7F0000001001, 40, offset=3 * PS))), "reject:unaligned"),
        ("start unaligned by 2048", with_entries(replaced(0, entry(1, 0x400800, 3, lazy=False))), "reject:unaligned"),
        ("offset unaligned", with_entries(replaced(2, replace(base[2], offset=43 * PS + 8))), "reject:unaligned"),
        ("end beyond 2^64", with_entries([IndexEntry(1, RANGE_LAZY, 0x1000, 1 << 52, 1, 0, (1, 2, 3))]), "reject:beyond"),
        ("nr_pages 2^64-1", with_entries([IndexEntry(1, RANGE_LAZY, 0, U64, 1, 0, (1,))]), "reject"),
        ("start near 2^64, two pages", with_entries([entry(1, (1 << 64) - PS, 2)]), "reject"),
        # Checksum ranges.
        *[(f"record {i} first_checksum {how}", patch(data, record_at(i) + R_FIRST, "<Q", v), "reject:first checksum")
          for i, how, v in ((0, "1", 1), (1, "- 1", 0), (1, "+ 1", 2), (5, "+ 1", 10), (5, "2^64-1", U64), (3, "0", 0))],
        ("a record one checksum short", with_entries(replaced(1, entry(1, 0x7F0000001000, 40, offset=3 * PS,
                                                                       extra_sums=-1))), "reject:first checksum"),
        ("a record one checksum long", with_entries(replaced(4, entry(7, 0x11000, 17, lazy=False, pages_id=2,
                                                                      offset=PS, extra_sums=1))), "reject:first checksum"),
        ("last record one checksum short", with_entries(base[:5] + [replace(base[5], checksums=())]),
         "reject:needs more checksums"),
        ("last record one checksum long", with_entries(base[:5] + [replace(base[5], checksums=(1, 2))]),
         "reject:records use 10 checksums, the header counts 11"),
        # A record's block count read with the wrong block size.
        ("checksums counted for 16 KiB blocks", with_entries([entry(1, 0x1000, 40, block_size=4 * PS)]), "reject"),
    ]
    return cases


@needs_index
def test_corrupt_records_both_reject(tmp_path: Path) -> None:
    assert_all_agree(Readers(tmp_path), record_cases())


@needs_index
def test_adjacent_records_are_fine(tmp_path: Path) -> None:
    data = encode(LazyIndex(PS, BS, 1, CID, (entry(1, 0x1000, 15), entry(1, 0x10000, 1, lazy=False),
                                             entry(1, 0x11000, 16), entry(2, 0, 1))))
    assert_all_agree(Readers(tmp_path), [("adjacent", data, "accept")])


@needs_index
def test_random_record_field_changes_readers_agree(tmp_path: Path) -> None:
    """Random record fields set to edge values (trailer recomputed): whatever one reader says, the other says too."""
    rng = random.Random(0xF1E1D)
    data = encode(base_index())
    cases = []
    while len(cases) < 60:
        i = rng.randrange(6)
        off, fmt = rng.choice(RECORD_FIELDS)
        old = struct.unpack_from(fmt, data, record_at(i) + off)[0]
        top = U32 if fmt == "<I" else U64
        value = rng.choice([0, 1, PS, old + 1, old - 1, old + PS, old - PS, old ^ (1 << rng.randrange(64 if top == U64 else 32)),
                            top, top - 4 * PS + 1, 1 << 47])
        value &= top
        nr_pages = struct.unpack_from("<Q", data, record_at(i) + R_NR_PAGES)[0]
        if off in (R_START, R_OFFSET) and value % PS == 0 and value + nr_pages * PS >= 1 << 64:
            continue  # a page-aligned range reaching 2^64: test_readers_agree_at_the_top_of_the_64_bit_range
        cases.append((f"record {i} field @{off}: {old:#x} -> {value:#x}", patch(data, record_at(i) + off, fmt, value), None))
    assert_all_agree(Readers(tmp_path), cases)


@needs_index
@pytest.mark.parametrize("name,entry_", [
    ("a record ending exactly at 2^64", IndexEntry(1, RANGE_LAZY, (1 << 64) - PS, 1, 1, 0, (7,))),
    ("a record whose file offset + length is exactly 2^64", IndexEntry(1, RANGE_LAZY, 0x10000, 2, 1, (1 << 64) - 2 * PS, (7,))),
    ("a record whose file offset + length exceeds 2^64", IndexEntry(1, RANGE_LAZY, 0x10000, 2, 1, (1 << 64) - PS, (7,))),
])
def test_readers_agree_at_the_top_of_the_64_bit_range(tmp_path: Path, name: str, entry_: IndexEntry) -> None:
    data = encode(LazyIndex(PS, BS, 1, CID, (entry_,)))
    assert_all_agree(Readers(tmp_path), [(name, data, None)])


# ---------------------------------------------------------------- truncation and damage

@needs_index
def test_truncated_or_extended_both_reject(tmp_path: Path) -> None:
    data = encode(base_index())
    n = len(data)
    sums_at = record_at(6)
    lengths = {0, 1, 7, 8, 79, 80, 81, 87, 88, 89, record_at(1) - 1, record_at(1), record_at(1) + 8, record_at(3) + 20,
               sums_at - 1, sums_at, sums_at + 8, sums_at + 12, n - 9, n - 8, n - 7, n - 1}
    lengths |= set(random.Random(7).sample(range(n), 16))
    cases = []
    for length in sorted(lengths):
        cases.append((f"truncated to {length}", data[:length], "reject"))
        if length >= 88:
            cases.append((f"truncated to {length}, trailer recomputed", refix(data[:length]), "reject"))
    for extra in (1, 8, 48):
        cases.append((f"{extra} bytes appended", data + bytes(extra), "reject"))
        cases.append((f"{extra} bytes appended, trailer recomputed", refix(data + bytes(extra + 8)), "reject"))
    assert_all_agree(Readers(tmp_path), cases)


@needs_index
def test_flipped_byte_stale_trailer_both_reject(tmp_path: Path) -> None:
    data = encode(base_index())
    rng = random.Random(0xB17)
    cases = []
    for pos in list(range(0, len(data), 4)) + [len(data) - 1, len(data) - 6, 9, 33]:
        buf = bytearray(data)
        buf[pos] ^= 1 << rng.randrange(8) if pos % 8 else 0xFF
        cases.append((f"byte {pos} flipped", bytes(buf), "reject"))
    assert_all_agree(Readers(tmp_path), cases)


@needs_index
def test_flipped_byte_trailer_recomputed_readers_agree(tmp_path: Path) -> None:
    """With a valid trailer, a flip reaches the field checks: both readers must reach the same verdict."""
    data = encode(base_index())
    rng = random.Random(0xF11)
    cases = []
    for pos in range(1, len(data) - 8, 4):
        buf = bytearray(data)
        buf[pos] ^= 1 << rng.randrange(8)
        cases.append((f"byte {pos} flipped, trailer recomputed", refix(bytes(buf)), None))
    assert_all_agree(Readers(tmp_path), cases)
