"""BENCHMARKS.md holds two reports: run_bench.py writes the whole file, run_remote_bench.py one section.

The remote section sits between REMOTE_BEGIN and REMOTE_END. run_bench.py keeps that block when
it rewrites the file (keep_remote); run_remote_bench.py replaces only what is between the markers,
appending them when they are missing (put_remote).
"""

from __future__ import annotations

REMOTE_BEGIN = "<!-- remote-bench:begin -->"
REMOTE_END = "<!-- remote-bench:end -->"


def remote_block(text: str) -> str | None:
    """The remote section with its markers, or None when text has no complete one."""
    start = text.find(REMOTE_BEGIN)
    end = text.find(REMOTE_END, start + len(REMOTE_BEGIN)) if start >= 0 else -1
    return None if end < 0 else text[start:end + len(REMOTE_END)]


def keep_remote(old: str, new: str) -> str:
    """new (a whole report without a remote section) followed by old's remote section, if it had one."""
    block = remote_block(old)
    return new if block is None else new.rstrip("\n") + "\n\n" + block + "\n"


def put_remote(old: str, section: str) -> str:
    """old with the text between the markers replaced by section (markers appended when missing)."""
    block = f"{REMOTE_BEGIN}\n{section.strip(chr(10))}\n{REMOTE_END}"
    current = remote_block(old)
    if current is not None:
        return old.replace(current, block, 1)
    head = old.rstrip("\n") or "# lazyrestore benchmarks"
    return head + "\n\n" + block + "\n"
