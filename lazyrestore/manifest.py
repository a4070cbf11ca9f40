"""The checkpoint manifest: what a checkpoint holds and how to tell it is intact.

`DIR/lazyrestore/manifest.json` lists every file of the checkpoint with its size,
and with its SHA-256 for all but the page content files (pages-N.img, whose bytes
the lazy index covers with per-block XXH3-64 checksums). It is written last, so a
directory without it is not a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .criuopts import CriuOptions
from .criuopts import from_json as criu_options_from_json
from .errors import CorruptCheckpoint
from .layout import INDEX_NAME, MANIFEST_NAME, META_DIR

FORMAT = "lazyrestore-manifest"
VERSION = 1
CHECKSUM = "xxh3_64"  # XXH3-64, seed 0, of each checksum block (see lazyindex.py)
# Files that CRIU or lazyrestore write beside the images but that are not part of them.
NOT_CHECKPOINT = (".log",)
# CRIU's statistics, written at the very end of a dump (after action scripts) or restore; never read to restore.
STATS_FILES = ("stats-dump", "stats-restore")


@dataclass(frozen=True)
class FileEntry:
    """A file of the checkpoint: name relative to the images dir, size, SHA-256 (None for pages files)."""

    name: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Manifest:
    """Contents of manifest.json (see README, "Checkpoint format").

    checkpoint_id: 32 hex digits, random per checkpoint; also in the index header.
    created: ISO 8601 UTC time of the checkpoint.
    criu_version: version of the CRIU that dumped.
    source_pid: host pid of the tree's root at checkpoint time.
    page_size, block_size: as in the index.
    processes, threads: counts in pstree.img.
    lazy_pages, eager_pages: page counts (as in the index).
    files: every image file but pages files; pages_files: the pages-N.img files.
    index: the lazy index file.
    checksum: the page checksum algorithm.
    lazy_view: the pagemaps and eager pages CRIU reads in a lazy restore (lazyview.py); empty in
      checkpoints made before the view existed, which restore lazily from the images themselves.
    criu_options: the CRIU options the tree was dumped with, which its restores need too (criuopts.py):
      TCP connections kept or closed, external veth peers of its network namespace.
    """

    checkpoint_id: str
    created: str
    criu_version: str
    source_pid: int
    page_size: int
    block_size: int
    processes: int
    threads: int
    lazy_pages: int
    eager_pages: int
    files: tuple[FileEntry, ...]
    pages_files: tuple[FileEntry, ...]
    index: FileEntry
    checksum: str = CHECKSUM
    lazy_view: tuple[FileEntry, ...] = ()
    criu_options: CriuOptions = CriuOptions()


def new_checkpoint_id() -> str:
    return secrets.token_hex(16)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_pages_file(name: str) -> bool:
    return name.startswith("pages-") and name.endswith(".img")


def list_image_files(images_dir: Path) -> list[str]:
    """Names of the checkpoint's files: regular files of the directory, logs left out."""
    return sorted(n for n in os.listdir(images_dir)
                  if (images_dir / n).is_file() and not n.endswith(NOT_CHECKPOINT) and n not in STATS_FILES)


def describe_files(images_dir: Path) -> tuple[tuple[FileEntry, ...], tuple[FileEntry, ...]]:
    files, pages = [], []
    for name in list_image_files(images_dir):
        size = (images_dir / name).stat().st_size
        if is_pages_file(name):
            pages.append(FileEntry(name, size, None))
        else:
            files.append(FileEntry(name, size, sha256_file(images_dir / name)))
    return tuple(files), tuple(pages)


def to_json(m: Manifest) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, **asdict(m)}


def write(images_dir: Path, m: Manifest) -> Path:
    path = images_dir / META_DIR / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_json(m), indent=2) + "\n")
    tmp.rename(path)
    return path


