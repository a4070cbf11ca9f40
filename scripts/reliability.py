"""`make reliability`: run the fault-injection, load and hostile-input suites, and write RELIABILITY.md.

The fault-injection and load tests run --runs times each; every scenario records its figures (faults
injected, mismatches, time to detect and to recover) through tests/integration/faults.record. The
hostile-input tests run once; their outcomes come from pytest's JUnit XML. The long fuzzing run
(`make fuzz FUZZ_SECONDS=1200`, copied to bench/results/fuzz.json), the soak (`make soak`, bench/results/soak.json)
and CRIU's zdtm suite (`make zdtm ZDTM_RECORD=1`, bench/results/zdtm.json) are done outside and read from their
summaries. This suite's summary (per scenario and per input group: what the tables show) goes to
bench/results/reliability.json, so `--render-only` (or `python -m bench render`) can rewrite RELIABILITY.md without
running anything; every record and test case goes to build/bench/reliability.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "reliability.json"
FUZZ = REPO / "bench" / "results" / "fuzz.json"
SOAK = REPO / "bench" / "results" / "soak.json"
ZDTM = REPO / "bench" / "results" / "zdtm.json"
RAW = REPO / "build" / "bench" / "reliability.jsonl"
FAULT_TESTS = ["tests/integration/test_faults.py", "tests/integration/test_checkpoint_faults.py",
               "tests/integration/test_load.py"]
HOSTILE_TESTS = {
    "network": ["tests/integration/test_hostile_network.py", "tests/integration/test_pageserver.py"],
    "images": ["tests/integration/test_hostile_images.py", "tests/integration/test_corruption.py"],
    "CLI": ["tests/unit/test_cli_invalid.py"],
    "fuzz smoke": ["tests/unit/test_fuzz_smoke.py"],
}


def pytest(paths: list[str], junit: Path, log: Path | None) -> int:
    env = {**os.environ, "CI": os.environ.get("CI", "true")}
    if log:
        env["LAZYRESTORE_RELIABILITY_LOG"] = str(log)
    existing = [p for p in paths if (REPO / p).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *existing]
    print("reliability:", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def junit_cases(junit: Path) -> list[dict[str, Any]]:
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        cases.append({"file": case.get("classname", ""), "name": case.get("name", ""),
                      "seconds": float(case.get("time", 0)), "outcome": outcome})
    return cases


def run_faults(runs: int, scratch: Path) -> dict[str, Any]:
    log = scratch / "records.jsonl"
    cases: list[dict[str, Any]] = []
    for n in range(runs):
        junit = scratch / f"faults-{n}.xml"
        pytest(FAULT_TESTS, junit, log)
        cases += junit_cases(junit)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"runs": runs, "records": records, "cases": cases}


def run_hostile(scratch: Path) -> dict[str, list[dict[str, Any]]]:
    found = {}
    for group, paths in HOSTILE_TESTS.items():
        junit = scratch / f"hostile-{group.replace(' ', '-')}.xml"
        pytest(paths, junit, None)
        found[group] = junit_cases(junit)
    return found


def spread_of(values: list[float | None]) -> list[float] | None:
    """[median, max] of the values that are there; None when none is."""
    vals = [v for v in values if v is not None]
    return [statistics.median(vals), max(vals)] if vals else None


def spread(values: list[float | None]) -> str:
    return spread_text(spread_of(values))


def spread_text(pair: list[float] | None) -> str:
    return "–" if pair is None else f"{pair[0]:.3f} / {pair[1]:.3f}"


def summarize_faults(faults: dict[str, Any]) -> dict[str, Any]:
    """Per scenario (in the order they first ran): runs, faults injected ("random" when none was counted),
    mismatches, detect and recover times [median, max], the last outcome; and the test runs and failures."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in faults["records"]:
        by.setdefault(r["scenario"], []).append(r)
    scenarios = [{"scenario": name, "runs": len(recs),
                  "injected": sum(r["injected"] or 0 for r in recs) if any(r["injected"] for r in recs) else "random",
                  "mismatches": sum(r["mismatches"] for r in recs), "detect_s": spread_of([r["detect_s"] for r in recs]),
                  "recover_s": spread_of([r["recover_s"] for r in recs]), "outcome": recs[-1]["outcome"]}
                 for name, recs in by.items()]
    failed = sum(1 for c in faults["cases"] if c["outcome"] in ("failure", "error"))
    return {"runs": faults.get("runs"), "tests": len(faults["cases"]), "failed": failed, "scenarios": scenarios}


