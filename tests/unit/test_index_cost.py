"""Indexing cost grows with the ranges and the bytes, not with ranges x mappings (issue 16).

The plugin indexes a dump at its end, while CRIU still holds the tree frozen. zdtm's maps06 has
10,240 one-page private file mappings, each written once, between 10,240 one-page anonymous ones
inside a PROT_NONE reservation: about 30,000 VMAs and 20,000 ranges. The lazy view looked up each
record's VMA in a list of every VMA's start built anew per record (600 million steps: 10-17 s frozen).

These tests write such a checkpoint's images (pstree, mm, pagemap and a sparse pages file, no CRIU),
index it with checkpoint.write_metadata and count the work instead of timing it: how often each
mapping is visited, and how often each image is decoded.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from lazyrestore import checkpoint, images, lazyindex, lazyview, manifest, verify
from lazyrestore.criu import CriuBinary
from lazyrestore.images import PE_LAZY, PE_PRESENT, Vma, pb

from .test_image_entries import mm_bytes

PS = 4096
PAIRS = 10_240  # maps06 on 4 KiB pages: file page, anonymous page, PROT_NONE gap
BASE = 0x7F0000000000
PROT_RW, MAP_PRIVATE, MAP_ANONYMOUS = 3, 0x02, 0x20
VMA_AREA_REGULAR, VMA_FILE_PRIVATE, VMA_ANON_PRIVATE = 1 << 0, 1 << 2, 1 << 9
VISITS_PER_VMA = 8  # generous: listing starts, sorting, bisection; ranges x VMAs would be thousands


class CountedVmas(list[Vma]):
    """A process's VMAs that count every element handed out and fail past budget visits."""

    def __init__(self, vmas: list[Vma], budget: int) -> None:
        super().__init__(vmas)
        self.visits = 0
        self.budget = budget

    def _visit(self, n: int) -> None:
        self.visits += n
        if self.visits > self.budget:
            raise AssertionError(f"{self.visits} visits of {len(self)} VMAs: the work grows with ranges x VMAs")

    def __iter__(self) -> Iterator[Vma]:
        for vma in super().__iter__():
            self._visit(1)
            yield vma

    def __getitem__(self, i: Any) -> Any:
        item = super().__getitem__(i)
        self._visit(len(item) if isinstance(i, slice) else 1)
        return item


def maps06_vmas() -> list[pb.vma_entry]:
    out = []
    for i in range(PAIRS):
        at = BASE + 3 * i * PS
        out += [pb.vma_entry(start=at, end=at + PS, pgoff=0, shmid=7, prot=PROT_RW, flags=MAP_PRIVATE,
                             status=VMA_AREA_REGULAR | VMA_FILE_PRIVATE, fd=-1),
                pb.vma_entry(start=at + PS, end=at + 2 * PS, pgoff=0, shmid=0, prot=PROT_RW,
                             flags=MAP_PRIVATE | MAP_ANONYMOUS, status=VMA_AREA_REGULAR | VMA_ANON_PRIVATE, fd=-1),
                pb.vma_entry(start=at + 2 * PS, end=at + 3 * PS, pgoff=0, shmid=0, prot=0,
                             flags=MAP_PRIVATE | MAP_ANONYMOUS, status=VMA_AREA_REGULAR | VMA_ANON_PRIVATE, fd=-1)]
    return out


def write_maps06_images(images_dir: Path) -> None:
    """One process, maps06's layout: each written file page eager (CRIU dumps it present, not lazy), each
    anonymous page lazy; the pages file sparse (its bytes are zeros, the index hashes them all the same)."""
    (images_dir / "mm-1.img").write_bytes(mm_bytes(maps06_vmas()))
    tree = pb.pstree_entry(pid=1, ppid=0, pgid=1, sid=1, threads=[1])
    (images_dir / "pstree.img").write_bytes(images.image_bytes("PSTREE", [tree]))
    runs = []
    for i in range(PAIRS):
        at = BASE + 3 * i * PS
        runs += [(at, 1, PE_PRESENT), (at + PS, 1, PE_PRESENT | PE_LAZY)]
    (images_dir / "pagemap-1.img").write_bytes(images.pagemap_bytes(1, runs))
    with open(images_dir / "pages-1.img", "wb") as f:
        f.truncate(len(runs) * PS)


