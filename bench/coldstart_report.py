"""The "Cold start" section of BENCHMARKS.md: one checkpoint of a serving workload restored many times.

Rows: lazy with --prefetch off, lazy with --prefetch auto (the working set earlier restores of the same
checkpoint recorded), eager. Columns: median time from the restore command's start to the first correct
answer, remote faults until that answer, time until every page is resident; then off / auto ratios.
"""

from __future__ import annotations

from typing import Any

from .summaries import pick
from .cells import (Record, dated, failed_alarm, fmt, markdown_table, median, outcome, ratio, run_ok, table_row,
                          times, verdict)

OFF, AUTO, EAGER = "off", "auto", "eager"
MODES = (OFF, AUTO, EAGER)
LABELS = {OFF: "lazy, `--prefetch off`", AUTO: "lazy, `--prefetch auto`", EAGER: "eager (`restore --images`)"}
FIRST_ANSWER_RATIO_MIN = 2.0
FAULTS_RATIO_MIN = 5.0
SECTION = "coldstart"  # its name between BENCHMARKS.md's markers (markers.py)


def medians(records: list[Record]) -> dict[str, Record]:
    """Per mode: runs, runs ok and the medians (of the runs that succeeded) of each figure."""
    out: dict[str, Record] = {}
    for mode in MODES:
        runs = [r for r in records if r["mode"] == mode]
        if not runs:
            continue
        ok = [r for r in runs if run_ok(r)]
        out[mode] = {"runs": len(runs), "ok": len(ok)} | {
            f: median(r.get(f) for r in ok)
            for f in ("first_answer_s", "running_s", "faults_until_answer", "resident_s", "faults", "prefetch_bytes",
                      "lat_p50_us", "lat_p99_us")}
    return out


def faults_at_least_one(faults: float | None) -> float | None:
    """Fault counts in a ratio: fewer than one counts as one, so that auto's 0 gives a lower bound, not n/a."""
    return None if faults is None else max(faults, 1.0)


def ratios(med: dict[str, Record]) -> dict[str, float | None]:
    off, auto, eager = (med.get(m, {}) for m in MODES)
    return {"first_answer_off_over_auto": ratio(off.get("first_answer_s"), auto.get("first_answer_s")),
            "faults_off_over_auto": ratio(off.get("faults_until_answer"),
                                          faults_at_least_one(auto.get("faults_until_answer"))),
            "first_answer_eager_over_auto": ratio(eager.get("first_answer_s"), auto.get("first_answer_s")),
            "resident_off_over_auto": ratio(off.get("resident_s"), auto.get("resident_s"))}


def faults_bound(med: dict[str, Record]) -> str:
    """"≥ " when auto's median was under one fault (counted as one: the ratio is a lower bound)."""
    auto = med.get(AUTO, {}).get("faults_until_answer")
    return "≥ " if auto is not None and auto < 1 else ""


