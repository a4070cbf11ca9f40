"""Checking that a checkpoint directory is complete and intact before anything runs from it."""

from __future__ import annotations

import mmap
from pathlib import Path

import xxhash

from . import lazyindex, manifest
from .errors import CorruptCheckpoint, ImagesDirError
from .images import load_image, read_pagemap, read_pstree, read_vmas, require_checkpoint_dir
from .lazyindex import LazyIndex, block_spans
from .manifest import Manifest

# CRTOOLS_IMAGES_V1_1 (criu/include/magic.h): the image format every CRIU since 1.x writes. CRIU
# refuses another (check_img_inventory), but only once its restore has begun: checked here first.
CRIU_IMAGES_VERSION = 2


def plan_index(images_dir: Path, page_size: int, live: bool = False) -> list[lazyindex.IndexEntry]:
    """The index records the images call for (without checksums). live: the lazy pages of a `criu dump
    --lazy-pages` stay in the stopped tree (RANGE_LIVE records)."""
    entries = []
    for proc in read_pstree(images_dir):
        pagemap = read_pagemap(images_dir, proc.pid)
        if pagemap is not None:
            where = str(images_dir / f"pagemap-{proc.pid}.img")
            entries += lazyindex.plan_ranges(pagemap, read_vmas(images_dir, proc.pid), page_size, where, live=live)
    # The index orders records by (pid, start); pstree.img is in depth-first order.
    entries.sort(key=lambda e: (e.pid, e.start))
    return entries


def check_files(images_dir: Path, m: Manifest) -> None:
    """Every listed file is there with its size and SHA-256; no unlisted file is."""
    listed = {f.name for f in m.files + m.pages_files}
    for name in manifest.list_image_files(images_dir):
        if name not in listed:
            raise CorruptCheckpoint(str(images_dir / name), "is not listed in the manifest (from another checkpoint?)")
    for f in m.files + m.pages_files + (m.index,) + m.lazy_view:
        path = images_dir / f.name
        if not path.is_file():
            raise CorruptCheckpoint(str(path), "missing (listed in the manifest)")
        size = path.stat().st_size
        if size != f.size:
            raise CorruptCheckpoint(str(path), f"has {size} bytes, the manifest says {f.size} (truncated or replaced)")
        if f.sha256 is not None and manifest.sha256_file(path) != f.sha256:
            raise CorruptCheckpoint(str(path), "SHA-256 differs from the manifest (modified or corrupt)")


def check_inventory(images_dir: Path, m: Manifest) -> None:
    """inventory.img is in the image format the CRIU lazyrestore runs (>= 4.1) restores."""
    path = images_dir / "inventory.img"
    entries = load_image(path)
    version = entries[0].get("img_version") if entries else None
    if version != CRIU_IMAGES_VERSION:
        raise CorruptCheckpoint(str(path), f"CRIU image format version {version} (checkpoint made by CRIU "
                                f"{m.criu_version}); CRIU 4.x restores format {CRIU_IMAGES_VERSION} only")


def check_index_header(where: str, m: Manifest, h: lazyindex.IndexHeader | LazyIndex) -> None:
    """The index belongs to this checkpoint: its id, page counts and task count match the manifest."""
    if h.checkpoint_id.hex() != m.checkpoint_id:
        raise CorruptCheckpoint(where, f"belongs to checkpoint {h.checkpoint_id.hex()}, the manifest is {m.checkpoint_id}")
    if (h.lazy_pages, h.eager_pages, h.page_size) != (m.lazy_pages, m.eager_pages, m.page_size):
        raise CorruptCheckpoint(where, "page counts or page size differ from the manifest")
    if h.task_count != m.processes:
        raise CorruptCheckpoint(where, f"task count {h.task_count}, the manifest has {m.processes} processes")


def check_index(images_dir: Path, m: Manifest, index: LazyIndex) -> None:
    """The index belongs to this checkpoint and describes exactly the pages of its images."""
    where = str(images_dir / m.index.name)
    check_index_header(where, m, index)
    planned = plan_index(images_dir, index.page_size)
    strip = [(e.pid, e.flags, e.start, e.nr_pages, e.pages_id, e.offset) for e in index.entries]
    if strip != [(e.pid, e.flags, e.start, e.nr_pages, e.pages_id, e.offset) for e in planned]:
        raise CorruptCheckpoint(where, "its ranges differ from what the pagemap images describe")


def check_pages(images_dir: Path, index: LazyIndex) -> int:
    """Verify every block checksum against the pages files; returns bytes checked."""
    by_file: dict[int, list[lazyindex.IndexEntry]] = {}
    for e in index.entries:
        by_file.setdefault(e.pages_id, []).append(e)
    checked = 0
    for pages_id, entries in by_file.items():
        path = images_dir / f"pages-{pages_id}.img"
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mem:
            view = memoryview(mem)
            try:
                for e in entries:
                    checked += _check_range(view, e, index, path)
            finally:
                view.release()
    return checked


def _check_range(view: memoryview, e: lazyindex.IndexEntry, index: LazyIndex, path: Path) -> int:
    spans = block_spans(e.start, e.nr_pages * index.page_size, index.block_size)
    for (addr, length), want in zip(spans, e.checksums):
        pos = e.offset + addr - e.start
        if pos + length > len(view) or xxhash.xxh3_64_intdigest(view[pos:pos + length]) != want:
            raise CorruptCheckpoint(str(path), f"page data at offset {pos} (pid {e.pid}, address {addr:#x}) "
                                    "fails its checksum: the file is corrupt")
    return e.nr_pages * index.page_size


def verify_checkpoint(images_dir: Path, pages: bool = True) -> Manifest:
    """Manifest, files, index and (optionally) all page data; raises on the first problem."""
    return verify_checkpoint_index(images_dir, pages)[0]


def verify_checkpoint_index(images_dir: Path, pages: bool = True) -> tuple[Manifest, LazyIndex]:
    """verify_checkpoint, also cross-checking every index record against the pagemaps; returns the index."""
    m = _verified_files(images_dir)
    index = lazyindex.read(images_dir / m.index.name)
    check_index(images_dir, m, index)
    if pages:
        check_pages(images_dir, index)
    return m, index


def verify_for_lazy(images_dir: Path) -> Manifest:
    """The quick check before a lazy restore, O(metadata): every file's size and SHA-256 against the
    manifest (the pagemaps and the index among them, so they are the ones written together at
    checkpoint time) and the index's header and trailer. Page bytes are verified by lr-lazyd block by
    block before it places them, and it validates every index record itself."""
    m = _verified_files(images_dir)
    check_index_header(str(images_dir / m.index.name), m, lazyindex.read_header(images_dir / m.index.name))
    return m


def _verified_files(images_dir: Path) -> Manifest:
    if not images_dir.is_dir():
        raise ImagesDirError(f"images directory {images_dir} does not exist or is not a directory")
    if not (images_dir / manifest.META_DIR / manifest.MANIFEST_NAME).exists():
        require_checkpoint_dir(images_dir)
    m = manifest.read(images_dir)
    check_files(images_dir, m)
    check_inventory(images_dir, m)
    return m
