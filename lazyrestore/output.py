"""What commands print: human text, or one JSON object per line with --json.

In JSON mode stdout carries only JSON lines ({"event": NAME, ...}); the last one
is the command's result ("summary", "report") or an "error" event. Progress for
people goes to stderr in both modes, so a runtime reading stdout never has to
skip text.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Reporter:
    def __init__(self, json_mode: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.started = time.monotonic()

    def event(self, name: str, **fields: Any) -> None:
        """A machine-readable event (JSON mode only)."""
        if self.json_mode:
            record = {"event": name, "t": round(time.monotonic() - self.started, 6), **fields}
            self.out.write(json.dumps(record, sort_keys=False) + "\n")
            self.out.flush()

    def progress(self, text: str) -> None:
        """A line for people about what is happening now (stderr)."""
        self.err.write(f"lazyrestore: {text}\n")
        self.err.flush()

    def result(self, text: str, name: str, **fields: Any) -> None:
        """The command's result: text for people, or the final JSON event."""
        if self.json_mode:
            self.event(name, **fields)
        else:
            self.out.write(text.rstrip("\n") + "\n")
            self.out.flush()


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
