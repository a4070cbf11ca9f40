"""Where each suite's results go: its summary, committed (bench/results/SUITE.json), and its raw per-run records,
not committed (build/bench/SUITE.jsonl).

A summary holds what the suite's report needs and nothing else: the run's meta (date, command, options, machine
and commit), the medians and ratios the tables show and each run's row of the "Every run" table. render.py
rewrites BENCHMARKS.md from the summaries alone. The raw records are one JSON object a line: {"meta": ...} first,
then one line per record, {"run": ...} (or {"checkpoint": ...}, {"fill_rate": ...}, {"cycle": ...}).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
RAW_DIR = REPO / "build" / "bench"
SUITES = ("local", "remote", "coldstart", "compress", "soak", "reliability", "fuzz", "zdtm")


def summary_path(suite: str) -> Path:
    return RESULTS_DIR / f"{suite}.json"


def raw_path(suite: str) -> Path:
    return RAW_DIR / f"{suite}.jsonl"


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def dumps(summary: dict[str, Any]) -> str:
    """summary as JSON, one top-level key a line (indented when it is a dict), a list of records one record a line:
    a new run changes the lines of its figures only."""
    def value(v: Any) -> str:
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            return "[\n" + ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in v) + "\n ]"
        return json.dumps(v, indent=1, ensure_ascii=False).replace("\n", "\n ")
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in summary.items()) + "\n}\n"


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(summary))


def pick(records: Iterable[dict[str, Any]], keys: Iterable[str]) -> list[dict[str, Any]]:
    """Each record with only keys (those it has), in that order: a run's row in a summary."""
    wanted = tuple(keys)
    return [{k: r[k] for k in wanted if k in r} for r in records]


def write_raw(path: Path, meta: dict[str, Any], kinds: dict[str, Iterable[dict[str, Any]]]) -> None:
    """meta, then every record of each kind ({"run": [...], "checkpoint": [...]}), one JSON object a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for kind, records in kinds.items():
            for r in records:
                f.write(json.dumps({kind: r}) + "\n")
