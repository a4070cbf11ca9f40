"""lazyrestore/lazydstats.py: the one schema of lr-lazyd's stats line, checked against what stats.c writes."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from lazyrestore import lazy
from lazyrestore.lazydstats import LazydStats

STATS_C = Path(__file__).resolve().parents[2] / "native" / "lazyd" / "stats.c"


def test_every_key_read_is_one_lr_lazyd_writes() -> None:
    written = set(re.findall(r'\\"([a-z_0-9]+)\\":', STATS_C.read_text()))
    assert {f.name for f in fields(LazydStats)} <= written, "a key lazyrestore reads that lr-lazyd does not write"


def test_from_json_takes_known_keys_and_keeps_defaults() -> None:
    s = LazydStats.from_json({"event": "done", "faults": 3, "cpu_user_s": 0.25, "cpu_sys_s": 0.5, "other": 1})
    assert s.faults == 3 and s.cpu_s == 0.75 and s.drain_bytes == 0 and s.resident_s is None


def test_the_summary_carries_every_stats_field_it_names() -> None:
    line = {f.name: (i + 1 if f.type in ("int", "float", "float | None") else True)
            for i, f in enumerate(fields(LazydStats))}
    s = lazy._summary(Path("/i"), "c", 1, 1, Path("/r"), 0.0, 0.0, line, False)
    for name in lazy.STATS_KEYS & {f.name for f in fields(lazy.LazySummary)}:
        assert getattr(s, name) == line[name], name
    assert s.daemon_cpu_s == line["cpu_user_s"] + line["cpu_sys_s"]
