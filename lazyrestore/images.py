"""Reading CRIU image files through pycriu.images and its protobuf classes.

Entries are decoded by protobuf. mm and pagemap images, which hold one entry per mapping or page run (30,000 for
zdtm's maps06), skip pycriu's conversion to dicts: load_messages reads their framing (magic, then a 4-byte size
before each entry) and hands protobuf its messages."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message
from pycriu import images as criu_images
from pycriu.images import magic as criu_magic
from pycriu.images import pb, pb2dict

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


class PagemapEntry(NamedTuple):
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
    """A process's pagemap: the pages-<pages_id>.img file and its runs (vaddr, nr_pages, flags) in file order.
    Plain tuples: a 4 GiB tree's pagemap has ~65,000 of them, decoded while a live migration's tree is frozen."""

    pid: int
    pages_id: int
    runs: tuple[tuple[int, int, int], ...]

    @property
    def entries(self) -> tuple[PagemapEntry, ...]:
        return tuple(PagemapEntry._make(run) for run in self.runs)


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


def load_messages(path: Path, magic: str, head: type[Message], body: type[Message]) -> list[Message]:
    """The protobuf entries of an image without extra payloads (mm, pagemap): the first a `head`, the rest
    `body`. What load_image reads, without pycriu's conversion of every field to a dict (~3 us a field: a
    second for maps06's 30,000 VMAs, while its tree stays frozen at dump end)."""
    data, pos = _image_bytes(path, magic)
    entries: list[Message] = []
    view = memoryview(data)
    while pos < len(data):
        entry, pos = _next_message(data, pos, (body if entries else head)(), str(path), len(entries), view)
        entries.append(entry)
    return entries


def _image_bytes(path: Path, magic: str) -> tuple[bytes, int]:
    """The image file's bytes and the offset of its first entry."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptCheckpoint(str(path), "missing (expected a CRIU image file)") from exc
    return data, _skip_magic(data, magic, str(path))


def _skip_magic(data: bytes, magic: str, where: str) -> int:
    """The offset of the first entry after the image's magic (after CRIU's common or service magic)."""
    words = [int.from_bytes(data[i:i + 4], "little", signed=True) for i in (0, 4) if i + 4 <= len(data)]
    pos = 4 if words and words[0] in (criu_magic.by_name["IMG_COMMON"], criu_magic.by_name["IMG_SERVICE"]) else 0
    found = words[pos // 4] if len(words) > pos // 4 else None
    if found != criu_magic.by_name[magic]:
        shown = "none (empty file)" if found is None else f"{found:#x}"
        raise CorruptCheckpoint(where, f"unknown image magic {shown}, expected {magic}")
    return pos + 4


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
    """The process's mappings sorted by address; [] for a zombie (no mm image). Decoded once per file (see
    _decoded): a checkpoint reads each mm image twice."""
    path = images_dir / f"mm-{pid}.img"
    vmas = _decoded(path, _decode_vmas)
    return [] if vmas is None else list(vmas)


def read_pagemap(images_dir: Path, pid: int) -> Pagemap | None:
    """The process's pagemap, or None for a zombie (no pagemap image). Decoded once per file (see _decoded):
    a checkpoint reads each pagemap three times."""
    return _decoded(images_dir / f"pagemap-{pid}.img", lambda path: _decode_pagemap(path, pid))


_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)
_ENTRY_SIZE = struct.Struct("<i")  # an image entry's size before its message
_DECODED: dict[tuple[str, int, int, int, int], Any] = {}
_DECODED_KEPT = 64


def _decoded(path: Path, decode: Callable[[Path], _T]) -> _T | None:
    """decode(path), kept for the file's identity (path, device, inode, size, mtime): a file written anew is
    decoded anew. None if the file does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DECODED:
        if len(_DECODED) >= _DECODED_KEPT:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = decode(path)
    return _DECODED[key]


