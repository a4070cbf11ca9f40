"""bench/local_report.py: a local run's records summarized (medians, ratios against CRIU lazy-pages, fill shares,
bounds of a censored run) and the report rendered from that summary after a trip through JSON."""

from __future__ import annotations

import json
from typing import Any

from bench import local_report as rep
from bench.summaries import dumps

MIB = 1 << 20


def run(method: str, resume: float, resident: float, drain: float | None, **extra: Any) -> dict[str, Any]:
    return {"size_mib": 256, "kind": "idle", "method": method, "repeat": 0, "order": 0, "lazy_bytes": 240 * MIB,
            "error": None, "checksum": "ok", "resume_s": resume, "resident_s": resident, "wall_s": 1.0,
            "drain_gbps": drain, "lat_p50_us": None, "lat_p99_us": None, "daemon_cpu_s": None, **extra}


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    meta = {"date": "2026-12-03", "sizes": [256], "kinds": ["idle"], "repeat": 1, "drain_timeout_s": 120,
            "command": "python -m bench local --quick", "settle_s": 0.2, "criu_log_level": 3,
            "machine": {"lazyrestore": "abc1234"}}
    checkpoints = [{"size_mib": 256, "kind": "idle", "error": None, "lazy_bytes": 240 * MIB, "images_bytes": 241 * MIB,
                    "dump_s": 0.1, "frozen_s": 0.1, "checksums": {"main": "x"}}]
    fills = [{"size_mib": 256, "kind": "idle", "repeat": 0, "uffd_1t": 4.0, "uffd_2t": 8.0, "memcpy_1t": 2.0}]
    return json.loads(dumps(rep.summarize(meta, records, checkpoints, fills)))


def test_the_summary_keeps_ratios_shares_and_rows_and_the_report_shows_them() -> None:
    s = summary([run("eager", 0.2, 0.2, None), run("criu-lazy", 0.05, 0.15, 2.0), run("lr-lazyd", 0.04, 0.1, 3.0)])
    ours = next(m for m in s["medians"] if m["method"] == "lr-lazyd")
    assert ours["x_criu"] == {"resume": 0.05 / 0.04, "resident": 0.15 / 0.1, "drain": 1.5}
    assert s["fill_rates"][0]["lr-lazyd_pct"] == 75.0 and s["commit"] == "abc1234"
    assert "checksums" not in s["checkpoints"][0] and "wall_s" not in s["runs"][0]
    text = rep.render(s)
    assert "| 256 MiB | lr-lazyd | 0.040 | 0.100 | 3.00 | n/a | n/a | 1.25× | 1.50× | 1.50× | 1.000 | 1/1 ok |" in text
    assert "| idle | 256 MiB | 4.00 | 8.00 | 2.00 | 3.00 | 75 % | 2.00 | 50 % |" in text
    assert "All restores succeeded" in text and "tool's fixed 0.2 s liveness wait" in text


def test_a_censored_criu_run_shows_its_bounds() -> None:
    slow = run("criu-lazy", 0.05, 0.0, None, timed_out=True, resident_min_s=120.05, daemon_cpu_min_s=119.0,
               checksum="not checked (timed out)", note="criu lazy-pages had not placed every page")
    s = summary([slow, run("lr-lazyd", 0.04, 0.1, 3.0)])
    row = next(r for r in s["runs"] if r["method"] == "criu-lazy")
    assert row["resident_s"] == 120.05 and row["drain_gbps"] == 240 * MIB / 120.0 / 1e9
    text = rep.render(s)
    assert "| > 120.050 | < 0.00 | timed out: criu lazy-pages had not placed every page; memory not checked |" in text
    assert "idle 256 MiB #0: > 120 s" in text and "| 1.25× | > 1200.50× | > 1430.51× |" in text
