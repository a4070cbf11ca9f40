"""The lazy index: the binary contract between Python and the C daemons.

Layout (little-endian, fixed; the C view is native/include/lr_index.h):

  header    80 bytes   see HEADER below
  records   record_count x 48 bytes, sorted by (pid, start), never overlapping
  checksums checksum_count x u64, XXH3-64 (seed 0) of each checksum block
  trailer   u64 XXH3-64 (seed 0) of every byte before it

A record is a run of pages of one process that CRIU stored in pages-<pages_id>.img
at byte ``offset``; it never crosses a VMA boundary (UFFDIO_COPY works within one
VMA). A live record (RANGE_LIVE) may span holes of its VMA: their bytes read
as zeros. Records flagged RANGE_LAZY are the ones lr-lazyd places on demand; the
others (eager) are restored by CRIU itself and are indexed so all page data is verifiable.

Checksums are per block, not per record: the blocks of a record are the
``block_size``-aligned windows of the address space, clipped to the record. A
fault-around window of block_size therefore needs exactly one checksum, and a
multi-GiB record never has to be hashed whole to place one page. Record i owns
checksums[first_checksum : first_checksum + nblocks(record)].
"""

from __future__ import annotations

import mmap
import struct
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .errors import CorruptCheckpoint
from .images import PE_LAZY, PE_PARENT, PE_PRESENT, Pagemap, Vma

MAGIC = b"LRINDEX\0"
VERSION = 1
RANGE_LAZY = 1 << 0
# No checksums (all 0): a `criu dump --lazy-pages` whose bytes CRIU's page server sends (lr_index.h).
RANGE_UNVERIFIED = 1 << 1
# A lazy range of a live migration: lr-pageserver reads its bytes from the stopped source tree when it serves them
# and sends each block's checksum as read; the index's are 0, its pages id and offset unused (lr_index.h).
RANGE_LIVE = 1 << 2
# CRIU 4.2.1's vma_entry_can_be_lazy (criu/include/vma.h): private anonymous, neither locked nor hugetlb.
_PRIVATE_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_NOT_LAZY = mmap.MAP_SHARED | 0x2000 | 0x40000  # MAP_LOCKED, MAP_HUGETLB (asm-generic/mman*.h)
KNOWN_RANGE_FLAGS = RANGE_LAZY | RANGE_UNVERIFIED | RANGE_LIVE
DEFAULT_BLOCK_SIZE = 16 * 1024
HEADER = struct.Struct("<8sIIIIII QQQQ16s")
RECORD = struct.Struct("<IIQQIIQQ")
CHECKSUM = struct.Struct("<Q")
TRAILER = struct.Struct("<Q")
assert HEADER.size == 80 and RECORD.size == 48


@dataclass(frozen=True)
class IndexEntry:
    """One range of pages (a record of the index).

    pid: the process's pid inside the checkpoint (as in pstree.img).
    flags: RANGE_LAZY or 0 (eager).
    start: first virtual address (page aligned).
    nr_pages: length in pages.
    pages_id: N of the pages-N.img file holding the bytes.
    offset: byte offset of the first page in that file.
    checksums: XXH3-64 of each checksum block of the range (see module doc).
    """

    pid: int
    flags: int
    start: int
    nr_pages: int
    pages_id: int
    offset: int
    checksums: tuple[int, ...] = ()

    @property
    def lazy(self) -> bool:
        return bool(self.flags & RANGE_LAZY)

    def end(self, page_size: int) -> int:
        return self.start + self.nr_pages * page_size


@dataclass(frozen=True)
class LazyIndex:
    """The whole index: header fields and the records."""

    page_size: int
    block_size: int
    task_count: int
    checkpoint_id: bytes
    entries: tuple[IndexEntry, ...]

    @property
    def lazy_pages(self) -> int:
        return sum(e.nr_pages for e in self.entries if e.lazy)

    @property
    def eager_pages(self) -> int:
        return sum(e.nr_pages for e in self.entries if not e.lazy)


@dataclass(frozen=True)
class IndexHeader:
    """The header of an index whose size and trailer checksum were checked (records not decoded).

    Enough to tie an index to its checkpoint in O(1) Python work; lr-lazyd validates every
    record itself before it serves anything (native/common/index.c).
    """

    page_size: int
    block_size: int
    task_count: int
    checkpoint_id: bytes
    lazy_pages: int
    eager_pages: int
    record_count: int


