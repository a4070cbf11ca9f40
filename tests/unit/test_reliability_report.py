"""scripts/reliability.py: how RELIABILITY.md is built from the recorded figures, and when it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import scripts


@pytest.fixture(scope="module")
def rel():
    return scripts.load("reliability")


def record(scenario: str, mismatches: int = 0, detect: float | None = 1.0, injected: int | None = 1) -> dict:
    return {"scenario": scenario, "injected": injected, "mismatches": mismatches, "detect_s": detect,
            "recover_s": None, "outcome": "completed"}


def results(records: list[dict], cases: list[dict]) -> dict:
    return {"date": "2026-12-02 00:00 UTC", "machine": "test", "faults": {"runs": 2, "records": records,
                                                                         "cases": cases},
            "hostile": {"network": [{"file": "f", "name": "test_replayed_handshake", "seconds": 0.1,
                                     "outcome": "passed"}]}}


def test_rows_aggregate_runs_of_one_scenario(rel) -> None:
    rows = rel.fault_rows({"records": [record("server killed", detect=1.0), record("server killed", detect=3.0),
                                       record("link loss", injected=None, detect=None)],
                           "cases": [{"outcome": "passed"}] * 3})
    killed = next(r for r in rows if r.startswith("| server killed "))
    assert killed.split(" | ")[1:4] == ["2", "2", "0"], killed
    assert "2.000 / 3.000" in killed  # median / max of the detect times
    loss = next(r for r in rows if r.startswith("| link loss "))
    assert "| random |" in loss and "| – |" in loss
    assert rows[-1].strip() == "3 test runs, 0 failed."


def test_render_only_fails_on_a_mismatch_or_a_failed_run(rel, tmp_path: Path, monkeypatch) -> None:
    saved = tmp_path / "results.json"
    monkeypatch.setattr(rel, "RESULTS", saved)
    monkeypatch.setattr(rel, "FUZZ", tmp_path / "none.json")
    monkeypatch.setattr(rel, "SOAK", tmp_path / "none.json")
    monkeypatch.setattr(rel, "ZDTM", tmp_path / "none.json")
    out = tmp_path / "RELIABILITY.md"
    good = results([record("a")], [{"outcome": "passed"}])
    saved.write_text(json.dumps(rel.summarize(good)))  # the summary --render-only reads
    assert rel.main(["--render-only", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| a | 1 | 1 | 0 |" in text and "| network | 1 | 1 | 0 | 0 | replayed handshake |" in text
    assert "No long fuzzing run recorded" in text and "No soak recorded" in text and "No zdtm run recorded" in text
    saved.write_text(json.dumps(rel.summarize(results([record("a", mismatches=1)], [{"outcome": "passed"}]))))
    assert rel.main(["--render-only", "--out", str(out)]) == 1
    saved.write_text(json.dumps(rel.summarize(results([record("a")], [{"outcome": "failure"}]))))
    assert rel.main(["--render-only", "--out", str(out)]) == 1


def test_bad_runs_is_a_usage_error(rel) -> None:
    with pytest.raises(SystemExit) as exc:
        rel.main(["--runs", "0"])
    assert exc.value.code == 2


def test_the_zdtm_section_shows_the_recorded_table(rel, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rel, "ZDTM", tmp_path / "zdtm.json")
    (tmp_path / "zdtm.json").write_text(json.dumps({
        "criu": "4.2.1", "date": "2026-12-03 08:00 UTC", "machine": "kernel 6.18, 2 CPUs",
        "table": "| test | lazy-pages (lazyrestore) |\n| --- | --- |\n| static/maps00 | pass |",
        "lazyrestore_lazy_pages_runs": {"lazy-pages/lazyrestore": 39, "lazy-pages/stock": 0}}))
    rows = rel.zdtm_rows()
    assert "| static/maps00 | pass |" in "\n".join(rows) and "CRIU 4.2.1" in rows[0]
    assert rows[-1].startswith("Runs of `lazyrestore lazy-pages` (lazy-pages/lazyrestore: 39)")
