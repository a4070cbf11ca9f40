"""The lazy view's pagemap entries: lazy runs merged within a VMA, eager entries kept apart."""

from __future__ import annotations

from typing import Any

import pytest

from lazyrestore.errors import CorruptCheckpoint
from lazyrestore.images import PE_LAZY, PE_PRESENT, Vma
from lazyrestore.lazyindex import RANGE_LAZY, IndexEntry
from lazyrestore.lazyview import view_entries
from lazyrestore.manifest import from_json, to_json

from .test_manifest import WHERE, make_manifest

PS = 4096
HEAP = Vma(0x10000, 0x10000 + 64 * PS, 3, 0x22, 0x201)
STACK = Vma(0x100000, 0x100000 + 8 * PS, 3, 0x22, 0x201)
NEXT = Vma(0x10000 + 64 * PS, 0x10000 + 80 * PS, 3, 0x22, 0x201)  # adjacent to HEAP, another VMA


def rec(start: int, pages: int, lazy: bool = True) -> IndexEntry:
    return IndexEntry(1, RANGE_LAZY if lazy else 0, start, pages, 1, 0)


def test_lazy_runs_across_holes_become_one_entry() -> None:
    records = [rec(0x10000, 15), rec(0x10000 + 16 * PS, 15), rec(0x10000 + 32 * PS, 15)]
    assert view_entries(records, [HEAP], PS) == [{"vaddr": 0x10000, "nr_pages": 47, "flags": PE_LAZY}]


def test_eager_entry_splits_lazy_runs() -> None:
    records = [rec(0x10000, 4), rec(0x10000 + 4 * PS, 1, lazy=False), rec(0x10000 + 8 * PS, 2)]
    assert view_entries(records, [HEAP], PS) == [
        {"vaddr": 0x10000, "nr_pages": 4, "flags": PE_LAZY},
        {"vaddr": 0x10000 + 4 * PS, "nr_pages": 1, "flags": PE_PRESENT},
        {"vaddr": 0x10000 + 8 * PS, "nr_pages": 2, "flags": PE_LAZY},
    ]


def test_no_merge_across_vmas_even_when_adjacent() -> None:
    records = [rec(0x10000 + 60 * PS, 4), rec(NEXT.start, 4), rec(STACK.start, 2)]
    out = view_entries(records, [HEAP, NEXT, STACK], PS)
    assert [e["vaddr"] for e in out] == [0x10000 + 60 * PS, NEXT.start, STACK.start]
    assert all(e["flags"] == PE_LAZY for e in out)


def test_eager_entries_are_not_merged() -> None:
    records = [rec(0x10000, 1, lazy=False), rec(0x10000 + PS, 1, lazy=False)]
    assert [e["nr_pages"] for e in view_entries(records, [HEAP], PS)] == [1, 1]


def test_page_counts_cover_every_record() -> None:
    records = [rec(0x10000 + i * 3 * PS, 2, lazy=i % 4 != 3) for i in range(20)]
    out = view_entries(records, [HEAP], PS)
    lazy_span = sum(e["nr_pages"] for e in out if e["flags"] == PE_LAZY)
    assert sum(e["nr_pages"] for e in out if e["flags"] == PE_PRESENT) == sum(r.nr_pages for r in records if not r.lazy)
    assert lazy_span >= sum(r.nr_pages for r in records if r.lazy)


def manifest_with_view(names: list[str]) -> dict[str, Any]:
    raw = to_json(make_manifest())
    raw["lazy_view"] = [{"name": n, "size": 1, "sha256": "ab" * 32} for n in names]
    return raw


def test_manifest_keeps_the_view() -> None:
    m = from_json(manifest_with_view(["lazyrestore/view-pagemap-1.img"]), WHERE)
    assert [f.name for f in m.lazy_view] == ["lazyrestore/view-pagemap-1.img"]


def test_manifest_without_view_is_accepted() -> None:
    assert from_json(to_json(make_manifest()), WHERE).lazy_view == ()


@pytest.mark.parametrize("name", ["pagemap-1.img", "lazyrestore/index.bin", "lazyrestore/../x"])
def test_manifest_rejects_view_files_outside_the_view(name: str) -> None:
    with pytest.raises(CorruptCheckpoint, match="lazy_view|not a plain file name"):
        from_json(manifest_with_view([name]), WHERE)
