"""bench/compress_report.py: medians, off / this ratios, goals per link and the BENCHMARKS.md section."""

from __future__ import annotations

from typing import Any

import pytest

from bench import markers
from bench import compress_report as rep

MIB = 1 << 20


def run(fill: str, rate: float, mode: str, total: float, wire_mib: float = 64.0, compress: bool | None = None,
        link_bps: int = 0, error: str | None = None, order: int = 0) -> dict[str, Any]:
    return {"fill": fill, "rate_mbit": rate, "mode": mode, "order": order, "total_s": total, "fetch_s": 0.01,
            "resume_s": 0.2, "resident_s": total - 0.3, "wire_bytes": int(wire_mib * MIB), "placed_bytes": 64 * MIB,
            "zstd_frames": 0 if wire_mib >= 64 else 64, "compress": mode == "on" if compress is None else compress,
            "link_bps": link_bps, "server_cpu_s": 0.5, "daemon_cpu_s": 0.3, "error": error,
            "memory": None if error else "ok"}


def slow_text(off: float, on: float, auto: float, rate: float = 100.0) -> list[dict[str, Any]]:
    return [run("text", rate, "off", off), run("text", rate, "on", on, wire_mib=8),
            run("text", rate, "auto", auto, wire_mib=10, compress=True, link_bps=12_000_000)]


def meta() -> dict[str, Any]:
    return {"date": "2026-12-02", "mib": 64, "repeat": 1, "command": "python -m bench compress --quick",
            "network_label": "test hosts A → B, tbf", "src_label": "A", "dst_label": "B",
            "machine": {"lazyrestore": "abc1234", "cpu": "cpu", "nproc": "2", "memory": "1 GiB", "kernel": "6.18"}}


def test_medians_use_the_runs_that_succeeded() -> None:
    records = [run("text", 100, "off", 6.0), run("text", 100, "off", 4.0), run("text", 100, "off", 0.1, error="boom"),
               run("text", 100, "on", 1.0, wire_mib=8), run("text", 100, "on", 2.0, wire_mib=8)]
    med = rep.medians(records)
    off, on = med[("text", 100, "off")], med[("text", 100, "on")]
    assert (off["runs"], off["ok"], off["total_s"]) == (3, 2, pytest.approx(5.0))
    assert on["ratio"] == pytest.approx(8.0) and on["compressed"] == 2
    assert rep.speedup(med, "text", 100, "on") == pytest.approx(5.0 / 1.5)
    assert rep.speedup(med, "text", 100, "auto") is None


def test_goal_holds_per_link_only_when_on_and_auto_both_cut_the_time() -> None:
    records = slow_text(20.0, 5.0, 6.0, rate=100) + slow_text(3.0, 2.9, 1.5, rate=1000)
    goals = rep.goals(rep.medians(records))
    assert len(goals) == 2
    assert goals[0].startswith("- 1 Gbit/s") and "**FAIL**" in goals[0] and "1.03×" in goals[0]
    assert goals[1].startswith("- 100 Mbit/s") and "**PASS**" in goals[1] and "4.00×" in goals[1]


def test_unlimited_links_and_incompressible_memory_set_no_goal() -> None:
    records = slow_text(1.0, 3.0, 1.0, rate=0) + [run("random", 0, "off", 1.0), run("random", 0, "on", 1.25)]
    med = rep.medians(records)
    assert rep.goals(med) == ["- no limited link with compressible memory ran: not evaluated"]
    assert rep.costs(med) == ["- unlimited, incompressible memory: off / on 0.80×, off / auto n/a (below 1×: "
                              "compressing cost time)"]


def test_goal_not_evaluated_without_auto() -> None:
    goals = rep.goals(rep.medians(slow_text(20.0, 5.0, 6.0)[:2]))
    assert "not evaluated" in goals[0]


def test_render_has_a_table_per_fill_and_flags_failures() -> None:
    records = [*slow_text(20.0, 5.0, 6.0), run("random", 100, "off", 20.0),
               run("random", 100, "on", 21.0, error="restore: exit 10"),
               run("random", 100, "auto", 20.5, compress=False, link_bps=12_500_000)]
    text = rep.render(meta(), records)
    assert text.startswith("## Slow links")
    assert "### Compressible memory" in text and "### Incompressible memory" in text
    assert "**1 run(s) failed" in text and "**FAILED**: restore: exit 10" in text
    assert "| 100 Mbit/s | `auto` | 6.00 | 3.33× | 0.20 | 10.0 | 6.40× | yes | 64 | 12.0 | 0.50 | 1/1 |" in text
    assert "| 100 Mbit/s | `on` | n/a | n/a |" in text and "| 0/1 |" in text
    assert "| 100 Mbit/s | `auto` | 20.50 | 0.98× | 0.20 | 64.0 | 1.00× | no | 0 | 12.5 |" in text
    assert "no page frame came compressed" not in text
    assert "tbf" in text and "netem" in text and "16 MiB" in text


def test_compression_on_without_a_compressed_frame_is_flagged() -> None:
    records = [run("text", 100, "off", 5.5, order=0), run("text", 100, "on", 5.5, order=1),  # on, 64 MiB, 0 frames
               run("text", 100, "auto", 2.3, wire_mib=23, compress=True, link_bps=12_000_000, order=2),
               run("random", 100, "on", 5.5, order=3)]  # incompressible: no frame compressed is right
    assert [r["order"] for r in rep.compression_unused(records)] == [1]
    text = rep.render(meta(), records)
    assert "**1 run(s) of compressible memory had compression on" in text and "runs 1.**" in text
    assert "**FAIL**" in text


def test_chose_counts_mixed_decisions() -> None:
    records = [run("text", 1000, "auto", 2.0, compress=True), run("text", 1000, "auto", 2.0, compress=False)]
    assert rep.chose(rep.medians(records)[("text", 1000, "auto")]) == "1/2"


def test_medians_json_spells_out_the_keys() -> None:
    out = rep.medians_json(rep.medians(slow_text(20.0, 5.0, 4.0)))
    assert [(m["fill"], m["rate_mbit"], m["mode"]) for m in out] == [("text", 100, "off"), ("text", 100, "on"),
                                                                      ("text", 100, "auto")]
    assert out[2]["off_over_this"] == pytest.approx(5.0)


def test_put_section_replaces_only_between_its_markers() -> None:
    first = markers.put_section("", rep.SECTION, "## Slow links\nfigures-1")
    assert first.startswith("# lazyrestore benchmarks\n\n" + markers.markers(rep.SECTION)[0])
    doc = "# Bench\n\n<!-- coldstart:begin -->\ncold\n<!-- coldstart:end -->\n\n" + first.split("\n\n", 1)[1]
    doc += "\n## After\n"
    again = markers.put_section(doc, rep.SECTION, "## Slow links\nfigures-2")
    assert "figures-2" in again and "figures-1" not in again
    assert again.startswith("# Bench\n\n<!-- coldstart:begin -->\ncold\n") and again.endswith("## After\n")