TABLE_HEAD = ("| restore | first correct answer (ms) | tree running (ms) | remote faults until the answer "
              "| fault p50 / p99 (µs) | every page resident (s) | first answer × auto | faults × auto | runs ok |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def _row(mode: str, m: Record, r: dict[str, float | None], bound: str) -> str:
    x_first = {OFF: r["first_answer_off_over_auto"], EAGER: r["first_answer_eager_over_auto"]}.get(mode)
    lazy = mode != EAGER
    lat = f"{fmt(m['lat_p50_us'], 0)} / {fmt(m['lat_p99_us'], 0)}" if lazy else "—"
    cells = [LABELS[mode], fmt(m["first_answer_s"], 1, scale=1000), fmt(m["running_s"], 1, scale=1000),
             fmt(m["faults_until_answer"], 0) if lazy else "—", lat, fmt(m["resident_s"]),
             "—" if mode == AUTO else times(x_first), times(r["faults_off_over_auto"], bound) if mode == OFF else "—",
             f"{m['ok']}/{m['runs']}"]
    return table_row(cells)


def table(med: dict[str, Record]) -> str:
    """The main table: one row per mode; ratios against auto on the off and eager rows."""
    r, bound = ratios(med), faults_bound(med)
    return markdown_table(TABLE_HEAD, (_row(mode, med[mode], r, bound) for mode in MODES if mode in med))


def _verdict(value: float | None, goal: float) -> str:
    return verdict(None if value is None else value >= goal)


def goals(med: dict[str, Record]) -> list[str]:
    r = ratios(med)
    return [f"- first correct answer, off / auto: {times(r['first_answer_off_over_auto'])} (goal ≥ "
            f"{FIRST_ANSWER_RATIO_MIN:g}×): {_verdict(r['first_answer_off_over_auto'], FIRST_ANSWER_RATIO_MIN)}",
            f"- remote faults until it, off / auto: {times(r['faults_off_over_auto'], faults_bound(med))} (goal ≥ "
            f"{FAULTS_RATIO_MIN:g}×): {_verdict(r['faults_off_over_auto'], FAULTS_RATIO_MIN)}"]


RUNS_HEAD = ("| order | restore | first answer (ms) | tree running (ms) | faults until the answer | all faults "
             "| working set before (pages / restores) | prefetched (MiB) | resident (s) | outcome |\n"
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")


def _run_row(r: Record) -> str:
    ws = r.get("workingset_before")
    pre = r.get("prefetch_bytes")
    cells = [str(r["order"]), LABELS[r["mode"]], fmt(r.get("first_answer_s"), 1, scale=1000),
             fmt(r.get("running_s"), 1, scale=1000),
             fmt(r.get("faults_until_answer"), 0), fmt(r.get("faults"), 0),
             f"{ws['pages']} / {ws['restores']}" if ws else "—",
             "—" if pre is None else fmt(pre, 1, scale=1 / (1 << 20)),
             fmt(r.get("resident_s")), outcome(r)]
    return table_row(cells)


def runs_table(records: list[Record]) -> str:
    return markdown_table(RUNS_HEAD, (_run_row(r) for r in records))


NOTES = """\
One workload, one checkpoint, many restores. `lr-workload --serve` keeps a {mib} MiB key-value table in its
memory (64-byte records, key k in slot k·stride mod n, so consecutive keys sit on pages far apart) and answers
`GET <first_key> <count>` on an abstract unix socket with a checksum over those records, which the client
recomputes from the key numbers: one wrong byte shows. (An abstract unix socket, not TCP: CRIU 4.1.1 cannot
checkpoint INET sockets on Linux ≥ 6.16, CRIU issue #2705.) The workload runs in {src}, answers the hot
request `GET 0 {keys}` ({keys} records on {keys} different pages spread over the table) a few times, and is
checkpointed once onto tmpfs; `lazyrestore serve` serves that one checkpoint from {src} for the whole run.

- **lazy**: `lazyrestore restore --from SRC:PORT --secret-file … --workdir NEW --prefetch off|auto{extra}` in
  {dst}. Runs alternate off, auto, off, auto, … starting with off, so every auto run finds a working set: each
  lazy restore records what it faulted on, and once it has every page the page server merges that into the
  checkpoint's `lazyrestore/workingset`, which auto places before the tree asks. "Working set before" is that
  file when the run started.
- **eager**: a copy of the images dir (tmpfs to tmpfs, {copy} s, not counted), then `lazyrestore restore
  --images COPY` in {dst}: every page checked and placed before the tree runs.
- **first correct answer**: from starting the restore command to the first verified answer to `GET 0 {keys}`.
  A client in {dst} tries the socket every millisecond; once CRIU has restored it the connection is taken,
  and the request waits until the restored server reads it. **tree running**: CRIU's restore returned (lazy:
  the restore's `listening` event + `resume_s`; eager: its `verified` event + `restore_s` − the tool's fixed
  liveness wait).
- **remote faults until the answer**: entries of the run's `workingset` file (each fault lr-lazyd served on a
  page not yet placed, with its time since lr-lazyd started, `started_mono_s` in its progress lines) up to the
  answer. Fault p50 / p99: the restore's summary (the whole restore).
- **every page resident**: from the restore command's start to its summary (lazy: every page placed and
  verified; eager: the restore returned). Each restored tree then reports its memory checksum, which must
  equal the one taken before the checkpoint, and is killed.
- Medians over the runs that succeeded; a 2-vCPU VM is noisy: compare within one run.
"""


def render(meta: dict[str, Any], records: list[Record], med: dict[str, Record] | None = None) -> str:
    """The section from the run's meta, its records (at least RUN_KEYS) and its medians (from records if None)."""
    med = medians(records) if med is None else med
    return "\n".join(["## Cold start: first answer after a restore", "", *failed_alarm(records), dated(meta),
                      f"Command: `{meta['command']}`; network: {meta['network_label']}.", "",
                      table(med), "", "Goals:", "", *goals(med), "", "### Method", "",
                      NOTES.format(mib=meta["mib"], keys=meta["keys"], src=meta["src_label"], dst=meta["dst_label"],
                                   copy=fmt(meta.get("eager_copy_s")),
                                   extra=f" --drain-rate {meta['drain_rate']}" if meta.get("drain_rate") else ""),
                      "### Every run", "", runs_table(records), ""])



# --- summary -----------------------------------------------------------------------------------------------

RUN_KEYS = ("mode", "order", "error", "memory", "first_answer_s", "running_s", "faults_until_answer", "faults",
            "workingset_before", "prefetch_bytes", "resident_s", "lat_p50_us", "lat_p99_us")


def summarize(meta: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """The suite's summary (bench/results/coldstart.json): meta, medians, ratios and each run's row."""
    med = medians(records)
    return {"suite": "coldstart", "date": meta["date"], "commit": meta["machine"].get("lazyrestore"), "meta": meta,
            "medians": med, "ratios": ratios(med), "runs": pick(records, RUN_KEYS)}


def render_summary(summary: dict[str, Any]) -> str:
    return render(summary["meta"], summary["runs"], summary["medians"])
