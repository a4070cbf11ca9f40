"""bench/remote_report.py and bench/remote.py's plan: medians per workload, the goals, the section."""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

import pytest

from bench import remote_report as rep

LOOP = "loopback"
NETS = {LOOP: "loopback", "hosts": "test hosts A → B (no netem)"}


def run(method: str, size: int = 1024, wl: str = "scanning", resume: float = 0.2, total: float = 1.0,
        drain: float | None = 2.5, p99: float | None = 500.0, net: str = LOOP, error: str | None = None,
        peak_kib: int | None = None, rep_: int = 0) -> dict[str, Any]:
    lazy = method != rep.EAGER
    return {"size_mib": size, "network": net, "workload": wl, "method": method, "repeat": rep_, "order": 0,
            "error": error, "checksum": None if error else "ok", "resume_s": resume, "total_s": total,
            "drain_gbps": drain if lazy else None, "lat_p50_us": 12.0 if p99 is not None and lazy else None,
            "lat_p99_us": p99 if lazy else None, "faults": 100 if lazy else None, "server_peak_kib": peak_kib,
            "breakdown": {"dump_s": 0.1, "criu_resume_s": 0.03}}


def meta(sizes: list[int], workloads: tuple[str, ...] = ("idle", "scanning"),
         methods: tuple[str, ...] = tuple(rep.METHODS), disk_max: int = 4096) -> dict[str, Any]:
    return {"date": "2026-12-03", "sizes": sizes, "methods": list(methods), "workloads": list(workloads),
            "disk_max_mib": disk_max, "hosts_sizes": [1024], "repeat": 1, "drain_timeout_s": 120,
            "command": "python -m bench remote", "networks": {LOOP: "loopback"}, "hosts": None,
            "machine": {"lazyrestore": "abc1234", "cpu": "cpu", "nproc": "2", "memory": "23.5 GiB",
                        "kernel": "6.18", "criu": "4.2.1"},
            "pipe_max_size": 1048576, "criu_pipe_max": 4194304, "criu_log_level": 2, "settle_s": 0.2,
            "host_a": "lrbench-host-a", "addr_a": "10.0.0.1", "host_b": "lrbench-host-b", "addr_b": "10.0.0.2"}


def test_medians_are_keyed_by_workload() -> None:
    records = [run(rep.OURS, wl="idle", resume=0.1), run(rep.OURS, wl="idle", resume=0.3),
               run(rep.OURS, wl="scanning", resume=0.5), run(rep.OURS, wl="scanning", resume=9.0, error="boom"),
               run(rep.OURS, wl="idle", peak_kib=2048)]
    med = rep.medians(records)
    assert set(med) == {(1024, LOOP, "idle", rep.OURS), (1024, LOOP, "scanning", rep.OURS)}
    idle, scanning = med[(1024, LOOP, "idle", rep.OURS)], med[(1024, LOOP, "scanning", rep.OURS)]
    assert (idle["runs"], idle["ok"], idle["resume_s"]) == (3, 3, pytest.approx(0.2))
    assert idle["server_peak_kib"] == 2048
    assert (scanning["runs"], scanning["ok"], scanning["resume_s"]) == (2, 1, pytest.approx(0.5))


def test_records_without_a_workload_were_scanning() -> None:
    record = run(rep.OURS)
    del record["workload"]
    assert set(rep.medians([record])) == {(1024, LOOP, "scanning", rep.OURS)}


@pytest.mark.parametrize("ours, expected", [(0.238, True), (0.242, False)])
def test_resume_goal_is_within_1_2_times_criu(ours: float, expected: bool) -> None:
    med = rep.medians([run(rep.OURS, resume=ours), run(rep.CRIU, resume=0.2)])
    ok, text = rep.goal_resume(med, 1024, LOOP, "scanning")
    assert ok is expected
    assert f"ratio {ours / 0.2:.2f}×" in text and "≤ 1.2×" in text


