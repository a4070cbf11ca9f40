"""The index written at checkpoint time must pass the check made before restore.

checkpoint._checksummed sorts records by (pid, start), as lr_index.h requires, while
verify.check_index compares them with verify.plan_index, which follows pstree.img order.
CRIU writes pstree.img depth first, so a grandchild can come before a sibling with a
smaller pid. These tests fake the image readers (no CRIU) and fake the pages files.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lazyrestore import checkpoint, lazyindex, verify
from lazyrestore.images import PE_LAZY, PE_PRESENT, Pagemap, PagemapEntry, Process, Vma
from lazyrestore.manifest import FileEntry, Manifest

PS = 4096
BS = 4 * PS
CID = "00112233445566778899aabbccddeeff"


def fake_tree(monkeypatch: pytest.MonkeyPatch, images_dir: Path, order: list[int]) -> None:
    """Processes in the given pstree order; each has one VMA and one lazy and one eager run."""
    tree = [Process(pid, 0 if pid == 1 else 1, 1, 1, (pid,)) for pid in order]
    vmas = {pid: [Vma(0x10000 * pid, 0x10000 * pid + 8 * PS, 3, 0x22, 0)] for pid in order}
    pagemaps = {pid: Pagemap(pid, pid + 100, (
        PagemapEntry(0x10000 * pid, 2, PE_PRESENT),
        PagemapEntry(0x10000 * pid + 3 * PS, 3, PE_PRESENT | PE_LAZY),
    )) for pid in order}
    rng = random.Random(7)
    for pid in order:
        (images_dir / f"pages-{pid + 100}.img").write_bytes(rng.randbytes(5 * PS))
    for module in (verify, checkpoint):
        monkeypatch.setattr(module, "read_pstree", lambda d: list(tree))
        monkeypatch.setattr(module, "read_pagemap", lambda d, pid: pagemaps[pid])
    monkeypatch.setattr(verify, "read_vmas", lambda d, pid: vmas[pid])


def build_and_check(images_dir: Path) -> lazyindex.LazyIndex:
    """What write_metadata builds, then what verify_checkpoint checks (minus files and manifest I/O)."""
    planned = verify.plan_index(images_dir, PS)
    entries = checkpoint._checksummed(images_dir, planned, PS, BS)
    tree = verify.read_pstree(images_dir)
    index = lazyindex.LazyIndex(PS, BS, len(tree), bytes.fromhex(CID), tuple(entries))
    decoded = lazyindex.decode(lazyindex.encode(index), "index.bin")   # the (pid, start) order is valid
    m = Manifest(CID, "t", "4.1.1", 1000, PS, BS, len(tree), len(tree), index.lazy_pages, index.eager_pages,
                 (), (), FileEntry("lazyrestore/index.bin", 0, None))
    verify.check_index(images_dir, m, decoded)
    assert verify.check_pages(images_dir, decoded) == 5 * PS * len(tree)
    return decoded


def test_sorted_pstree_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tree(monkeypatch, tmp_path, [1, 2, 3, 4])
    index = build_and_check(tmp_path)
    assert [e.pid for e in index.entries] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert index.lazy_pages == 12 and index.eager_pages == 8


def test_depth_first_pstree_order_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BUG probe: init 1 forks 2 and 3, then 2 forks 4; CRIU's depth-first pstree.img lists 1, 2, 4, 3.

    The index (sorted by pid) is valid, yet check_index reports that 'its ranges differ from
    what the pagemap images describe', so such a checkpoint could never be restored.
    """
    fake_tree(monkeypatch, tmp_path, [1, 2, 4, 3])
    index = build_and_check(tmp_path)
    assert [e.pid for e in index.entries] == [1, 1, 2, 2, 3, 3, 4, 4]
