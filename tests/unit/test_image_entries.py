"""mm and pagemap images read as protobuf messages (images.load_messages), without pycriu's dicts."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.message import Message
from pycriu import images as criu_images

from lazyrestore import images
from lazyrestore.errors import CorruptCheckpoint
from lazyrestore.images import PE_LAZY, PE_PRESENT, pb

RUNS = [(0x10000, 3, PE_PRESENT), (0x7F0000000000, 1 << 33, PE_PRESENT | PE_LAZY)]


def test_pagemap_bytes_are_what_pycriu_writes() -> None:
    f = io.BytesIO()
    body = [{"vaddr": v, "compat_nr_pages": n if n < 1 << 32 else 0, "nr_pages": n, "flags": fl} for v, n, fl in RUNS]
    criu_images.dump({"magic": "PAGEMAP", "entries": [{"pages_id": 7}, *body]}, f)
    assert images.pagemap_bytes(7, RUNS) == f.getvalue()


def test_pagemap_read_back(tmp_path: Path) -> None:
    (tmp_path / "pagemap-5.img").write_bytes(images.pagemap_bytes(7, RUNS))
    pm = images.read_pagemap(tmp_path, 5)
    assert pm is not None and pm.pages_id == 7
    assert [(e.vaddr, e.nr_pages, e.flags) for e in pm.entries] == RUNS


def test_pagemap_of_an_older_criu_reads_the_compat_length(tmp_path: Path) -> None:
    """CRIU < 4.2 writes only the 32-bit field."""
    old = pb.pagemap_entry(vaddr=0x10000, compat_nr_pages=5, flags=PE_PRESENT)
    (tmp_path / "pagemap-1.img").write_bytes(images.image_bytes("PAGEMAP", [pb.pagemap_head(pages_id=1), old]))
    pm = images.read_pagemap(tmp_path, 1)
    assert pm is not None and pm.entries[0].nr_pages == 5


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:-3], "truncated"),
    (lambda b: b[:4] + b"\0\0\0\0" + b[8:], "magic"),
    (lambda b: b"", "magic"),
    (lambda b: b[:8] + b"\x05\0\0\0\xff\xff\xff\xff\xff", "DecodeError"),
])
def test_damaged_pagemap_names_the_file(tmp_path: Path, damage: Callable[[bytes], bytes], words: str) -> None:
    path = tmp_path / "pagemap-1.img"
    path.write_bytes(damage(images.pagemap_bytes(1, RUNS)))
    with pytest.raises(CorruptCheckpoint) as exc:
        images.read_pagemap(tmp_path, 1)
    assert str(path) in str(exc.value) and words in str(exc.value)


def test_an_mm_image_is_not_a_pagemap(tmp_path: Path) -> None:
    (tmp_path / "pagemap-1.img").write_bytes(images.image_bytes("PSTREE", [pb.pstree_entry(pid=1, ppid=0, pgid=1,
                                                                                           sid=1)]))
    with pytest.raises(CorruptCheckpoint, match="expected PAGEMAP"):
        images.read_pagemap(tmp_path, 1)


MM_FIELDS = ("mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_stack", "mm_start_brk",
             "mm_brk", "mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end", "exe_file_id")


def mm_bytes(vmas: list[Message]) -> bytes:
    """An mm image holding these vma_entry messages (its other required fields 0)."""
    return images.image_bytes("MM", [pb.mm_entry(vmas=vmas, **dict.fromkeys(MM_FIELDS, 0))])


def test_vmas_sorted_and_overlaps_refused(tmp_path: Path) -> None:
    def mm(*spans: tuple[int, int]) -> bytes:
        return mm_bytes([pb.vma_entry(start=s, end=e, pgoff=0, shmid=0, prot=3, flags=0x22, status=0x201, fd=-1)
                         for s, e in spans])
    (tmp_path / "mm-1.img").write_bytes(mm((0x30000, 0x40000), (0x10000, 0x20000)))
    assert [v.start for v in images.read_vmas(tmp_path, 1)] == [0x10000, 0x30000]
    (tmp_path / "mm-2.img").write_bytes(mm((0x10000, 0x30000), (0x20000, 0x40000)))
    with pytest.raises(CorruptCheckpoint, match="overlap"):
        images.read_vmas(tmp_path, 2)
    assert images.read_vmas(tmp_path, 3) == []
