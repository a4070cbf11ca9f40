"""BENCHMARKS.md holds several reports: local.py writes the whole file, the others one section each.

A section sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` (remote-bench, coldstart, compress, and
criu-version: the comparison of two CRIU releases' runs, written by hand when the bootstrap moves to a new CRIU).
local.py keeps every such block when it rewrites the file (keep_remote); remote.py, coldstart.py
and compress.py replace only what is between their own markers, appending them when they are missing
(put_section, write_section).
"""

from __future__ import annotations

from pathlib import Path

SECTIONS = ("criu-version", "remote-bench", "coldstart", "compress")  # in the order they follow local.py's report
EMPTY_HEAD = "# lazyrestore benchmarks"  # the title of a report that had no text before its first section


def markers(name: str) -> tuple[str, str]:
    """Section `name`'s begin and end markers."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def section_block(text: str, name: str) -> str | None:
    """Section `name` with its markers, or None when text has no complete one."""
    begin, end_marker = markers(name)
    start = text.find(begin)
    end = text.find(end_marker, start + len(begin)) if start >= 0 else -1
    return None if end < 0 else text[start:end + len(end_marker)]


def keep_remote(old: str, new: str) -> str:
    """new (a whole report without marked sections) followed by every marked section old had."""
    blocks = [b for b in (section_block(old, name) for name in SECTIONS) if b is not None]
    return new if not blocks else new.rstrip("\n") + "\n\n" + "\n\n".join(blocks) + "\n"


def put_section(old: str, name: str, section: str) -> str:
    """old with the text between section `name`'s markers replaced by section (markers appended when missing)."""
    begin, end_marker = markers(name)
    block = f"{begin}\n{section.strip(chr(10))}\n{end_marker}"
    current = section_block(old, name)
    if current is not None:
        return old.replace(current, block, 1)
    return (old.rstrip("\n") or EMPTY_HEAD) + "\n\n" + block + "\n"


def write_section(path: Path, name: str, section: str) -> None:
    """put_section on the file at path (a missing file counts as empty)."""
    previous = path.read_text() if path.exists() else ""
    path.write_text(put_section(previous, name, section))
