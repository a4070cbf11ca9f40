"""BENCHMARKS.md holds several reports: run_bench.py writes the whole file, the others one section each.

A section sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` (remote-bench, coldstart, compress).
run_bench.py keeps every such block when it rewrites the file (keep_remote); run_remote_bench.py replaces
only what is between its markers, appending them when they are missing (put_remote).
"""

from __future__ import annotations

REMOTE_BEGIN = "<!-- remote-bench:begin -->"
REMOTE_END = "<!-- remote-bench:end -->"


def remote_block(text: str) -> str | None:
    """The remote section with its markers, or None when text has no complete one."""
    start = text.find(REMOTE_BEGIN)
    end = text.find(REMOTE_END, start + len(REMOTE_BEGIN)) if start >= 0 else -1
    return None if end < 0 else text[start:end + len(REMOTE_END)]


SECTIONS = ("remote-bench", "coldstart", "compress")  # in the order they follow run_bench.py's report


def section_block(text: str, name: str) -> str | None:
    """Section `name` with its markers, or None when text has no complete one."""
    begin, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    start = text.find(begin)
    end = text.find(end_marker, start + len(begin)) if start >= 0 else -1
    return None if end < 0 else text[start:end + len(end_marker)]


def keep_remote(old: str, new: str) -> str:
    """new (a whole report without marked sections) followed by every marked section old had."""
    blocks = [b for b in (section_block(old, name) for name in SECTIONS) if b is not None]
    return new if not blocks else new.rstrip("\n") + "\n\n" + "\n\n".join(blocks) + "\n"


def put_remote(old: str, section: str) -> str:
    """old with the text between the markers replaced by section (markers appended when missing)."""
    block = f"{REMOTE_BEGIN}\n{section.strip(chr(10))}\n{REMOTE_END}"
    current = remote_block(old)
    if current is not None:
        return old.replace(current, block, 1)
    head = old.rstrip("\n") or "# lazyrestore benchmarks"
    return head + "\n\n" + block + "\n"
