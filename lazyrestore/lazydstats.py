"""lr-lazyd's stats line, the one schema lazyrestore reads it by.

lr-lazyd writes one JSON object per event on its --stats-fd (native/lazyd/stats.c, lr_stats_json; every line also
lands in the run dir's progress.jsonl): "event" (progress, done, ...), then the keys below. LazydStats names each
key lazyrestore uses, with its type and meaning; from_json reads them all generically (a key a line lacks keeps its
default), so adding a key means one line here and one in stats.c.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class LazydStats:
    faults: int = 0                 # userfaultfd page faults served
    data_faults: int = 0            # of them, those that waited for page data (not already on its way)
    fault_bytes: int = 0            # bytes placed because a fault asked for them
    drain_bytes: int = 0            # bytes placed by the background drain
    near_bytes: int = 0             # of drain_bytes, placed right after a fault's window (locality)
    zero_pages: int = 0             # pages placed as zeros (UFFDIO_ZEROPAGE)
    lat_p50_us: float = 0.0         # fault latency quantiles and maximum, microseconds
    lat_p99_us: float = 0.0
    lat_max_us: float = 0.0
    resident_s: float | None = None  # from "restore finished" to every page placed (in the "done" line)
    cpu_user_s: float = 0.0         # lr-lazyd's own CPU time
    cpu_sys_s: float = 0.0
    prefetch_bytes: int = 0         # working-set bytes placed before the tree asked
    prefetch_restores: int = 0      # restores the working set used was merged from (0: none used)
    link_bps: int = 0               # remote: the link measured while fetching ahead (0: not measured)
    compress: bool = False          # remote: page data came zstd-compressed
    zstd_frames: int = 0            # remote: page frames that came compressed
    wire_bytes: int = 0             # remote: page frame bytes as they crossed the link

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> LazydStats:
        """The keys of one stats line that this schema names; missing keys keep their defaults."""
        return cls(**{f.name: line[f.name] for f in fields(cls) if f.name in line})

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s