def read(images_dir: Path) -> Manifest:
    path = images_dir / META_DIR / MANIFEST_NAME
    where = str(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CorruptCheckpoint(where, "missing: not a complete lazyrestore checkpoint "
                                "(made by `lazyrestore checkpoint`, which writes it last)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(where, f"is not valid JSON ({exc})") from exc
    return from_json(raw, where)


def _plain_name(name: Any) -> bool:
    """A file name in the images dir, or in its lazyrestore/ subdirectory."""
    if not isinstance(name, str):
        return False
    if name.startswith(f"{META_DIR}/"):
        name = name[len(META_DIR) + 1:]
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def _count(value: Any) -> bool:
    """A non-negative JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def _file_entry(raw: Any, where: str) -> FileEntry:
    if not isinstance(raw, dict):
        raise CorruptCheckpoint(where, f"file entry {raw!r} is not an object")
    name, size, digest = raw.get("name"), raw.get("size"), raw.get("sha256")
    if not _plain_name(name):
        raise CorruptCheckpoint(where, f"file name {name!r} is not a plain file name (or {META_DIR}/NAME)")
    if not _count(size):
        raise CorruptCheckpoint(where, f"size of {name} is {size!r}, expected a non-negative integer")
    if digest is not None and not _hex(digest, 64):
        raise CorruptCheckpoint(where, f"sha256 of {name} is {digest!r}, expected 64 hex digits")
    return FileEntry(name, size, digest)


_INT_FIELDS = ("source_pid", "page_size", "block_size", "processes", "threads", "lazy_pages", "eager_pages")


def from_json(raw: Any, where: str) -> Manifest:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CorruptCheckpoint(where, f"not a lazyrestore manifest (format field should be {FORMAT!r})")
    if raw.get("version") != VERSION:
        raise CorruptCheckpoint(where, f"manifest version {raw.get('version')!r}, this lazyrestore reads {VERSION}")
    for key in _INT_FIELDS:
        if not _count(raw.get(key)):
            raise CorruptCheckpoint(where, f"field {key} is {raw.get(key)!r}, expected a non-negative integer")
    cid = raw.get("checkpoint_id")
    if not _hex(cid, 32):
        raise CorruptCheckpoint(where, f"checkpoint_id {cid!r} is not 32 hex digits")
    if raw.get("checksum") != CHECKSUM:
        raise CorruptCheckpoint(where, f"checksum algorithm {raw.get('checksum')!r}, this lazyrestore uses {CHECKSUM!r}")
    for key in ("created", "criu_version"):
        if not isinstance(raw.get(key), str):
            raise CorruptCheckpoint(where, f"field {key} is {raw.get(key)!r}, expected a string")
    if not all(isinstance(raw.get(k, []), (list, tuple)) for k in ("files", "pages_files", "lazy_view")) \
            or "files" not in raw or "pages_files" not in raw:
        raise CorruptCheckpoint(where, "files and pages_files must be lists (lazy_view too, when present)")
    return Manifest(
        checkpoint_id=cid, created=raw["created"], criu_version=raw["criu_version"],
        **{k: raw[k] for k in _INT_FIELDS},
        files=tuple(_hashed_entry(f, where) for f in raw["files"]),
        pages_files=tuple(_pages_entry(f, where) for f in raw["pages_files"]),
        index=_file_entry(raw.get("index"), where),
        checksum=str(raw.get("checksum")),
        lazy_view=tuple(_view_entry(f, where) for f in raw.get("lazy_view", [])),
        criu_options=criu_options_from_json(raw.get("criu_options", {}), where),
    )


def _hashed_entry(raw: Any, where: str) -> FileEntry:
    """An entry of files: a metadata image, whose SHA-256 the manifest must carry."""
    f = _file_entry(raw, where)
    if f.sha256 is None:
        raise CorruptCheckpoint(where, f"sha256 of {f.name} is missing: only pages-N.img files go without one")
    return f


def _pages_entry(raw: Any, where: str) -> FileEntry:
    """An entry of pages_files: a pages-N.img (its bytes are covered by the index's block checksums)."""
    f = _file_entry(raw, where)
    if not is_pages_file(f.name):
        raise CorruptCheckpoint(where, f"pages_files lists {f.name!r}: expected pages-N.img files only")
    return f


def _view_entry(raw: Any, where: str) -> FileEntry:
    f = _file_entry(raw, where)
    if not f.name.startswith(f"{META_DIR}/view-") or f.sha256 is None:
        raise CorruptCheckpoint(where, f"lazy_view file {f.name!r}: expected {META_DIR}/view-NAME with a sha256")
    return f