def test_resume_goal_needs_criu() -> None:
    ok, text = rep.goal_resume(rep.medians([run(rep.OURS)]), 1024, LOOP, "scanning")
    assert ok is None and "needs both" in text


@pytest.mark.parametrize("largest, expected", [(0.29, True), (0.32, False)])
def test_flat_goal_divides_the_largest_size_by_the_smallest(largest: float, expected: bool) -> None:
    records = [run(rep.OURS, 256, resume=0.2), run(rep.OURS, 1024, resume=0.25), run(rep.OURS, 8192, resume=largest)]
    ok, text = rep.goal_flat(rep.medians(records), [256, 1024, 8192], "scanning")
    assert ok is expected
    assert f"at 8192 MiB / 0.200 s at 256 MiB = {largest / 0.2:.2f}" in text


def test_flat_goal_needs_two_sizes() -> None:
    ok, _ = rep.goal_flat(rep.medians([run(rep.OURS, 256)]), [256], "scanning")
    assert ok is None


@pytest.mark.parametrize("wl, gbps, expected", [("idle", 3.1, True), ("idle", 2.9, False),
                                                ("scanning", 2.1, True), ("scanning", 1.9, False)])
def test_drain_goal_floor_depends_on_the_workload(wl: str, gbps: float, expected: bool) -> None:
    med = rep.medians([run(rep.OURS, wl=wl, drain=gbps), run(rep.CRIU, wl=wl, drain=0.031)])
    ok, text = rep.goal_drain(med, wl)
    assert ok is expected
    assert f"{gbps:.2f} GB/s" in text and f"{gbps / 0.031:.2f}× CRIU remote's" in text


def test_drain_goal_is_judged_at_1_gib_only() -> None:
    ok, text = rep.goal_drain(rep.medians([run(rep.OURS, size=256, drain=9.0)]), "idle")
    assert ok is None and "1024 MiB" in text


@pytest.mark.parametrize("p99, expected", [(999.0, True), (1200.0, False)])
def test_fault_p99_goal(p99: float, expected: bool) -> None:
    ok, _ = rep.goal_p99(rep.medians([run(rep.OURS, p99=p99)]))
    assert ok is expected


@pytest.mark.parametrize("ours, expected", [(4.9, True), (5.1, False)])
def test_total_goal_is_half_of_eager_at_4_gib(ours: float, expected: bool) -> None:
    med = rep.medians([run(rep.OURS, 4096, "idle", total=ours), run(rep.EAGER, 4096, "idle", total=10.0)])
    ok, text = rep.goal_total(med, LOOP, "idle")
    assert ok is expected and f"ratio {ours / 10:.2f}×" in text


def test_goals_judge_lr_live_first_beside_lr_live_on_loopback_only() -> None:
    records = [run(m, 1024, wl, resume=r, net=n) for wl in ("idle", "scanning") for n in (LOOP, "hosts")
               for m, r in ((rep.OURS, 0.3), (rep.FIRST, 0.2), (rep.CRIU, 0.2))]
    m = meta([1024]) | {"networks": NETS}
    lines, verdicts = rep.goals(rep.medians(records), m)
    text = "\n".join(lines)
    assert "- 1024 MiB, loopback, idle: lr-live 0.300 s, CRIU remote 0.200 s, ratio 1.50× (≤ 1.2×): **FAIL**" in text
    assert "- 1024 MiB, loopback, idle: lr-live-first 0.200 s, CRIU remote 0.200 s, ratio 1.00× (≤ 1.2×): **PASS**" in text
    assert "(no netem), scanning: lr-live 0.300 s, CRIU remote 0.200 s, ratio 1.50× (≤ 1.2×): **FAIL** (for information)" \
        in text
    resume = [v for v in verdicts if v[0] == "1"]
    assert resume == [("1", rep.OURS, False), ("1", rep.FIRST, True)] * 2
    assert ("2", rep.OURS, None) in verdicts  # one size: flatness not evaluated


