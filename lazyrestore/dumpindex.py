"""Indexing a checkpoint CRIU wrote by itself: the plugin's post-dump work, `lazyrestore index`, and the index a
`criu dump --lazy-pages` needs for lr-lazyd --criu-page-server (its ranges, unverified: CRIU's page server sends
no checksums)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from . import checkpoint, criu, lazyindex, manifest
from .errors import ImagesDirError
from .images import PE_LAZY, PE_PRESENT, read_pagemap, read_pstree, read_vmas, require_checkpoint_dir


def is_lazy_dump(images_dir: Path) -> bool:
    """A `--lazy-pages` dump: some pagemap entry is lazy but not in the pages file."""
    for proc in read_pstree(images_dir):
        pm = read_pagemap(images_dir, proc.pid)
        if pm is not None and any(e.flags & PE_LAZY and not e.flags & PE_PRESENT for e in pm.entries):
            return True
    return False


def index_existing(images_dir: Path) -> tuple[str, int, int]:
    """`lazyrestore index`: what post-dump does, for a checkpoint CRIU wrote without the plugin; for a
    `--lazy-pages` dump, the index without checksums lr-lazyd --criu-page-server needs. (id, lazy, eager pages)"""
    if not images_dir.is_dir():
        raise ImagesDirError(f"images directory {images_dir} does not exist or is not a directory")
    require_checkpoint_dir(images_dir)
    if (images_dir / manifest.META_DIR / manifest.MANIFEST_NAME).exists():
        raise ImagesDirError(f"{images_dir} is already indexed ({manifest.META_DIR}/{manifest.MANIFEST_NAME} exists)")
    if is_lazy_dump(images_dir):
        index = index_lazy_dump(images_dir)
        return index.checkpoint_id.hex(), index.lazy_pages, index.eager_pages
    m = checkpoint.write_metadata(images_dir, criu.find_criu(), read_pstree(images_dir)[0].pid)
    return m.checkpoint_id, m.lazy_pages, m.eager_pages


def index_lazy_dump(images_dir: Path) -> lazyindex.LazyIndex:
    """IMAGES/lazyrestore/index.bin for a `criu dump --lazy-pages`: its ranges, every record RANGE_UNVERIFIED
    (CRIU's page server sends no checksums; the lazy bytes are not here to compute any)."""
    page_size, block = os.sysconf("SC_PAGE_SIZE"), lazyindex.DEFAULT_BLOCK_SIZE
    tree = read_pstree(images_dir)
    entries: list[lazyindex.IndexEntry] = []
    for proc in tree:
        pm = read_pagemap(images_dir, proc.pid)
        if pm is not None:
            entries += lazyindex.plan_ranges(pm, read_vmas(images_dir, proc.pid), page_size,
                                             str(images_dir / f"pagemap-{proc.pid}.img"), lazy_dump=True)
    entries = [replace(e, checksums=(0,) * len(lazyindex.block_spans(e.start, e.nr_pages * page_size, block)))
               for e in sorted(entries, key=lambda e: (e.pid, e.start))]
    index = lazyindex.LazyIndex(page_size, block, len(tree), bytes.fromhex(manifest.new_checkpoint_id()),
                                tuple(entries))
    (images_dir / manifest.META_DIR).mkdir(exist_ok=True)
    lazyindex.write(images_dir / manifest.META_DIR / manifest.INDEX_NAME, index)
    return index
