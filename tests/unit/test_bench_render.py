"""bench/render.py (`python -m bench render`): the committed BENCHMARKS.md and RELIABILITY.md are exactly what the
committed summaries in bench/results/ give, and a render-only run rewrites nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import render, summaries

REPO = Path(__file__).resolve().parents[2]


def test_benchmarks_md_is_rendered_from_the_summaries() -> None:
    committed = (REPO / "BENCHMARKS.md").read_text()
    assert render.benchmarks(committed) == committed


def test_reliability_md_is_rendered_from_the_summaries() -> None:
    assert render.reliability() == (REPO / "RELIABILITY.md").read_text()


def test_render_only_writes_the_same_files_and_check_agrees(tmp_path: Path) -> None:
    for name in ("BENCHMARKS.md", "RELIABILITY.md"):
        shutil.copy(REPO / name, tmp_path / name)
    paths = ["--benchmarks", str(tmp_path / "BENCHMARKS.md"), "--reliability", str(tmp_path / "RELIABILITY.md")]
    assert render.main(["--check", *paths]) == 0
    (tmp_path / "BENCHMARKS.md").write_text((REPO / "BENCHMARKS.md").read_text().replace("| 3/3 ok |", "| 2/3 ok |", 1))
    assert render.main(["--check", *paths]) == 1
    assert render.main(paths) == 0
    assert (tmp_path / "BENCHMARKS.md").read_text() == (REPO / "BENCHMARKS.md").read_text()


def test_every_summary_names_its_suite_date_and_commit() -> None:
    for suite in ("local", "remote", "coldstart", "compress", "soak", "reliability"):
        s = json.loads(summaries.summary_path(suite).read_text())
        assert s["suite"] == suite and s["date"] and "commit" in s, suite


def test_a_summary_reads_back_as_written(tmp_path: Path) -> None:
    s = {"suite": "x", "meta": {"a": [1, 2], "b": {"c": None}}, "runs": [{"k": 1.5, "l": "é"}, {"k": 2}], "n": []}
    summaries.write_summary(tmp_path / "x.json", s)
    assert summaries.read_summary(tmp_path / "x.json") == s
    assert '  {"k": 1.5, "l": "é"},' in (tmp_path / "x.json").read_text().splitlines()
