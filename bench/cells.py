"""Table cells for every BENCHMARKS.md section: figures become Markdown cells ("n/a" when there is none), cells
become rows, rows a table.

The run helpers at the end (run_ok, outcome, failed_alarm) read the records of the benches on a served checkpoint
(coldstart, compress): a dict with at least "error" (None, or what failed) and "memory" ("ok", or what differed).
The local and remote benches' records say "checksum" instead; theirs are in local_report.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

Record = dict[str, Any]


def run_ok(r: Record) -> bool:
    """The run succeeded and its restored memory equalled the original."""
    return r.get("error") is None and r.get("memory") == "ok"


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are there, None when none is."""
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def fmt(x: float | None, digits: int = 3, bound: str = "", *, scale: float = 1.0) -> str:
    """x times scale with digits decimals, after bound ("> " or "< " when it is a bound)."""
    return "n/a" if x is None else f"{bound}{x * scale:.{digits}f}"


def times(x: float | None, bound: str = "") -> str:
    """A ratio: "2.50×", after bound ("≥ " or "> " when it is a lower bound)."""
    return "n/a" if x is None else f"{bound}{x:.2f}×"


def verdict(ok: bool | None) -> str:
    return "not evaluated" if ok is None else ("**PASS**" if ok else "**FAIL**")


def outcome(r: Record) -> str:
    if r.get("error"):
        return f"**FAILED**: {r['error']}"
    return "ok" if r.get("memory") == "ok" else f"**memory: {r.get('memory')}**"


def table_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(head: str, rows: Iterable[str]) -> str:
    """head (its header and alignment lines) followed by rows."""
    return "\n".join([head, *rows])


def failed_alarm(records: list[Record]) -> list[str]:
    """A bold line (and a blank one) when any run failed or restored wrong memory; nothing otherwise."""
    failed = [r for r in records if not run_ok(r)]
    return [f"**{len(failed)} run(s) failed or restored wrong memory: see Every run.**", ""] if failed else []


def dated(meta: dict[str, Any]) -> str:
    """When, at which commit and on what machine the bench ran (a Markdown line ending in a hard break)."""
    m = meta["machine"]
    return (f"Date: {meta['date']}; lazyrestore HEAD {m['lazyrestore']}; machine: {m['cpu']}, "
            f"{m['nproc']} vCPU, {m['memory']}, kernel {m['kernel']}  ")
