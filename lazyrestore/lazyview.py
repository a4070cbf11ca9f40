"""The lazy view: the pagemaps CRIU reads for a lazy restore, one entry per lazy VMA part.

CRIU's restore walks every pagemap entry, also the lazy ones it does not read, so
its time to resume grows with their number: a 4 GiB tree whose memory has a hole
every 16 pages has ~70,000 entries and resumed ~20 ms later than a 256 MiB one.
The view is what a `criu dump --lazy-pages` would have written: lazy pages as
PE_LAZY entries (not in any pages file), merged across holes within one VMA, and
the few eager pages as PE_PRESENT entries whose bytes are copied (by the kernel,
copy_file_range) into a pages file of their own. Holes inside a merged entry stay
holes: lr-lazyd answers a fault there with the zero page, as before.

Written at checkpoint time into DIR/lazyrestore/ (view-pagemap-PID.img,
view-pages-N.img, listed in the manifest with their SHA-256). A lazy restore
points CRIU at a directory of symbolic links in its work dir (criu-images/):
the checkpoint's images, with the view's pagemaps and pages files in place of
the originals. The original images stay as CRIU wrote them (an eager restore
and `criu restore` use them).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path

from .errors import CorruptCheckpoint
from .images import PE_LAZY, PE_PRESENT, Vma, pagemap_bytes, read_pagemap, read_pstree, read_vmas
from .lazyindex import IndexEntry, LazyIndex
from .manifest import META_DIR, FileEntry, Manifest, sha256_file

VIEW_PREFIX = "view-"
LINKS_DIR = "criu-images"


def view_entries(records: list[IndexEntry], vmas: list[Vma], page_size: int) -> list[dict[str, int]]:
    """Pagemap entries for one process's records (sorted by address): lazy runs merged within a VMA.
    O((records + VMAs) log VMAs): the VMAs' starts are listed once, each record's VMA found by bisection."""
    starts = [v.start for v in vmas]
    out: list[dict[str, int]] = []
    last_vma = -1
    for r in records:
        vma = bisect_right(starts, r.start) - 1
        prev = out[-1] if out else None
        if r.lazy and prev is not None and prev["flags"] == PE_LAZY and vma == last_vma:
            prev["nr_pages"] = (r.end(page_size) - prev["vaddr"]) // page_size
        else:
            out.append({"vaddr": r.start, "nr_pages": r.nr_pages, "flags": PE_LAZY if r.lazy else PE_PRESENT})
        last_vma = vma
    return out


def _copy_range(src: int, dst: int, offset: int, length: int, where: str) -> None:
    """length bytes of src at offset appended to dst, copied by the kernel."""
    while length:
        n = os.copy_file_range(src, dst, length, offset)
        if n <= 0:
            raise CorruptCheckpoint(where, f"ends before offset {offset + length} (the index needs those bytes)")
        offset += n
        length -= n


def _write_pages(images_dir: Path, pages_id: int, records: list[IndexEntry], page_size: int) -> Path:
    path = images_dir / META_DIR / f"{VIEW_PREFIX}pages-{pages_id}.img"
    src_path = images_dir / f"pages-{pages_id}.img"
    src = os.open(src_path, os.O_RDONLY)
    try:
        dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for r in records:
                if not r.lazy:
                    _copy_range(src, dst, r.offset, r.nr_pages * page_size, str(src_path))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return path


def _write_pagemap(images_dir: Path, pid: int, pages_id: int, entries: list[dict[str, int]]) -> Path:
    path = images_dir / META_DIR / f"{VIEW_PREFIX}pagemap-{pid}.img"
    path.write_bytes(pagemap_bytes(pages_id, [(e["vaddr"], e["nr_pages"], e["flags"]) for e in entries]))
    return path


def write(images_dir: Path, index: LazyIndex) -> tuple[FileEntry, ...]:
    """Write the view of every process with a pagemap; returns the files for the manifest."""
    by_pid: dict[int, list[IndexEntry]] = {}
    for r in index.entries:
        by_pid.setdefault(r.pid, []).append(r)
    written: list[Path] = []
    for proc in read_pstree(images_dir):
        pagemap = read_pagemap(images_dir, proc.pid)
        if pagemap is None:  # a zombie: no memory
            continue
        records = by_pid.get(proc.pid, [])
        entries = view_entries(records, read_vmas(images_dir, proc.pid), index.page_size)
        written.append(_write_pagemap(images_dir, proc.pid, pagemap.pages_id, entries))
        written.append(_write_pages(images_dir, pagemap.pages_id, records, index.page_size))
    return tuple(FileEntry(f"{META_DIR}/{p.name}", p.stat().st_size, sha256_file(p)) for p in written)


def criu_dir(images_dir: Path, m: Manifest, run: Path) -> Path:
    """The directory CRIU restores lazily from: run/criu-images with links to the checkpoint's images
    and its view, or the images dir itself for a checkpoint without a view (made before it existed)."""
    if not m.lazy_view:
        return images_dir
    links = run / LINKS_DIR
    links.mkdir()
    view = {Path(f.name).name[len(VIEW_PREFIX):]: images_dir / f.name for f in m.lazy_view}
    for f in m.files + m.pages_files:
        target = view.get(f.name, images_dir / f.name)
        os.symlink(target.resolve(), links / f.name)
    return links