def fault_table(faults: dict[str, Any]) -> list[str]:
    rows = ["| Scenario | Runs | Faults injected | Mismatches | Detect s (median / max) | Recover s (median / max) "
            "| Outcome |", "|---|---:|---:|---:|---:|---:|---|"]
    for sc in faults["scenarios"]:
        rows.append(f"| {sc['scenario']} | {sc['runs']} | {sc['injected']} | {sc['mismatches']} | "
                    f"{spread_text(sc['detect_s'])} | {spread_text(sc['recover_s'])} | {sc['outcome']} |")
    rows.append(f"\n{faults['tests']} test runs, {faults['failed']} failed.")
    return rows


def fault_rows(faults: dict[str, Any]) -> list[str]:
    return fault_table(summarize_faults(faults))


def summarize_hostile(hostile: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per input group: cases passed, failed (failure or error) and skipped, and the first six tests' names."""
    out = {}
    for group, cases in hostile.items():
        count = {k: sum(1 for c in cases if c["outcome"] == k) for k in ("passed", "failure", "error", "skipped")}
        names = sorted({c["name"].split("[")[0].removeprefix("test_").replace("_", " ") for c in cases})
        out[group] = {"cases": len(cases), "passed": count["passed"], "failed": count["failure"] + count["error"],
                      "skipped": count["skipped"], "examples": names[:6], "more_examples": len(names) > 6}
    return out


def hostile_table(hostile: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| Input | Cases | Passed | Failed | Skipped | Examples |", "|---|---:|---:|---:|---:|---|"]
    for group, g in hostile.items():
        rows.append(f"| {group} | {g['cases']} | {g['passed']} | {g['failed']} | "
                    f"{g['skipped']} | {'; '.join(g['examples'])}{' …' if g['more_examples'] else ''} |")
    return rows


def hostile_rows(hostile: dict[str, list[dict[str, Any]]]) -> list[str]:
    return hostile_table(summarize_hostile(hostile))


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The suite's summary (bench/results/reliability.json): what RELIABILITY.md's first two tables show."""
    return {"suite": "reliability", "date": results["date"], "commit": results.get("commit"),
            "machine": results["machine"], "faults": summarize_faults(results["faults"]),
            "hostile": summarize_hostile(results["hostile"])}


def write_raw(results: dict[str, Any]) -> None:
    """Every record and test case, one JSON object a line (build/bench/reliability.jsonl)."""
    RAW.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"meta": {k: results[k] for k in ("date", "commit", "machine")}}]
    lines += [{"record": r} for r in results["faults"]["records"]] + [{"case": c} for c in results["faults"]["cases"]]
    lines += [{"hostile": {"group": g, **c}} for g, cases in results["hostile"].items() for c in cases]
    RAW.write_text("".join(json.dumps(line) + "\n" for line in lines))


def fuzz_rows() -> list[str]:
    if not FUZZ.exists():
        return ["No long fuzzing run recorded yet (`make fuzz FUZZ_SECONDS=1200`, then copy "
                "build/fuzz/results.json to bench/results/fuzz.json)."]
    data = json.loads(FUZZ.read_text())
    targets = data.get("targets", data)
    rows = ["| Harness | Seconds | Executions | exec/s | Corpus | Coverage | Crashes |", "|---|---:|---:|---:|---:|---:|---:|"]
    total_s = total_x = 0
    for name, t in targets.items():
        total_s += t.get("seconds", 0)
        total_x += t.get("executions", 0)
        rows.append(f"| {name} | {t.get('seconds', 0)} | {t.get('executions', 0):,} | {t.get('exec_per_s', 0):,} | "
                    f"{t.get('corpus_size', '–')} | {t.get('coverage', t.get('features', '–'))} | {t.get('crashes', 0)} |")
    rows.append(f"\nTotal: {total_s / 3600:.2f} hours, {total_x:,} executions"
                f"{', run on ' + data['date'] if isinstance(data, dict) and 'date' in data else ''}.")
    return rows


def soak_rows() -> list[str]:
    if not SOAK.exists():
        return ["No soak recorded yet (`make soak`)."]
    s = json.loads(SOAK.read_text())
    return ["| Minutes | Cycles | Failed cycles | Workload | Mismatches | Leaked processes | Leaked fds | "
            "Leaked mounts | Downtime p50 / max s |", "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
            f"| {s['minutes']} | {s['cycles']} | {len(s.get('failed_cycles', []))} | {s['mib']} MiB fixed + "
            f"{s['write_mib']} MiB rewritten by "
            f"{s['writers']} threads | {s['mismatches']} | {s['leaked_processes']} | {s['leaked_fds']} | "
            f"{s['leaked_mounts']} | {s['downtime_p50_s']:.2f} / {s['downtime_max_s']:.2f} |",
            f"\nRun on {s['date']}."]


def zdtm_rows() -> list[str]:
    if not ZDTM.exists():
        return ["No zdtm run recorded yet (`make zdtm ZDTM_DAEMONS=stock,lazyrestore ZDTM_RECORD=1`)."]
    z = json.loads(ZDTM.read_text())
    runs = ", ".join(f"{k}: {v}" for k, v in z["lazyrestore_lazy_pages_runs"].items() if k.endswith("/lazyrestore"))
    return [f"CRIU {z['criu']}'s own test suite (test/zdtm.py), the set CRIU's CI runs in lazy mode, each test in "
            "every flavour it supports (h, ns, uns; ns only for --lazy-migrate). *stock*: CRIU's `criu lazy-pages`, "
            "no plugin; *lazyrestore*: `lazyrestore lazy-pages` as the daemon, the plugin loaded (every dump "
            "indexed). `make test` runs the lazyrestore columns (scripts/zdtm.py).", "", z.get("summary", ""), "",
            z["table"], "",
            f"Runs of `lazyrestore lazy-pages` ({runs}). Run on {z['date']} ({z['machine']})."]


def render(results: dict[str, Any]) -> str:
    parts = ["# Reliability", "",
             f"Generated by `make reliability` on {results['date']} ({results['machine']}). Every scenario runs "
             "real processes, real CRIU and real sockets between two network namespaces (tests/integration/). "
             "Mismatches count memory checksums or page verifications of a restored tree that differ from the "
             "original: they must be 0. Detect: from the fault to lr-lazyd noticing it (a lost connection) or to "
             "the restore failing; recover: from the fault's end (the server restarted, the link up) to the "
             "reconnection or to every page being resident; for bad links and load: the whole restore.", "",
             "## Fault injection and load", "", *fault_table(results["faults"]), "",
             "Packet loss, duplication and corruption come from nftables (`numgen random`; corruption rewrites "
             "one byte of a TCP segment and fixes TCP's checksum, so only lazyrestore's own checksums can catch "
             "it). This kernel has no netem (CONFIG_NET_SCH_NETEM), so packet reordering is not injected.", "",
             "## Hostile input", "", *hostile_table(results["hostile"]), "",
             "## Fuzzing (libFuzzer, ASan + UBSan)", "", *fuzz_rows(), "",
             "## Soak", "", *soak_rows(), "",
             "## CRIU's zdtm lazy-pages suite", "", *zdtm_rows(), ""]
    return "\n".join(parts)


def machine() -> str:
    cpus = os.cpu_count()
    return f"kernel {os.uname().release}, {cpus} CPUs"


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip() or "unknown"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each fault-injection scenario (default 3)")
    ap.add_argument("--render-only", action="store_true", help="rewrite RELIABILITY.md from the saved results")
    ap.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: expected a positive number of runs")
    if args.render_only:
        if not RESULTS.exists():
            ap.error(f"--render-only: no saved results at {RESULTS}; run without it first")
        summary = json.loads(RESULTS.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="lazyrestore-reliability-") as tmp:
            results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
                       "machine": machine(), "faults": run_faults(args.runs, Path(tmp)),
                       "hostile": run_hostile(Path(tmp))}
        write_raw(results)
        summary = summarize(results)
        RESULTS.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    args.out.write_text(render(summary))
    failed = summary["faults"]["failed"] + sum(g["failed"] for g in summary["hostile"].values())
    mismatches = sum(sc["mismatches"] for sc in summary["faults"]["scenarios"])
    print(f"reliability: wrote {args.out}; {failed} failed test runs, {mismatches} mismatches")
    return 1 if failed or mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
