"""The working set lr-lazyd records during a lazy restore (native/lazyd/profile.h): the pages the tree faulted
on, in order, with the time of each fault, as checkpoint addresses.

File: a 56-byte header (magic "LRWSET1", version, page size, checkpoint id, entry count, faults seen, the
recording's bounds), then 16-byte entries {t_us, record, addr}. Every field is checked here: a profile is
only ever a hint, and a stale or damaged one must be refused with a clear reason, never trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import LazyRestoreError
from .lazyindex import LazyIndex

MAGIC = b"LRWSET1\0"
VERSION = 1
HEADER = struct.Struct("<8sII16sQQII")
ENTRY = struct.Struct("<IIQ")
FILE_NAME = "workingset"


class BadProfile(LazyRestoreError):
    """A working-set file that is damaged, of another version, or of another checkpoint."""


@dataclass(frozen=True)
class Fault:
    t_us: int    # microseconds since lr-lazyd started
    record: int  # index record holding the page
    addr: int    # the page's checkpoint address


@dataclass(frozen=True)
class Profile:
    page_size: int
    checkpoint_id: bytes
    faults_seen: int
    max_faults: int
    max_ms: int
    faults: tuple[Fault, ...]


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
    magic, version, page_size, cid, count, seen, max_faults, max_ms = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise BadProfile(f"working set {where}: not a version {VERSION} working set (magic {magic!r}, "
                         f"version {version})")
    if len(data) != HEADER.size + count * ENTRY.size:
        raise BadProfile(f"working set {where}: {len(data)} bytes for {count} entries "
                         f"(expected {HEADER.size + count * ENTRY.size})")
    faults = tuple(Fault(*ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size)) for i in range(count))
    return Profile(page_size, cid, seen, max_faults, max_ms, faults)


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
