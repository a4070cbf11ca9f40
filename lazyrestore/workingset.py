"""A checkpoint's working set (native/include/lr_wset.h): the pages its lazy restores faulted on first, in
order, with the time of each first fault, as checkpoint addresses.

lr-lazyd records one per restore (`<run dir>/workingset`); the checkpoint keeps their merge in
`lazyrestore/workingset`, which later restores place first (--prefetch).

File: a 64-byte header (magic "LRWSET1", version 2, page size, checkpoint id, entry count, faults seen,
the recording's bounds, restores merged), then 24-byte entries {t_us, record, addr, hits, last} ordered by
t_us. Every field is checked here: a working set is only ever a hint, and a stale or damaged one must be
refused with a clear reason, never trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import LazyRestoreError
from .lazyindex import LazyIndex

MAGIC = b"LRWSET1\0"
VERSION = 2
HEADER = struct.Struct("<8sII16sQQIIII")
ENTRY = struct.Struct("<IIQII")
from .layout import WORKINGSET_NAME as FILE_NAME  # in a restore's run dir: what that restore faulted on
STORED = "lazyrestore/workingset"  # beside the checkpoint: the merge of its restores


class BadProfile(LazyRestoreError):
    """A working-set file that is damaged, of another version, or of another checkpoint."""


@dataclass(frozen=True)
class Fault:
    t_us: int    # microseconds since lr-lazyd started
    record: int  # index record holding the page
    addr: int    # the page's checkpoint address
    hits: int = 1  # restores that faulted on it
    last: int = 1  # the latest of them (1 .. restores)


@dataclass(frozen=True)
class Profile:
    page_size: int
    checkpoint_id: bytes
    faults_seen: int
    max_faults: int
    max_ms: int
    faults: tuple[Fault, ...]
    restores: int = 1


def read(path: Path, index: LazyIndex | None = None) -> Profile:
    """The profile at path; with index, also checked against that checkpoint (BadProfile otherwise)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadProfile(f"working set {path}: {exc.strerror}") from exc
    profile = decode(data, str(path))
    if index is not None:
        check(profile, index, str(path))
    return profile


def decode(data: bytes, where: str) -> Profile:
    if len(data) < HEADER.size:
        raise BadProfile(f"working set {where}: {len(data)} bytes, shorter than its {HEADER.size}-byte header")
    magic, version, page_size, cid, count, seen, max_faults, max_ms, restores, _ = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise BadProfile(f"working set {where}: not a version {VERSION} working set (magic {magic!r}, "
                         f"version {version})")
    if len(data) != HEADER.size + count * ENTRY.size:
        raise BadProfile(f"working set {where}: {len(data)} bytes for {count} entries "
                         f"(expected {HEADER.size + count * ENTRY.size})")
    faults = tuple(Fault(*ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size)) for i in range(count))
    for i, f in enumerate(faults):
        if (i and f.t_us < faults[i - 1].t_us) or not f.hits or not 1 <= f.last <= restores:
            raise BadProfile(f"working set {where}: entry {i} is damaged (out of order, or hits {f.hits} / last "
                             f"{f.last} of {restores} restores)")
    return Profile(page_size, cid, seen, max_faults, max_ms, faults, restores)


def encode(profile: Profile) -> bytes:
    """The file's bytes (tests and tools write working sets with it)."""
    head = HEADER.pack(MAGIC, VERSION, profile.page_size, profile.checkpoint_id, len(profile.faults),
                       profile.faults_seen, profile.max_faults, profile.max_ms, profile.restores, 0)
    return head + b"".join(ENTRY.pack(f.t_us, f.record, f.addr, f.hits, f.last) for f in profile.faults)


def check(profile: Profile, index: LazyIndex, where: str) -> None:
    """Every fault names a lazy page of this checkpoint's index."""
    if profile.checkpoint_id != index.checkpoint_id or profile.page_size != index.page_size:
        raise BadProfile(f"working set {where} belongs to another checkpoint "
                         f"({profile.checkpoint_id.hex()}, page size {profile.page_size})")
    for i, f in enumerate(profile.faults):
        entries = index.entries
        if f.record >= len(entries) or not entries[f.record].lazy or f.addr % profile.page_size or \
                not entries[f.record].start <= f.addr < entries[f.record].end(index.page_size):
            raise BadProfile(f"working set {where}: entry {i} (record {f.record}, address {f.addr:#x}) is not a "
                             "lazy page of the checkpoint")
