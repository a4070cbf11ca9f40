"""Reading CRIU image files through pycriu.images (nothing hand-parsed here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycriu import images as criu_images
from pycriu.images import pb2dict

from .errors import CorruptCheckpoint, ImagesDirError

PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2
VMA_AREA_REGULAR = 1 << 0
VMA_ANON_PRIVATE = 1 << 9


@dataclass(frozen=True)
class Process:
    """One entry of pstree.img. pid/ppid/pgid/sid are as seen inside the checkpoint."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]


@dataclass(frozen=True)
class Vma:
    """One mapping of mm-PID.img: [start, end), protection, mmap flags, CRIU status bits."""

    start: int
    end: int
    prot: int
    flags: int
    status: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def kinds(self) -> list[str]:
        """CRIU's names for the status bits, e.g. ["VMA_AREA_REGULAR", "VMA_ANON_PRIVATE"]."""
        return [name for name, bit in pb2dict.flags_maps["mmap.status"] if bit and self.status & bit]

    @property
    def prot_text(self) -> str:
        return "".join(c if self.prot & bit else "-" for c, bit in (("r", 1), ("w", 2), ("x", 4)))


@dataclass(frozen=True)
class PagemapEntry:
    """One entry of pagemap-PID.img: nr_pages pages from vaddr, with PE_* flags."""

    vaddr: int
    nr_pages: int
    flags: int

    @property
    def lazy(self) -> bool:
        return bool(self.flags & PE_LAZY)

    @property
    def present(self) -> bool:
        return bool(self.flags & PE_PRESENT)


@dataclass(frozen=True)
class Pagemap:
    """A process's pagemap: the pages-<pages_id>.img file and its entries in file order."""

    pid: int
    pages_id: int
    entries: tuple[PagemapEntry, ...]


def load_image(path: Path) -> list[dict[str, Any]]:
    """The entries of one image file, or CorruptCheckpoint naming the file."""
    try:
        with open(path, "rb") as f:
            image = criu_images.load(f)
    except FileNotFoundError as exc:
        raise CorruptCheckpoint(str(path), "missing (expected a CRIU image file)") from exc
    except criu_images.MagicException as exc:
        raise CorruptCheckpoint(str(path), f"unknown image magic {exc.magic:#x}") from exc
    except Exception as exc:  # pycriu raises bare Exception, struct.error and DecodeError
        raise CorruptCheckpoint(str(path), f"cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return image["entries"]


def require_checkpoint_dir(images_dir: Path) -> None:
    if not images_dir.is_dir():
        raise ImagesDirError(f"images directory {images_dir} does not exist or is not a directory")
    if not (images_dir / "pstree.img").is_file():
        raise ImagesDirError(f"{images_dir} is not a CRIU checkpoint (no pstree.img)")


def read_pstree(images_dir: Path) -> list[Process]:
    path = images_dir / "pstree.img"
    procs = []
    for e in load_image(path):
        try:
            procs.append(Process(e["pid"], e["ppid"], e["pgid"], e["sid"], tuple(e.get("threads", []))))
        except KeyError as exc:
            raise CorruptCheckpoint(str(path), f"entry lacks field {exc}") from exc
    if not procs:
        raise CorruptCheckpoint(str(path), "has no processes")
    return procs


def read_vmas(images_dir: Path, pid: int) -> list[Vma]:
    """The process's mappings sorted by address; [] for a zombie (no mm image)."""
    path = images_dir / f"mm-{pid}.img"
    if not path.exists():
        return []
    entries = load_image(path)
    if len(entries) != 1:
        raise CorruptCheckpoint(str(path), f"expected one mm entry, found {len(entries)}")
    vmas = [Vma(v["start"], v["end"], v["prot"], v["flags"], v["status"]) for v in entries[0].get("vmas", [])]
    vmas.sort(key=lambda v: v.start)
    for a, b in zip(vmas, vmas[1:]):
        if a.end > b.start:
            raise CorruptCheckpoint(str(path), f"mappings overlap at {b.start:#x}")
    return vmas


def read_pagemap(images_dir: Path, pid: int) -> Pagemap | None:
    """The process's pagemap, or None for a zombie (no pagemap image).

    Decoding is slow (pycriu turns every entry into a dict: ~0.3 s per GiB of sample memory) and a
    checkpoint reads each pagemap three times, so the last decoded pagemaps are kept, keyed by the
    file's identity (device, inode, size, mtime): a file written anew is decoded anew.
    """
    path = images_dir / f"pagemap-{pid}.img"
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _PAGEMAPS:
        if len(_PAGEMAPS) >= _PAGEMAPS_KEPT:
            _PAGEMAPS.pop(next(iter(_PAGEMAPS)))
        _PAGEMAPS[key] = _decode_pagemap(path, pid)
    return _PAGEMAPS[key]


_PAGEMAPS: dict[tuple[str, int, int, int, int], Pagemap] = {}
_PAGEMAPS_KEPT = 64


def _decode_pagemap(path: Path, pid: int) -> Pagemap:
    entries = load_image(path)
    if not entries or "pages_id" not in entries[0]:
        raise CorruptCheckpoint(str(path), "lacks the pagemap head (pages_id)")
    try:
        body = tuple(PagemapEntry(e["vaddr"], _nr_pages(e), e["flags"]) for e in entries[1:])
    except KeyError as exc:
        raise CorruptCheckpoint(str(path), f"entry lacks field {exc}") from exc
    return Pagemap(pid, entries[0]["pages_id"], body)


def _nr_pages(entry: dict[str, int]) -> int:
    """An entry's length: CRIU >= 4.2 writes the 64-bit nr_pages (field 5); older images only the 32-bit field 2,
    which 4.2's pagemap.proto calls compat_nr_pages."""
    if "nr_pages" in entry:
        return entry["nr_pages"]
    return entry["compat_nr_pages"]


def pagemap_entry(vaddr: int, nr_pages: int, flags: int) -> dict[str, int]:
    """A pagemap entry as CRIU 4.2 writes it: nr_pages in the 64-bit field, the required 32-bit compat field
    too (CRIU 4.2 reads it only when nr_pages is absent)."""
    return {"vaddr": vaddr, "compat_nr_pages": nr_pages if nr_pages < 1 << 32 else 0, "nr_pages": nr_pages,
            "flags": flags}


def connection_options(images_dir: Path) -> tuple[bool, bool]:
    """(established, closed): the dump holds open TCP connections (CRIU wrote tcp-stream-*.img for them), and
    CRIU dumped with --tcp-close (inventory.img's tcp_close). CRIU restores either only when told again."""
    established = any(images_dir.glob("tcp-stream-*.img"))
    inventory = load_image(images_dir / "inventory.img")
    return established, bool(inventory and inventory[0].get("tcp_close", False))


def read_dump_stats(images_dir: Path) -> dict[str, int]:
    """CRIU's dump statistics (times in microseconds), {} if the file is absent."""
    path = images_dir / "stats-dump"
    if not path.exists():
        return {}
    entries = load_image(path)
    return dict(entries[0].get("dump", {})) if entries else {}