@pytest.fixture
def maps06(tmp_path: Path) -> Path:
    write_maps06_images(tmp_path)
    return tmp_path


def count_vma_visits(monkeypatch: pytest.MonkeyPatch) -> list[CountedVmas]:
    """Every read_vmas of the indexing code hands out a CountedVmas; the list collects them."""
    handed: list[CountedVmas] = []

    def counted(images_dir: Path, pid: int) -> list[Vma]:
        vmas = images.read_vmas(images_dir, pid)
        handed.append(CountedVmas(vmas, VISITS_PER_VMA * len(vmas)))
        return handed[-1]
    for module in (verify, lazyview):
        monkeypatch.setattr(module, "read_vmas", counted)
    return handed


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each image file is decoded (pycriu's dicts, or read for protobuf messages)."""
    decoded: Counter[str] = Counter()
    load_image, image_bytes = images.load_image, images._image_bytes

    def counted_image(path: Path) -> list[dict[str, Any]]:
        decoded[path.name] += 1
        return load_image(path)

    def counted_bytes(path: Path, magic: str) -> tuple[bytes, int]:
        decoded[path.name] += 1
        return image_bytes(path, magic)
    monkeypatch.setattr(images, "load_image", counted_image)
    monkeypatch.setattr(images, "_image_bytes", counted_bytes)
    return decoded


def index_maps06(images_dir: Path) -> lazyindex.LazyIndex:
    checkpoint.write_metadata(images_dir, CriuBinary("/usr/local/sbin/criu", "4.2.1"), 1)
    return lazyindex.read(images_dir / "lazyrestore" / "index.bin")


def test_each_vma_is_visited_a_few_times_not_once_per_range(maps06: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handed = count_vma_visits(monkeypatch)
    index = index_maps06(maps06)
    assert len(index.entries) == 2 * PAIRS
    assert handed, "the indexing code read no VMAs: the counting hook missed it"
    for vmas in handed:
        assert len(vmas) == 3 * PAIRS and vmas.visits <= VISITS_PER_VMA * len(vmas)


def test_each_image_is_decoded_once(maps06: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = count_decodes(monkeypatch)
    index_maps06(maps06)
    assert decoded["mm-1.img"] == 1 and decoded["pagemap-1.img"] == 1, decoded


def test_maps06_index_and_view(maps06: Path) -> None:
    """What the faster code writes: a record per page, split at every VMA; the view keeps them apart too
    (a lazy run never merges across VMAs) and copies the eager pages; the index passes the restore's checks."""
    index = index_maps06(maps06)
    assert (index.lazy_pages, index.eager_pages) == (PAIRS, PAIRS)
    assert [e.lazy for e in index.entries[:4]] == [False, True, False, True]
    assert all(len(e.checksums) == 1 for e in index.entries)
    entries = images.load_messages(maps06 / "lazyrestore" / "view-pagemap-1.img", "PAGEMAP", pb.pagemap_head,
                                   pb.pagemap_entry)[1:]
    assert len(entries) == 2 * PAIRS
    assert [e.flags for e in entries[:2]] == [PE_PRESENT, PE_LAZY]
    assert os.path.getsize(maps06 / "lazyrestore" / "view-pages-1.img") == PAIRS * PS
    verify.check_index(maps06, manifest.read(maps06), index)
    assert verify.check_pages(maps06, index) == 2 * PAIRS * PS


def test_many_blocks_of_one_range_hash_in_place(tmp_path: Path) -> None:
    """A range spanning many blocks gets one checksum per block, each equal to the block's XXH3-64, also
    when the range starts and ends inside a block."""
    data = random.Random(5).randbytes(38 * PS)
    (tmp_path / "pages-1.img").write_bytes(data)
    start = 0x10000 + 3 * PS  # 3 pages into a 4-page block
    e = lazyindex.IndexEntry(1, 0, start, 38, 1, 0)
    (got,) = lazyindex.checksum_entries([e], tmp_path / "pages-1.img", PS, 4 * PS)
    spans = lazyindex.block_spans(start, 38 * PS, 4 * PS)
    want = tuple(xxhash.xxh3_64_intdigest(data[a - start:a - start + n]) for a, n in spans)
    assert got.checksums == want and len(want) == lazyindex.block_count(start, 38 * PS, 4 * PS) == 11