def test_goals_without_lr_live_first_leave_it_out() -> None:
    lines, verdicts = rep.goals(rep.medians([run(rep.OURS), run(rep.CRIU)]), meta([1024]))
    assert not any(rep.FIRST in line for line in lines)
    assert {v[1] for v in verdicts} == {rep.OURS}


def load_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench.remote; importing it changes no environment (python -m bench sets LAZYRESTORE_PLUGIN in main)."""
    monkeypatch.setenv("LAZYRESTORE_PLUGIN", "unit-test")
    from bench import remote
    assert remote.os.environ["LAZYRESTORE_PLUGIN"] == "unit-test"
    return remote


def test_plan_skips_the_disk_methods_above_disk_max(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench(monkeypatch)
    args = bench.parse_args(["--sizes", "1024,8192", "--workloads", "idle,scanning"])
    steps = bench.plan(args)
    at = {size: {s.method for s in steps if s.size == size} for size in (1024, 8192)}
    assert at[1024] == set(rep.METHODS)
    assert at[8192] == set(rep.METHODS) - {"lr-remote", "eager-copy"}
    assert {(s.network, s.workload) for s in steps if s.size == 1024} == \
        {(n, w) for n in ("loopback", "hosts") for w in ("idle", "scanning")}
    assert {s.network for s in steps if s.size == 8192} == {"loopback"}
    assert len(steps) == 2 * 2 * 5 + 2 * 3


def test_plan_rotates_methods_and_alternates_workloads(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench(monkeypatch)
    args = bench.parse_args(["--sizes", "256", "--repeat", "2", "--methods", "lr-live,criu-remote"])
    assert args.networks == ["loopback"]
    steps = bench.plan(args)
    assert [(s.repeat, s.workload, s.method) for s in steps] == [
        (0, "idle", "lr-live"), (0, "idle", "criu-remote"), (0, "scanning", "lr-live"), (0, "scanning", "criu-remote"),
        (1, "scanning", "criu-remote"), (1, "scanning", "lr-live"), (1, "idle", "criu-remote"), (1, "idle", "lr-live")]
    assert [s.order for s in steps] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_hosts_alone_needs_a_hosts_size(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench(monkeypatch)
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "256", "--networks", "hosts"])
    assert bench.parse_args(["--sizes", "256", "--networks", "hosts", "--hosts-sizes", "256"]).networks == ["hosts"]


def test_quick_is_256_mib_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    args: argparse.Namespace = load_bench(monkeypatch).parse_args(["--quick"])
    assert (args.sizes, args.networks, args.repeat, args.workloads) == ([256], ["loopback"], 1, ["idle", "scanning"])


def test_render_has_the_workload_column_and_survives_missing_methods() -> None:
    records = [run(rep.OURS, 8192, "idle", peak_kib=5120), run(rep.CRIU, 8192, "idle", drain=None),
               run(rep.OURS, 256, "scanning", error="restore: exit 1")]
    m = meta([256, 8192])
    text = rep.render(m, records, rep.medians(records))
    assert text.startswith("## Remote migration")
    assert "| size | network | workload | method |" in text and "| source server peak RSS (MiB) |" in text
    assert "| 8192 MiB | loopback | idle | lazyrestore migrate (live) → restore --from | 0.200 |" in text
    assert "| 5.0 | 1/1 ok |" in text  # peak RSS in MiB
    assert "| — | 1/1 ok |" in text  # CRIU: no lr-pageserver
    assert "**0/1 ok**" in text and "**1 migration(s) FAILED: 256 MiB loopback scanning lr-live #0**" in text
    assert "Not run at 8192 MiB (above `--disk-max` 4096 MiB)" in text
    assert "not evaluated" in text and "### Goals" in text and "### Every run" in text


def test_render_with_no_runs_at_all() -> None:
    text = rep.render(meta([1024], workloads=("idle",)), [], {})
    assert "### Goals" in text and "not evaluated" in text