def block_spans(start: int, length: int, block_size: int) -> list[tuple[int, int]]:
    """(address, length) of each block_size-aligned window of [start, start+length)."""
    spans = []
    addr, end = start, start + length
    while addr < end:
        stop = min(end, (addr // block_size + 1) * block_size)
        spans.append((addr, stop - addr))
        addr = stop
    return spans


def block_count(start: int, length: int, block_size: int) -> int:
    """len(block_spans(start, length, block_size)), computed without building the list."""
    if length <= 0:
        return 0
    first = start // block_size
    last = (start + length - 1) // block_size
    return last - first + 1


def plan_ranges(pagemap: Pagemap, vmas: list[Vma], page_size: int, where: str,
                lazy_dump: bool = False, live: bool = False) -> list[IndexEntry]:
    """Records for one process's pagemap, split at VMA boundaries (checksums left empty). lazy_dump: a
    `criu dump --lazy-pages`, whose lazy pages are in CRIU's page server (every record RANGE_UNVERIFIED).
    live: a `criu dump --lazy-pages` whose lazy pages lr-pageserver reads from the stopped tree (those records
    RANGE_LAZY | RANGE_LIVE, pages id and offset 0; the eager ones in pages files, to be checksummed). A live range
    that follows another in the same private anonymous VMA joins it, holes included (_joinable): the records, and
    with them the cost of indexing, grow with the VMAs, not with the holes. A few operations per pagemap entry
    (the VMA is looked up only when an entry leaves the last one): a live tree stays frozen while this runs."""
    plan = _Plan(vmas, pagemap, where)
    offset = 0
    for vaddr, nr_pages, pe_flags in pagemap.runs:
        remote = (lazy_dump or live) and pe_flags & PE_LAZY and not pe_flags & PE_PRESENT
        if pe_flags & PE_PARENT or not (pe_flags & PE_PRESENT or remote):
            raise CorruptCheckpoint(where, f"pages at {vaddr:#x} are not in pages-{pagemap.pages_id}.img "
                                    f"(flags {pe_flags:#x}: incremental or page-server dumps are not supported)")
        flags = (RANGE_LAZY if pe_flags & PE_LAZY else 0) | (RANGE_UNVERIFIED if lazy_dump else 0) | \
            (RANGE_LIVE if live and remote else 0)
        addr, end = vaddr, vaddr + nr_pages * page_size
        if flags & RANGE_LIVE and plan.extends_last(addr, end):
            continue  # the common case of a live tree: one more run of its VMA's last live record
        while addr < end:
            stop = min(end, plan.vma_end(addr))
            plan.add(flags, addr, stop, 0 if remote else offset)
            offset += 0 if remote else stop - addr
            addr = stop
    return [IndexEntry(pagemap.pid, f, a, (b - a) // page_size, pid, off) for f, a, b, pid, off, _ in plan.rows]


class _Plan:
    """plan_ranges' rows [flags, start, end, pages_id, offset, VMA index] (IndexEntry made once per record) and the
    VMA the last address fell in."""

    def __init__(self, vmas: list[Vma], pagemap: Pagemap, where: str) -> None:
        self.vmas, self.pagemap, self.where = vmas, pagemap, where
        self.starts = [v.start for v in vmas]
        self.rows: list[list[int]] = []
        self.i, self.start, self.end, self.joinable = -1, 0, 0, False

    def vma_end(self, addr: int) -> int:
        """The end of the VMA holding addr (which becomes the current one); CorruptCheckpoint if none does."""
        if not self.start <= addr < self.end:
            i = bisect_right(self.starts, addr) - 1
            if i < 0 or self.vmas[i].end <= addr:
                raise CorruptCheckpoint(self.where, f"page {addr:#x} of pid {self.pagemap.pid} lies in no VMA of "
                                        f"mm-{self.pagemap.pid}.img")
            self.i, self.start, self.end = i, self.vmas[i].start, self.vmas[i].end
            self.joinable = _joinable(self.vmas[i])
        return self.end

    def extends_last(self, addr: int, end: int) -> bool:
        """The live range [addr, end) lies in the current VMA after its last live record, which now ends at end."""
        last = self.rows[-1] if self.rows else None
        if last is None or not (self.joinable and last[5] == self.i and last[0] & RANGE_LIVE
                                and last[2] <= addr and end <= self.end):
            return False
        last[2] = end
        return True

    def add(self, flags: int, addr: int, stop: int, offset: int) -> None:
        """A range in the current VMA: a live one extends the previous live record of that VMA across the hole
        between them when the VMA is private anonymous memory, the only kind CRIU 4.2.1 dumps lazily
        (vma_entry_can_be_lazy), so the hole's bytes, never touched, read as zeros from the stopped tree (lr-lazyd
        places all-zero pages as zero pages, allocating nothing)."""
        rows = self.rows
        if flags & RANGE_LIVE and rows and rows[-1][0] & RANGE_LIVE and rows[-1][5] == self.i \
                and rows[-1][2] <= addr and self.joinable:
            rows[-1][2] = stop
        else:
            rows.append([flags, addr, stop, 0 if flags & RANGE_LIVE else self.pagemap.pages_id, offset, self.i])


def _joinable(vma: Vma) -> bool:
    return vma.flags & _PRIVATE_ANON == _PRIVATE_ANON and not vma.flags & _NOT_LAZY


def checksum_entries(entries: list[IndexEntry], pages_path: Path, page_size: int, block_size: int) -> list[IndexEntry]:
    """Entries of one pages file with their block checksums; the file must hold exactly their bytes."""
    need = sum(e.nr_pages for e in entries) * page_size
    size = pages_path.stat().st_size if pages_path.exists() else -1
    if size < 0:
        raise CorruptCheckpoint(str(pages_path), "missing (the pagemap refers to it)")
    if size != need:
        raise CorruptCheckpoint(str(pages_path), f"has {size} bytes, the pagemap describes {need}")
    if size == 0:
        return list(entries)
    with open(pages_path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = memoryview(m)
        try:
            return [IndexEntry(e.pid, e.flags, e.start, e.nr_pages, e.pages_id, e.offset,
                               _range_checksums(view, e, page_size, block_size)) for e in entries]
        finally:
            view.release()


def _range_checksums(view: memoryview, e: IndexEntry, page_size: int, block_size: int) -> tuple[int, ...]:
    """XXH3-64 of each block of e, hashed in place in the mapped pages file (no copy): a few Python operations
    per block, so indexing runs at the speed memory is read (~5 GB/s here; 1 GiB holds 65,536 blocks)."""
    start, end = e.start, e.end(page_size)
    cuts = [start, *range((start // block_size + 1) * block_size, end, block_size), end]
    to_file = e.offset - start
    digest = xxhash.xxh3_64_intdigest
    return tuple([digest(view[a + to_file:b + to_file]) for a, b in zip(cuts, cuts[1:])])


def encode(index: LazyIndex) -> bytes:
    """The index file's bytes."""
    records, sums = [], []
    for e in index.entries:
        records.append(RECORD.pack(e.pid, e.flags, e.start, e.nr_pages, e.pages_id, 0, e.offset, len(sums)))
        sums.extend(e.checksums)
    header = HEADER.pack(MAGIC, VERSION, HEADER.size, RECORD.size, index.page_size, index.block_size,
                         index.task_count, len(records), len(sums), index.lazy_pages, index.eager_pages,
                         index.checkpoint_id)
    body = header + b"".join(records) + struct.pack(f"<{len(sums)}Q", *sums)
    return body + TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def write(path: Path, index: LazyIndex) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(encode(index))
    tmp.rename(path)


def read(path: Path) -> LazyIndex:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptCheckpoint(str(path), "missing (expected the lazy index written by `lazyrestore checkpoint`)") from exc
    return decode(data, str(path))


def read_header(path: Path) -> IndexHeader:
    """The header of the index at path, after checking its size and trailer checksum."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptCheckpoint(str(path), "missing (expected the lazy index written by `lazyrestore checkpoint`)") from exc
    return decode_header(data, str(path))


def decode_header(data: bytes, where: str) -> IndexHeader:
    """Check magic, layout, sizes, total length and trailer; any inconsistency raises CorruptCheckpoint."""
    if len(data) < HEADER.size + TRAILER.size:
        raise CorruptCheckpoint(where, f"truncated: {len(data)} bytes, the header alone needs {HEADER.size + TRAILER.size}")
    (magic, version, header_size, record_size, page_size, block_size, task_count,
     record_count, checksum_count, lazy_pages, eager_pages, checkpoint_id) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint(where, f"bad magic {magic!r}, expected {MAGIC!r}")
    if (version, header_size, record_size) != (VERSION, HEADER.size, RECORD.size):
        raise CorruptCheckpoint(where, f"unsupported layout: version {version}, header {header_size} B, record {record_size} B "
                                f"(expected {VERSION}, {HEADER.size}, {RECORD.size})")
    _check_sizes(where, page_size, block_size)
    expected = HEADER.size + record_count * RECORD.size + checksum_count * CHECKSUM.size + TRAILER.size
    if len(data) != expected:
        raise CorruptCheckpoint(where, f"size {len(data)} bytes does not match its header ({expected} expected)")
    (trailer,) = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if trailer != xxhash.xxh3_64_intdigest(memoryview(data)[:-TRAILER.size]):
        raise CorruptCheckpoint(where, "checksum mismatch: the file was modified or damaged")
    return IndexHeader(page_size, block_size, task_count, checkpoint_id, lazy_pages, eager_pages, record_count)


def decode(data: bytes, where: str) -> LazyIndex:
    """Parse and fully validate index bytes; any inconsistency raises CorruptCheckpoint naming `where`."""
    h = decode_header(data, where)
    sums_count = (len(data) - HEADER.size - h.record_count * RECORD.size - TRAILER.size) // CHECKSUM.size
    entries = _decode_records(data, h.record_count, sums_count, h.page_size, h.block_size, where)
    index = LazyIndex(h.page_size, h.block_size, h.task_count, h.checkpoint_id, tuple(entries))
    if (index.lazy_pages, index.eager_pages) != (h.lazy_pages, h.eager_pages):
        raise CorruptCheckpoint(where, f"header counts {h.lazy_pages} lazy / {h.eager_pages} eager pages, "
                                f"records add up to {index.lazy_pages} / {index.eager_pages}")
    return index


def _check_sizes(where: str, page_size: int, block_size: int) -> None:
    def pow2(n: int) -> bool:
        return n > 0 and n & (n - 1) == 0
    if not pow2(page_size) or page_size < 4096:
        raise CorruptCheckpoint(where, f"page_size {page_size} is not a power of two >= 4096")
    if not pow2(block_size) or block_size < page_size:
        raise CorruptCheckpoint(where, f"block_size {block_size} is not a power of two >= page_size")


def _decode_records(data: bytes, count: int, checksum_count: int, page_size: int, block_size: int,
                    where: str) -> list[IndexEntry]:
    sums_at = HEADER.size + count * RECORD.size
    sums = [s for (s,) in CHECKSUM.iter_unpack(data[sums_at:sums_at + checksum_count * CHECKSUM.size])]
    entries: list[IndexEntry] = []
    next_sum = 0
    for i, fields in enumerate(RECORD.iter_unpack(data[HEADER.size:sums_at])):
        pid, flags, start, nr_pages, pages_id, reserved, offset, first = fields
        what = f"record {i} (pid {pid}, {start:#x})"
        if flags & ~KNOWN_RANGE_FLAGS or reserved:
            raise CorruptCheckpoint(where, f"{what}: unknown flags {flags:#x} or reserved field set")
        if flags & RANGE_LIVE and (flags & RANGE_UNVERIFIED or not flags & RANGE_LAZY):
            raise CorruptCheckpoint(where, f"{what}: flags {flags:#x} contradict each other (a live range is lazy "
                                    "and has its checksums sent with its bytes)")
        length = nr_pages * page_size
        if nr_pages == 0 or start % page_size or offset % page_size or start + length >= 1 << 64 \
                or offset + length >= 1 << 64:
            raise CorruptCheckpoint(where, f"{what}: empty, unaligned or beyond the address space")
        if first != next_sum:
            raise CorruptCheckpoint(where, f"{what}: first checksum {first}, expected {next_sum}")
        nblocks = block_count(start, length, block_size)
        if first + nblocks > checksum_count:
            raise CorruptCheckpoint(where, f"{what}: needs checksums up to {first + nblocks}, the file has {checksum_count}")
        if entries and (entries[-1].pid, entries[-1].end(page_size)) > (pid, start):
            raise CorruptCheckpoint(where, f"{what}: out of order or overlapping the previous record")
        entries.append(IndexEntry(pid, flags, start, nr_pages, pages_id, offset, tuple(sums[first:first + nblocks])))
        next_sum = first + nblocks
    if next_sum != checksum_count:
        raise CorruptCheckpoint(where, f"records use {next_sum} checksums, the header counts {checksum_count}")
    return entries
