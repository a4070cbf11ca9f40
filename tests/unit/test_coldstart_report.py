"""bench/coldstart_report.py: medians, off / auto ratios, goals and the BENCHMARKS.md section."""

from __future__ import annotations

from typing import Any

import pytest

from bench import markers
from bench import coldstart_report as rep


def run(mode: str, order: int, first: float, faults: int | None, error: str | None = None) -> dict[str, Any]:
    return {"mode": mode, "order": order, "first_answer_s": first, "running_s": 0.2, "faults_until_answer": faults,
            "faults": faults, "resident_s": 1.0, "prefetch_bytes": 0, "lat_p50_us": 100.0, "lat_p99_us": 900.0,
            "error": error, "memory": None if error else "ok", "workingset_before": None}


def meta() -> dict[str, Any]:
    return {"date": "2026-12-02", "mib": 1024, "keys": 2000, "command": "python -m bench coldstart",
            "network_label": "test hosts", "src_label": "A", "dst_label": "B", "eager_copy_s": 0.4,
            "machine": {"lazyrestore": "abc1234", "cpu": "cpu", "nproc": "2", "memory": "1 GiB", "kernel": "6.18"}}


def test_medians_use_the_runs_that_succeeded() -> None:
    records = [run("off", 0, 1.0, 2000), run("off", 2, 3.0, 1800), run("off", 4, 0.1, 1, error="boom"),
               run("auto", 1, 0.4, 10), run("auto", 3, 0.6, 30)]
    med = rep.medians(records)
    assert med["off"]["runs"] == 3 and med["off"]["ok"] == 2
    assert med["off"]["first_answer_s"] == pytest.approx(2.0) and med["off"]["faults_until_answer"] == 1900
    r = rep.ratios(med)
    assert r["first_answer_off_over_auto"] == pytest.approx(4.0)
    assert r["faults_off_over_auto"] == pytest.approx(95.0)
    assert r["first_answer_eager_over_auto"] is None


def test_no_faults_with_auto_gives_a_lower_bound() -> None:
    med = rep.medians([run("off", 0, 1.0, 500), run("auto", 1, 0.5, 0)])
    assert rep.ratios(med)["faults_off_over_auto"] == pytest.approx(500.0)
    assert "≥ 500.00×" in rep.table(med) and "**PASS**" in "\n".join(rep.goals(med))


def test_goals_fail_below_the_ratios() -> None:
    goals = rep.goals(rep.medians([run("off", 0, 1.0, 40), run("auto", 1, 0.8, 10)]))
    assert all("**FAIL**" in g for g in goals), goals
    assert all("not evaluated" in g for g in rep.goals(rep.medians([run("off", 0, 1.0, 40)])))


def test_render_lists_every_run_and_flags_failures() -> None:
    records = [run("off", 0, 1.0, 2000), run("auto", 1, 0.4, 10), run("eager", 2, 2.0, None),
               run("auto", 3, 0.5, 12, error="restore: exit 10")]
    text = rep.render(meta(), records)
    assert text.startswith("## Cold start")
    assert "**1 run(s) failed" in text and "**FAILED**: restore: exit 10" in text
    assert "| eager (`restore --images`) | 2000.0 |" in text
    assert text.count("| lazy, `--prefetch auto` |") == 3  # the medians row and two runs


def test_put_section_replaces_only_between_its_markers() -> None:
    first = markers.put_section("", rep.SECTION, "## Cold start\nfigures-1")
    assert first.startswith("# lazyrestore benchmarks\n\n" + markers.markers(rep.SECTION)[0])
    doc = "# Bench\n\nintro\n\n" + first.split("\n\n", 1)[1] + "\n## After\n"
    again = markers.put_section(doc, rep.SECTION, "## Cold start\nfigures-2")
    assert "figures-2" in again and "figures-1" not in again
    assert again.startswith("# Bench\n\nintro\n\n") and again.endswith("## After\n")
