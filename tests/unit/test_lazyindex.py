"""Unit tests for lazyrestore.lazyindex: the binary index shared with the C daemons."""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import xxhash

from lazyrestore import lazyindex
from lazyrestore.errors import CorruptCheckpoint
from lazyrestore.images import PE_LAZY, PE_PARENT, PE_PRESENT, Pagemap, PagemapEntry, Vma
from lazyrestore.lazyview import view_entries
from lazyrestore.lazyindex import (
    CHECKSUM,
    HEADER,
    RANGE_LAZY,
    RANGE_LIVE,
    RANGE_UNVERIFIED,
    RECORD,
    TRAILER,
    IndexEntry,
    LazyIndex,
    block_spans,
    checksum_entries,
    decode,
    encode,
    plan_ranges,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYOUT_TOOL = REPO_ROOT / "build" / "native" / "lr-index-layout"

PS = 4096
BS = 64 * 1024
CID = bytes(range(0xA0, 0xB0))
WHERE = "/ckpt/lazyrestore/index.bin"


# ---------------------------------------------------------------- helpers

def align_down(x: int, a: int) -> int:
    return x - x % a


def align_up(x: int, a: int) -> int:
    return -(-x // a) * a


def nblocks(start: int, nr_pages: int, page_size: int, block_size: int) -> int:
    """Number of checksum blocks of a record, by the formula of native/include/lr_index.h."""
    end = start + nr_pages * page_size
    return (align_up(end, block_size) - align_down(start, block_size)) // block_size


def entry(pid: int, start: int, nr_pages: int, *, lazy: bool = True, pages_id: int = 1, offset: int = 0,
          page_size: int = PS, block_size: int = BS) -> IndexEntry:
    """An IndexEntry with the right number of (arbitrary but distinct) checksums."""
    n = nblocks(start, nr_pages, page_size, block_size)
    sums = tuple(xxhash.xxh3_64_intdigest(f"{pid}:{start}:{k}".encode()) for k in range(n))
    return IndexEntry(pid, RANGE_LAZY if lazy else 0, start, nr_pages, pages_id, offset, sums)


def sample_index() -> LazyIndex:
    """Several pids, lazy and eager records, single- and multi-block records."""
    entries = (
        entry(1, 0x400000, 3, lazy=False, pages_id=1, offset=0),                    # inside one block
        entry(1, 0x7F0000001000, 40, lazy=True, pages_id=1, offset=3 * PS),         # unaligned, 3 blocks
        entry(1, 0x7F0000040000, 32, lazy=True, pages_id=1, offset=43 * PS),        # aligned, 2 blocks
        entry(7, 0x10000, 1, lazy=True, pages_id=2, offset=0),
        entry(7, 0x11000, 17, lazy=False, pages_id=2, offset=PS),                   # adjacent to previous
        entry(42, 0x7FFFFFFF0000, 16, lazy=False, pages_id=5, offset=0),
    )
    return LazyIndex(page_size=PS, block_size=BS, task_count=3, checkpoint_id=CID, entries=entries)


def small_index() -> LazyIndex:
    """Two records, three checksums: small enough to corrupt byte by byte."""
    return LazyIndex(PS, 8192, 2, CID, (
        entry(1, 0x1000, 2, lazy=True, block_size=8192),   # blocks [0x1000,0x2000) [0x2000,0x3000)
        entry(2, 0x4000, 1, lazy=False, block_size=8192),  # one block
    ))


def refix_trailer(data: bytes) -> bytes:
    """Recompute the trailer (XXH3-64 of every preceding byte) of index bytes."""
    body = data[:-TRAILER.size]
    return body + TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def record_at(i: int) -> int:
    return HEADER.size + i * RECORD.size


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one little-endian field and make the trailer valid again."""
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return refix_trailer(bytes(buf))


def format_fields(s: struct.Struct) -> list[str]:
    """The per-field format codes of a struct format string ("8s", "I", "Q", ...)."""
    fmt = s.format.lstrip("<>=!@").replace(" ", "")
    tokens: list[str] = []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt):
        if code in "sp":
            tokens.append(f"{count}{code}")
        else:
            tokens.extend([code] * int(count or 1))
    return tokens


def python_layout(s: struct.Struct) -> list[tuple[int, int]]:
    """(offset, size) of each field, from struct.calcsize on the format's prefixes."""
    tokens = format_fields(s)
    return [(struct.calcsize("<" + "".join(tokens[:i])), struct.calcsize("<" + tokens[i]))
            for i in range(len(tokens))]


# ---------------------------------------------------------------- round trip

def test_round_trip_several_pids_lazy_eager_multiblock() -> None:
    index = sample_index()
    data = encode(index)
    assert decode(data, WHERE) == index


def test_encoded_size_and_counts() -> None:
    index = sample_index()
    data = encode(index)
    n_sums = sum(len(e.checksums) for e in index.entries)
    assert n_sums == 1 + 3 + 2 + 1 + 2 + 1
    assert len(data) == HEADER.size + len(index.entries) * RECORD.size + n_sums * CHECKSUM.size + TRAILER.size
    decoded = decode(data, WHERE)
    assert decoded.lazy_pages == 40 + 32 + 1
    assert decoded.eager_pages == 3 + 17 + 16
    assert [e.lazy for e in decoded.entries] == [False, True, True, True, False, False]


def test_round_trip_block_size_equal_to_page_size() -> None:
    entries = (entry(3, 0x5000, 4, block_size=PS), entry(3, 0x20000, 1, lazy=False, block_size=PS, offset=4 * PS))
    index = LazyIndex(PS, PS, 1, CID, entries)
    assert [len(e.checksums) for e in entries] == [4, 1]
    assert decode(encode(index), WHERE) == index


def test_round_trip_empty_index() -> None:
    index = LazyIndex(PS, BS, 1, CID, ())
    data = encode(index)
    assert len(data) == HEADER.size + TRAILER.size
    assert decode(data, WHERE) == index


def test_write_and_read_file(tmp_path: Path) -> None:
    path = tmp_path / "index.bin"
    lazyindex.write(path, sample_index())
    assert lazyindex.read(path) == sample_index()
    assert not path.with_suffix(".tmp").exists()


def test_read_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "index.bin"
    with pytest.raises(CorruptCheckpoint) as info:
        lazyindex.read(path)
    assert str(path) in str(info.value)
    assert "missing" in str(info.value)


# ---------------------------------------------------------------- block_spans

def check_spans(start: int, length: int, bs: int, spans: list[tuple[int, int]]) -> None:
    assert sum(n for _, n in spans) == length
    addr = start
    for a, n in spans:
        assert a == addr, "spans must be contiguous and in order"
        assert n > 0
        assert a // bs == (a + n - 1) // bs, f"span {a:#x}+{n:#x} crosses a block boundary"
        addr = a + n
    assert addr == start + length
    # every span but the first starts, and every span but the last ends, on a boundary
    for a, _ in spans[1:]:
        assert a % bs == 0
    for a, n in spans[:-1]:
        assert (a + n) % bs == 0


def test_block_spans_aligned_start_and_end() -> None:
    spans = block_spans(0x10000, 0x30000, 0x10000)
    assert spans == [(0x10000, 0x10000), (0x20000, 0x10000), (0x30000, 0x10000)]


def test_block_spans_unaligned_start() -> None:
    spans = block_spans(0x13000, 0x1D000, 0x10000)
    assert spans == [(0x13000, 0xD000), (0x20000, 0x10000)]


def test_block_spans_unaligned_end() -> None:
    spans = block_spans(0x20000, 0x12000, 0x10000)
    assert spans == [(0x20000, 0x10000), (0x30000, 0x2000)]


def test_block_spans_unaligned_both() -> None:
    spans = block_spans(0x1F000, 0x3000, 0x10000)
    assert spans == [(0x1F000, 0x1000), (0x20000, 0x2000)]


def test_block_spans_inside_one_block() -> None:
    assert block_spans(0x12000, 0x3000, 0x10000) == [(0x12000, 0x3000)]
    assert block_spans(0x10000, 0x10000, 0x10000) == [(0x10000, 0x10000)]


def test_block_spans_empty() -> None:
    assert block_spans(0x12000, 0, 0x10000) == []


def test_block_spans_many_blocks() -> None:
    start, length, bs = 0x7F0000003000, 1000 * 0x10000 + 0x5000, 0x10000
    spans = block_spans(start, length, bs)
    assert len(spans) == 1001
    assert spans[0] == (start, 0xD000)
    assert spans[-1] == (start + length - 0x8000, 0x8000)
    check_spans(start, length, bs, spans)


@pytest.mark.parametrize("bs", [PS, 2 * PS, BS, 1 << 21])
def test_block_spans_properties_random(bs: int) -> None:
    rng = random.Random(bs)
    for _ in range(200):
        start = rng.randrange(0, 1 << 47, PS)
        length = rng.randrange(1, 70) * PS
        spans = block_spans(start, length, bs)
        check_spans(start, length, bs, spans)
        assert len(spans) == nblocks(start, length // PS, PS, bs)


# ---------------------------------------------------------------- plan_ranges

VMAS = [
    Vma(0x10000, 0x14000, 3, 0x22, 0),   # A: 4 pages
    Vma(0x14000, 0x20000, 3, 0x22, 0),   # B: adjacent to A
    Vma(0x30000, 0x31000, 1, 0x22, 0),   # C: after a gap
]


def pe(vaddr: int, nr_pages: int, lazy: bool) -> PagemapEntry:
    return PagemapEntry(vaddr, nr_pages, PE_PRESENT | (PE_LAZY if lazy else 0))


def test_plan_ranges_splits_at_vma_boundary_and_accumulates_offset() -> None:
    pm = Pagemap(pid=9, pages_id=4, runs=(
        pe(0x10000, 2, lazy=False),   # eager, within A
        pe(0x13000, 3, lazy=True),    # lazy, crosses A|B -> two records
        pe(0x30000, 1, lazy=True),    # lazy, within C
    ))
    out = plan_ranges(pm, VMAS, PS, "pagemap-9.img")
    assert out == [
        IndexEntry(9, 0, 0x10000, 2, 4, 0),
        IndexEntry(9, RANGE_LAZY, 0x13000, 1, 4, 2 * PS),
        IndexEntry(9, RANGE_LAZY, 0x14000, 2, 4, 3 * PS),
        IndexEntry(9, RANGE_LAZY, 0x30000, 1, 4, 5 * PS),
    ]
    assert all(e.checksums == () for e in out)


def test_plan_ranges_offsets_follow_pagemap_order_not_address_order() -> None:
    # CRIU stores pages in pagemap order; offsets must follow that order.
    pm = Pagemap(pid=9, pages_id=1, runs=(pe(0x30000, 1, lazy=False), pe(0x10000, 3, lazy=True)))
    out = plan_ranges(pm, VMAS, PS, "w")
    assert [(e.start, e.offset) for e in out] == [(0x30000, 0), (0x10000, PS)]


def test_plan_ranges_entry_spanning_three_vmas() -> None:
    vmas = [Vma(0x10000, 0x11000, 3, 0, 0), Vma(0x11000, 0x13000, 3, 0, 0), Vma(0x13000, 0x18000, 3, 0, 0)]
    pm = Pagemap(pid=2, pages_id=3, runs=(pe(0x10000, 1, lazy=False), pe(0x11000, 4, lazy=True)))
    out = plan_ranges(pm, vmas, PS, "w")
    assert [(e.start, e.nr_pages, e.offset, e.lazy) for e in out] == [
        (0x10000, 1, 0, False), (0x11000, 2, PS, True), (0x13000, 2, 3 * PS, True)]
    assert sum(e.nr_pages for e in out) == 5


def test_plan_ranges_of_a_live_dump_leave_lazy_pages_in_the_tree() -> None:
    # `criu dump --lazy-pages`: lazy pages are not in the pages file (PE_LAZY without PE_PRESENT)
    vmas = [Vma(0x10000, 0x11000, 3, 0, 0), Vma(0x11000, 0x18000, 3, 0, 0)]
    pm = Pagemap(pid=2, pages_id=3, runs=(PagemapEntry(0x11000, 4, PE_LAZY), pe(0x10000, 1, lazy=False),
                                             PagemapEntry(0x16000, 2, PE_LAZY)))
    out = plan_ranges(pm, vmas, PS, "w", live=True)
    assert [(e.start, e.nr_pages, e.flags, e.pages_id, e.offset) for e in out] == [
        (0x11000, 4, RANGE_LAZY | RANGE_LIVE, 0, 0), (0x10000, 1, 0, 3, 0), (0x16000, 2, RANGE_LAZY | RANGE_LIVE, 0, 0)]
    unverified = plan_ranges(pm, vmas, PS, "w", lazy_dump=True)
    assert [e.flags for e in unverified] == [RANGE_LAZY | RANGE_UNVERIFIED, RANGE_UNVERIFIED,
                                             RANGE_LAZY | RANGE_UNVERIFIED]


def test_plan_ranges_empty_pagemap() -> None:
    assert plan_ranges(Pagemap(1, 1, ()), VMAS, PS, "w") == []


@pytest.mark.parametrize("vaddr,nr_pages,bad", [
    (0x8000, 1, 0x8000),       # before the first VMA
    (0x20000, 1, 0x20000),     # in the gap between B and C
    (0x1E000, 3, 0x20000),     # starts in B, runs into the gap
    (0x31000, 1, 0x31000),     # after the last VMA
])
def test_plan_ranges_page_outside_every_vma(vaddr: int, nr_pages: int, bad: int) -> None:
    where = "/ckpt/pagemap-9.img"
    pm = Pagemap(pid=9, pages_id=1, runs=(pe(0x10000, 1, lazy=False), pe(vaddr, nr_pages, lazy=True)))
    with pytest.raises(CorruptCheckpoint) as info:
        plan_ranges(pm, VMAS, PS, where)
    msg = str(info.value)
    assert info.value.path == where
    assert msg.startswith(where)
    assert f"{bad:#x}" in msg
    assert "no VMA" in msg


def test_plan_ranges_no_vmas_at_all() -> None:
    with pytest.raises(CorruptCheckpoint, match="no VMA"):
        plan_ranges(Pagemap(1, 1, (pe(0x10000, 1, lazy=True),)), [], PS, "w")


@pytest.mark.parametrize("flags", [
    PE_PARENT | PE_PRESENT,
    PE_PARENT,
    PE_PARENT | PE_PRESENT | PE_LAZY,
    PE_LAZY,          # lazy but not present: the bytes are not in the pages file
    0,
])
def test_plan_ranges_rejects_parent_or_absent_pages(flags: int) -> None:
    where = "/ckpt/pagemap-3.img"
    pm = Pagemap(pid=3, pages_id=6, runs=(pe(0x10000, 1, lazy=False), PagemapEntry(0x11000, 2, flags)))
    with pytest.raises(CorruptCheckpoint) as info:
        plan_ranges(pm, VMAS, PS, where)
    assert info.value.path == where
    assert "0x11000" in str(info.value)
    assert "pages-6.img" in str(info.value)


# ---------------------------------------------------------------- checksum_entries

def expected_checksums(data: bytes, e: IndexEntry, ps: int, bs: int) -> tuple[int, ...]:
    """Block checksums computed directly from the lr_index.h description."""
    end = e.start + e.nr_pages * ps
    base = align_down(e.start, bs)
    sums = []
    for k in range(nblocks(e.start, e.nr_pages, ps, bs)):
        lo = max(e.start, base + k * bs)
        hi = min(end, base + (k + 1) * bs)
        pos = e.offset + (lo - e.start)
        sums.append(xxhash.xxh3_64_intdigest(data[pos:pos + (hi - lo)]))
    return tuple(sums)


def lz(vaddr: int, nr_pages: int) -> PagemapEntry:
    """A lazy entry of a `criu dump --lazy-pages` (not in the pages file)."""
    return PagemapEntry(vaddr, nr_pages, PE_LAZY)


ANON = Vma(0x10000, 0x20000, 3, 0x22, 0)         # MAP_PRIVATE | MAP_ANONYMOUS
ANON2 = Vma(0x20000, 0x30000, 3, 0x22, 0)        # adjacent to ANON
FILE_PRIVATE = Vma(0x40000, 0x50000, 3, 0x02, 0)  # MAP_PRIVATE of a file
SHARED_ANON = Vma(0x50000, 0x60000, 3, 0x21, 0)   # MAP_SHARED | MAP_ANONYMOUS
HUGETLB = Vma(0x60000, 0x70000, 3, 0x40022, 0)     # MAP_HUGETLB | MAP_PRIVATE | MAP_ANONYMOUS


def live_records(entries: tuple[PagemapEntry, ...], vmas: list[Vma]) -> list[tuple[int, int, int]]:
    out = plan_ranges(Pagemap(pid=2, pages_id=3, runs=entries), vmas, PS, "w", live=True)
    return [(e.start, e.nr_pages, e.flags) for e in out]


LIVE = RANGE_LAZY | RANGE_LIVE


def test_live_ranges_of_one_anonymous_vma_join_across_holes() -> None:
    # lr-workload's layout: a hole every 16 pages; one record for the VMA, not one per entry
    entries = tuple(lz(0x10000 + k * 4 * PS, 3) for k in range(4))
    assert live_records(entries, [ANON]) == [(0x10000, 15, LIVE)]


def test_live_ranges_never_join_across_a_vma_boundary() -> None:
    # two adjacent anonymous VMAs, and one entry crossing their boundary: split there, joined on each side
    entries = (lz(0x1D000, 1), lz(0x1F000, 2), lz(0x22000, 1))
    assert live_records(entries, [ANON, ANON2]) == [(0x1D000, 3, LIVE), (0x20000, 3, LIVE)]


def test_live_ranges_never_join_across_an_eager_entry() -> None:
    entries = (lz(0x10000, 1), pe(0x12000, 1, lazy=False), lz(0x14000, 1))
    assert live_records(entries, [ANON]) == [(0x10000, 1, LIVE), (0x12000, 1, 0), (0x14000, 1, LIVE)]


def test_live_ranges_never_join_present_lazy_entries() -> None:
    # a lazy entry whose pages are in the pages file (PE_PRESENT) is checksummed from it, not read from the tree
    entries = (pe(0x10000, 1, lazy=True), pe(0x12000, 1, lazy=True), lz(0x14000, 1), lz(0x16000, 1))
    assert live_records(entries, [ANON]) == [
        (0x10000, 1, RANGE_LAZY), (0x12000, 1, RANGE_LAZY), (0x14000, 3, LIVE)]


def test_live_ranges_of_file_shared_or_hugetlb_vmas_stay_apart() -> None:
    # never lazy in CRIU 4.2.1 (vma_entry_can_be_lazy); if they were, a hole of a file mapping is the file's bytes
    entries = (lz(0x40000, 1), lz(0x42000, 1), lz(0x50000, 1), lz(0x52000, 1), lz(0x60000, 1), lz(0x62000, 1))
    assert live_records(entries, [FILE_PRIVATE, SHARED_ANON, HUGETLB]) == [
        (0x40000, 1, LIVE), (0x42000, 1, LIVE), (0x50000, 1, LIVE), (0x52000, 1, LIVE), (0x60000, 1, LIVE),
        (0x62000, 1, LIVE)]


def test_live_ranges_out_of_address_order_stay_apart() -> None:
    assert live_records((lz(0x14000, 1), lz(0x10000, 1)), [ANON]) == [(0x14000, 1, LIVE), (0x10000, 1, LIVE)]


def test_joined_live_ranges_keep_the_lazy_view_entries() -> None:
    # the lazy view merges lazy records within a VMA: the same entries whether the index joined them or not
    entries = tuple(lz(0x10000 + k * 4 * PS, 3) for k in range(4)) + (lz(0x20000, 2),)
    joined = plan_ranges(Pagemap(pid=2, pages_id=3, runs=entries), [ANON, ANON2], PS, "w", live=True)
    apart = [IndexEntry(2, LIVE, e.vaddr, e.nr_pages, 0, 0) for e in entries]
    assert view_entries(joined, [ANON, ANON2], PS) == view_entries(apart, [ANON, ANON2], PS)


def fake_pages(tmp_path: Path, n_pages: int, seed: int = 1) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(n_pages * PS)
    path = tmp_path / "pages-4.img"
    path.write_bytes(data)
    return path, data


def planned_entries() -> list[IndexEntry]:
    vmas = [Vma(0x10000, 0x14000, 3, 0, 0), Vma(0x14000, 0x40000, 3, 0, 0), Vma(0x7F0000000000, 0x7F0000100000, 3, 0, 0)]
    pm = Pagemap(pid=9, pages_id=4, runs=(
        pe(0x11000, 2, lazy=False),
        pe(0x13000, 9, lazy=True),            # crosses VMA boundary at 0x14000
        pe(0x7F0000003000, 20, lazy=True),    # unaligned, several 16 KiB blocks
    ))
    return plan_ranges(pm, vmas, PS, "pagemap-9.img")


def test_checksum_entries_match_xxh3_of_file_slices(tmp_path: Path) -> None:
    bs = 4 * PS
    planned = planned_entries()
    path, data = fake_pages(tmp_path, sum(e.nr_pages for e in planned))
    out = checksum_entries(planned, path, PS, bs)
    assert len(out) == len(planned)
    for before, after in zip(planned, out):
        assert (after.pid, after.flags, after.start, after.nr_pages, after.pages_id, after.offset) == \
               (before.pid, before.flags, before.start, before.nr_pages, before.pages_id, before.offset)
        assert after.checksums == expected_checksums(data, after, PS, bs)
        assert len(after.checksums) == len(block_spans(after.start, after.nr_pages * PS, bs))
    # spot check one block by hand: record 3 starts at 0x7F0000003000, its first block is its first page only
    rec = out[3]
    assert rec.start == 0x7F0000003000 and rec.offset == 11 * PS
    assert rec.checksums[0] == xxhash.xxh3_64_intdigest(data[11 * PS:12 * PS])
    assert rec.checksums[1] == xxhash.xxh3_64_intdigest(data[12 * PS:16 * PS])


def test_checksum_entries_detect_a_single_changed_byte(tmp_path: Path) -> None:
    bs = 4 * PS
    planned = planned_entries()
    path, data = fake_pages(tmp_path, sum(e.nr_pages for e in planned))
    before = checksum_entries(planned, path, PS, bs)
    pos = 15 * PS + 123   # in record 3 (offset 11 pages), block 1 (pages 12..15 of the file)
    path.write_bytes(data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1:])
    after = checksum_entries(planned, path, PS, bs)
    changed = [(i, k) for i, (a, b) in enumerate(zip(before, after))
               for k, (x, y) in enumerate(zip(a.checksums, b.checksums)) if x != y]
    assert changed == [(3, 1)]


@pytest.mark.parametrize("delta", [-1, +1, -PS, +PS])
def test_checksum_entries_wrong_size_names_file(tmp_path: Path, delta: int) -> None:
    planned = planned_entries()
    need = sum(e.nr_pages for e in planned) * PS
    path = tmp_path / "pages-4.img"
    path.write_bytes(b"\0" * (need + delta))
    with pytest.raises(CorruptCheckpoint) as info:
        checksum_entries(planned, path, PS, BS)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert str(need + delta) in str(info.value) and str(need) in str(info.value)


def test_checksum_entries_missing_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "pages-4.img"
    with pytest.raises(CorruptCheckpoint) as info:
        checksum_entries(planned_entries(), path, PS, BS)
    assert str(path) in str(info.value)
    assert "missing" in str(info.value)


def test_checksum_entries_then_encode_decode(tmp_path: Path) -> None:
    planned = planned_entries()
    path, _ = fake_pages(tmp_path, sum(e.nr_pages for e in planned))
    entries = tuple(checksum_entries(planned, path, PS, 4 * PS))
    index = LazyIndex(PS, 4 * PS, 1, CID, entries)
    assert decode(encode(index), WHERE) == index


# ---------------------------------------------------------------- corruption

def test_every_single_byte_flip_is_rejected() -> None:
    data = encode(small_index())
    assert len(data) == HEADER.size + 2 * RECORD.size + 3 * CHECKSUM.size + TRAILER.size
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[pos] ^= mask
            with pytest.raises(CorruptCheckpoint) as info:
                decode(bytes(bad), WHERE)
            assert info.value.path == WHERE, f"byte {pos} mask {mask:#x}"
            assert WHERE in str(info.value)


def test_every_truncation_is_rejected() -> None:
    data = encode(small_index())
    for n in range(len(data)):
        with pytest.raises(CorruptCheckpoint) as info:
            decode(data[:n], WHERE)
        assert WHERE in str(info.value), f"truncated to {n}"


def test_truncation_message_mentions_size() -> None:
    with pytest.raises(CorruptCheckpoint, match="truncated"):
        decode(encode(small_index())[:HEADER.size], WHERE)
    with pytest.raises(CorruptCheckpoint, match="does not match its header"):
        decode(encode(small_index())[:-1], WHERE)


def test_appended_bytes_are_rejected() -> None:
    data = encode(small_index())
    for extra in (b"\0", b"\0" * 8, encode(small_index())[-8:]):
        with pytest.raises(CorruptCheckpoint, match=re.escape(WHERE)):
            decode(data + extra, WHERE)


def test_flipped_checksum_byte_reports_checksum_mismatch() -> None:
    data = bytearray(encode(small_index()))
    data[HEADER.size + 2 * RECORD.size + 3] ^= 0x10     # inside the checksum array
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        decode(bytes(data), WHERE)


# ---------------------------------------------------------------- record checks (trailer re-fixed)

def test_trailer_refix_reaches_record_checks() -> None:
    """Sanity check of the helper: without re-fixing, a patch only trips the trailer."""
    data = encode(small_index())
    buf = bytearray(data)
    struct.pack_into("<I", buf, record_at(1) + 28, 1)   # reserved field
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        decode(bytes(buf), WHERE)
    with pytest.raises(CorruptCheckpoint, match="reserved field set"):
        decode(refix_trailer(bytes(buf)), WHERE)


def test_records_out_of_pid_order_are_rejected() -> None:
    a, b = entry(7, 0x10000, 2), entry(3, 0x10000, 2)     # pid 7 before pid 3
    data = encode(LazyIndex(PS, BS, 2, CID, (a, b)))
    assert refix_trailer(data) == data   # encode made a valid trailer: only the record check can object
    with pytest.raises(CorruptCheckpoint) as info:
        decode(data, WHERE)
    assert "out of order or overlapping" in str(info.value)
    assert "record 1" in str(info.value)
    assert WHERE in str(info.value)


def test_records_out_of_address_order_are_rejected() -> None:
    a, b = entry(1, 0x20000, 1), entry(1, 0x10000, 1)
    with pytest.raises(CorruptCheckpoint, match="out of order or overlapping"):
        decode(encode(LazyIndex(PS, BS, 1, CID, (a, b))), WHERE)


def test_overlapping_records_are_rejected_after_trailer_refix() -> None:
    a, b = entry(1, 0x10000, 4), entry(1, 0x20000, 1)
    data = encode(LazyIndex(PS, BS, 1, CID, (a, b)))
    decode(data, WHERE)   # valid as built
    # move record 1 into the last page of record 0 ([0x10000, 0x14000))
    bad = patch(data, record_at(1) + 8, "<Q", 0x13000)
    with pytest.raises(CorruptCheckpoint) as info:
        decode(bad, WHERE)
    assert "out of order or overlapping" in str(info.value)
    assert "0x13000" in str(info.value)


def test_duplicate_record_is_rejected() -> None:
    a = entry(1, 0x10000, 1)
    with pytest.raises(CorruptCheckpoint, match="out of order or overlapping"):
        decode(encode(LazyIndex(PS, BS, 1, CID, (a, a))), WHERE)


def test_adjacent_records_are_accepted() -> None:
    index = LazyIndex(PS, BS, 1, CID, (entry(1, 0x10000, 4), entry(1, 0x14000, 1)))
    assert decode(encode(index), WHERE) == index


@pytest.mark.parametrize("offset,fmt,value,problem", [
    (record_at(0) + 4, "<I", 8, "unknown flags"),
    (record_at(0) + 4, "<I", RANGE_LIVE, "contradict each other"),
    (record_at(0) + 4, "<I", RANGE_LIVE | RANGE_LAZY | RANGE_UNVERIFIED, "contradict each other"),
    (record_at(0) + 4, "<I", RANGE_LAZY | 0x100, "unknown flags"),
    (record_at(1) + 28, "<I", 7, "reserved field set"),
    (record_at(0) + 8, "<Q", 0x1001, "unaligned"),                       # start
    (record_at(1) + 32, "<Q", 100, "unaligned"),                         # offset
    (record_at(1) + 16, "<Q", 0, "empty"),                               # nr_pages
    (record_at(0) + 8, "<Q", (1 << 64) - PS, "beyond the address space"),  # start + 2 pages > 2**64
    (record_at(1) + 40, "<Q", 1, "first checksum 1, expected 2"),
    (record_at(0) + 40, "<Q", 1, "first checksum 1, expected 0"),
    (record_at(1) + 16, "<Q", 5, "needs checksums up to"),               # grows from 1 to 3 blocks
])
def test_bad_record_fields_are_rejected(offset: int, fmt: str, value: int, problem: str) -> None:
    data = encode(small_index())
    with pytest.raises(CorruptCheckpoint) as info:
        decode(patch(data, offset, fmt, value), WHERE)
    assert problem in str(info.value)
    assert WHERE in str(info.value)


def test_unused_checksums_are_rejected() -> None:
    data = encode(small_index())
    body = bytearray(data[:-TRAILER.size] + CHECKSUM.pack(12345))   # a fourth checksum nobody owns
    struct.pack_into("<Q", body, 40, 4)                              # header checksum_count
    with pytest.raises(CorruptCheckpoint, match="records use 3 checksums, the header counts 4"):
        decode(refix_trailer(bytes(body) + b"\0" * 8), WHERE)


@pytest.mark.parametrize("offset,value,problem", [
    (48, 99, "header counts 99 lazy"),    # lazy_pages
    (56, 0, "header counts 2 lazy / 0 eager"),  # eager_pages
])
def test_header_page_counts_must_match_records(offset: int, value: int, problem: str) -> None:
    with pytest.raises(CorruptCheckpoint, match=re.escape(problem)):
        decode(patch(encode(small_index()), offset, "<Q", value), WHERE)


@pytest.mark.parametrize("offset,fmt,value,problem", [
    (0, "<8s", b"LRINDEX1", "bad magic"),
    (8, "<I", 2, "unsupported layout"),
    (12, "<I", 81, "unsupported layout"),
    (16, "<I", 40, "unsupported layout"),
    (20, "<I", 4097, "page_size 4097"),
    (20, "<I", 2048, "page_size 2048"),
    (24, "<I", 2048, "block_size 2048"),
    (24, "<I", 3 * 4096, "block_size 12288"),
])
def test_bad_header_fields_are_rejected(offset: int, fmt: str, value: object, problem: str) -> None:
    buf = bytearray(encode(small_index()))
    struct.pack_into(fmt, buf, offset, value)
    with pytest.raises(CorruptCheckpoint, match=re.escape(problem)):
        decode(refix_trailer(bytes(buf)), WHERE)


def test_huge_record_is_rejected_quickly(tmp_path: Path) -> None:
    """A record claiming 2**40 pages but backed by one checksum must be rejected, not expanded.

    decode() computes a record's block count with len(block_spans(...)), which materialises
    one tuple per block (2**36 here) before comparing with checksum_count. Run it in a
    subprocess with a 256 MiB memory cap and a timeout so the suite itself cannot hang.
    """
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 28, 1 << 28))
        from lazyrestore.lazyindex import IndexEntry, LazyIndex, encode, decode, RANGE_LAZY
        from lazyrestore.errors import CorruptCheckpoint
        e = IndexEntry(1, RANGE_LAZY, 0, 1 << 40, 1, 0, (123,))
        data = encode(LazyIndex({PS}, {BS}, 1, bytes(16), (e,)))
        try:
            decode(data, "crafted")
        except CorruptCheckpoint as exc:
            print("CorruptCheckpoint:", exc)
            sys.exit(0)
        except MemoryError:
            print("MemoryError")
            sys.exit(3)
        print("accepted")
        sys.exit(4)
    """)
    try:
        # import the same lazyrestore as this test process does
        env = {**os.environ, "PYTHONPATH": str(Path(lazyindex.__file__).resolve().parents[1])}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10,
                              cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("decode() did not reject a record of 2**40 pages within 10 s (it enumerates its blocks)")
    assert proc.returncode == 0, f"decode() did not raise CorruptCheckpoint: {proc.stdout}{proc.stderr[-500:]}"
    assert "needs checksums" in proc.stdout


# ---------------------------------------------------------------- C / Python layout agreement

def c_layout() -> dict[str, tuple[int, int]]:
    if not LAYOUT_TOOL.exists():
        pytest.skip(f"{LAYOUT_TOOL} not built (run `make build`)")
    out = subprocess.run([str(LAYOUT_TOOL)], capture_output=True, text=True, timeout=10, check=True).stdout
    layout: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0].startswith("sizeof."):
            layout[parts[0]] = (int(parts[1]), int(parts[1]))
        else:
            name, off, size = parts
            layout[name] = (int(off), int(size))
    return layout


def c_fields(layout: dict[str, tuple[int, int]], struct_name: str) -> list[tuple[str, int, int]]:
    """Fields of one C struct, in the order lr-index-layout prints them (declaration order)."""
    return [(name.split(".", 1)[1], off, size) for name, (off, size) in layout.items()
            if name.startswith(struct_name + ".")]


def test_format_field_parser() -> None:
    assert format_fields(HEADER) == ["8s", "I", "I", "I", "I", "I", "I", "Q", "Q", "Q", "Q", "16s"]
    assert python_layout(struct.Struct("<2sI3Q"))[:3] == [(0, 2), (2, 4), (6, 8)]


@pytest.mark.parametrize("struct_name,py", [("lr_index_header", HEADER), ("lr_index_record", RECORD)])
def test_c_and_python_layouts_agree(struct_name: str, py: struct.Struct) -> None:
    layout = c_layout()
    cf = c_fields(layout, struct_name)
    pl = python_layout(py)
    assert len(cf) == len(pl), f"C has {len(cf)} fields in {struct_name}, Python's format has {len(pl)}"
    for (name, c_off, c_size), (p_off, p_size) in zip(cf, pl):
        assert (c_off, c_size) == (p_off, p_size), f"{struct_name}.{name}: C {c_off}/{c_size}, Python {p_off}/{p_size}"
    assert layout[f"sizeof.{struct_name}"][0] == py.size
    # C has no padding: fields tile the struct exactly
    assert sum(size for _, _, size in cf) == py.size


def test_c_offsets_locate_python_encoded_values() -> None:
    """Read an encoded index through the C offsets: each named field holds the right value."""
    layout = c_layout()
    index = sample_index()
    data = encode(index)

    def field(struct_name: str, name: str, base: int = 0) -> bytes:
        off, size = layout[f"{struct_name}.{name}"]
        return data[base + off:base + off + size]

    def u(struct_name: str, name: str, base: int = 0) -> int:
        return int.from_bytes(field(struct_name, name, base), "little")

    h = "lr_index_header"
    assert field(h, "magic") == b"LRINDEX\0"
    assert u(h, "version") == lazyindex.VERSION
    assert u(h, "header_size") == layout["sizeof.lr_index_header"][0]
    assert u(h, "record_size") == layout["sizeof.lr_index_record"][0]
    assert u(h, "page_size") == PS
    assert u(h, "block_size") == BS
    assert u(h, "task_count") == 3
    assert u(h, "record_count") == len(index.entries)
    assert u(h, "checksum_count") == sum(len(e.checksums) for e in index.entries)
    assert u(h, "lazy_pages") == index.lazy_pages
    assert u(h, "eager_pages") == index.eager_pages
    assert field(h, "checkpoint_id") == CID

    r = "lr_index_record"
    hsize, rsize = layout["sizeof.lr_index_header"][0], layout["sizeof.lr_index_record"][0]
    first = 0
    for i, e in enumerate(index.entries):
        base = hsize + i * rsize
        assert u(r, "pid", base) == e.pid
        assert u(r, "flags", base) == e.flags
        assert u(r, "start", base) == e.start
        assert u(r, "nr_pages", base) == e.nr_pages
        assert u(r, "pages_id", base) == e.pages_id
        assert u(r, "reserved", base) == 0
        assert u(r, "offset", base) == e.offset
        assert u(r, "first_checksum", base) == first
        first += len(e.checksums)