def _decode_vmas(path: Path) -> tuple[Vma, ...]:
    entries = load_messages(path, "MM", pb.mm_entry, pb.mm_entry)
    if len(entries) != 1:
        raise CorruptCheckpoint(str(path), f"expected one mm entry, found {len(entries)}")
    vmas = sorted((Vma(v.start, v.end, v.prot, v.flags, v.status) for v in entries[0].vmas), key=lambda v: v.start)
    for a, b in zip(vmas, vmas[1:]):
        if a.end > b.start:
            raise CorruptCheckpoint(str(path), f"mappings overlap at {b.start:#x}")
    return tuple(vmas)


def _decode_pagemap(path: Path, pid: int) -> Pagemap:
    """A missing flags field reads as 0 (neither present nor lazy): plan_ranges refuses such an entry."""
    data, pos = _image_bytes(path, "PAGEMAP")
    head, pos = _next_message(data, pos, pb.pagemap_head(), str(path), 0)
    if not head.HasField("pages_id"):
        raise CorruptCheckpoint(str(path), "lacks the pagemap head (pages_id)")
    return Pagemap(pid, head.pages_id, _pagemap_runs(data, pos, str(path)))


def _pagemap_runs(data: bytes, pos: int, where: str) -> tuple[tuple[int, int, int], ...]:
    """The entries after the head as (vaddr, nr_pages, flags): one message object parsed in place for each (no
    slice copies, no object per entry; _next_message's framing inlined), ~0.5 us an entry. CRIU >= 4.2 writes the
    64-bit nr_pages (field 5); older images only the 32-bit field 2, which 4.2's pagemap.proto calls
    compat_nr_pages."""
    runs = []
    entry = pb.pagemap_entry()
    parse, view, size_at, total = entry.ParseFromString, memoryview(data), _ENTRY_SIZE.unpack_from, len(data)
    try:
        while pos < total:
            end = pos + 4 + (size_at(data, pos)[0] if pos + 4 <= total else -total)
            if end > total or end < pos + 4:
                raise CorruptCheckpoint(where, f"cannot be decoded (entry {len(runs) + 1} truncated at byte {pos})")
            parse(view[pos + 4:end])
            runs.append((entry.vaddr, entry.nr_pages or entry.compat_nr_pages, entry.flags))
            pos = end
    except DecodeError as exc:
        raise CorruptCheckpoint(where, f"cannot be decoded (DecodeError: {exc})") from exc
    return tuple(runs)


def _next_message(data: bytes, pos: int, msg: _M, where: str, n: int,
                  view: memoryview | None = None) -> tuple[_M, int]:
    """msg parsed from the image's entry n at pos (a u32 size, then the message); the offset after it."""
    size = int.from_bytes(data[pos:pos + 4], "little", signed=True) if pos + 4 <= len(data) else -1
    end = pos + 4 + size
    if size < 0 or end > len(data):
        raise CorruptCheckpoint(where, f"cannot be decoded (entry {n} truncated at byte {pos})")
    try:
        msg.ParseFromString((view if view is not None else memoryview(data))[pos + 4:end])
    except DecodeError as exc:
        raise CorruptCheckpoint(where, f"cannot be decoded (DecodeError: {exc})") from exc
    return msg, end


def pagemap_bytes(pages_id: int, entries: list[tuple[int, int, int]]) -> bytes:
    """A pagemap image as CRIU 4.2 writes it, for entries (vaddr, nr_pages, flags): nr_pages in the 64-bit
    field and the required 32-bit compat field too (CRIU 4.2 reads it only when nr_pages is absent)."""
    body = [pb.pagemap_entry(vaddr=vaddr, compat_nr_pages=nr_pages if nr_pages < 1 << 32 else 0,
                             nr_pages=nr_pages, flags=flags) for vaddr, nr_pages, flags in entries]
    return image_bytes("PAGEMAP", [pb.pagemap_head(pages_id=pages_id), *body])


def image_bytes(magic: str, entries: list[Message]) -> bytes:
    """An image file as pycriu writes it: CRIU's common magic, the image's, then each entry after its size."""
    out = [_word(criu_magic.by_name["IMG_COMMON"]), _word(criu_magic.by_name[magic])]
    for entry in entries:
        data = entry.SerializeToString()
        out += [_word(len(data)), data]
    return b"".join(out)


def _word(n: int) -> bytes:
    return n.to_bytes(4, "little", signed=True)


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
