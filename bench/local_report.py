"""BENCHMARKS.md's top (python -m bench local): machine, medians per (kind, size, method), ratios against CRIU's
lazy mode, fill rates, goals, every run.

summarize() turns a run's records into the suite's summary (bench/results/local.json): the medians with their
ratios against CRIU lazy-pages, the fill-rate medians with their shares, the goals' ratios and each run's
figures as the report shows them. render() writes the report from that summary alone.
"""

from __future__ import annotations

import statistics
from typing import Any

from .cells import fmt, ratio, times
from .local_methods import LABELS, METHODS
from .summaries import pick

BASELINE = "criu-lazy"
OURS = "lr-lazyd"
RESUME_FLAT_MAX = 1.2
DRAIN_GBPS_MIN = 3.0
DRAIN_RATIO_MIN = 2.5
FIELDS = ("resume_s", "resident_s", "drain_gbps", "lat_p50_us", "lat_p99_us", "daemon_cpu_s", "wall_s")

Record = dict[str, Any]
Medians = dict[tuple[str, int, str], dict[str, Any]]


# --- numbers ---------------------------------------------------------------

def run_ok(r: Record) -> bool:
    return r.get("error") is None and r.get("checksum") == "ok"


def run_censored(r: Record) -> bool:
    """CRIU's daemon ran out of time: its figures are bounds and the memory was not checked."""
    return r.get("error") is None and bool(r.get("timed_out"))


def run_failed(r: Record) -> bool:
    return not run_ok(r) and not run_censored(r)


def _figures(r: Record) -> Record:
    """A run's figures; for a censored run, the bounds (resident and CPU at least, drain at most)."""
    if not run_censored(r):
        return r
    limit, resume = r["resident_min_s"], r["resume_s"]
    return {"resume_s": resume, "resident_s": limit, "drain_gbps": r["lazy_bytes"] / (limit - resume) / 1e9,
            "daemon_cpu_s": r.get("daemon_cpu_min_s")}


def medians(records: list[Record]) -> Medians:
    """Median of each figure over the runs that succeeded or were censored, per (kind, size, method).

    censored: the median resident time is a censored run's bound (so resident, drain and CPU are bounds).
    """
    groups: dict[tuple[str, int, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r["kind"], r["size_mib"], r["method"]), []).append(r)
    out: Medians = {}
    for key, runs in groups.items():
        used = [_figures(r) for r in runs if run_ok(r) or run_censored(r)]
        bounds = [r["resident_min_s"] for r in runs if run_censored(r)]
        row: dict[str, Any] = {"runs": len(runs), "ok": sum(map(run_ok, runs)), "timed_out": len(bounds)}
        for f in FIELDS:
            values = [r[f] for r in used if r.get(f) is not None]
            row[f] = statistics.median(values) if values else None
        row["censored"] = bool(bounds) and row["resident_s"] is not None and row["resident_s"] >= min(bounds)
        out[key] = row
    return out


# --- tables ----------------------------------------------------------------

TABLE_HEAD = ("| size | method | resume (s) | resident (s) | drain (GB/s) | fault p50 / p99 (µs) | daemon CPU (s) "
              "| resume × CRIU | resident × CRIU | drain × CRIU | command wall (s) | checksums |\n"
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def with_ratios(med: Medians) -> Medians:
    """med, each row with x_criu: its resume, resident (CRIU / it) and drain (it / CRIU) against CRIU lazy-pages."""
    for (kind, size, _), m in med.items():
        base = med.get((kind, size, BASELINE), {})
        m["x_criu"] = {"resume": ratio(base.get("resume_s"), m["resume_s"]),
                       "resident": ratio(base.get("resident_s"), m["resident_s"]),
                       "drain": ratio(m["drain_gbps"], base.get("drain_gbps"))}
    return med


def _ratios(m: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """resume, resident and drain against CRIU lazy-pages; a censored baseline makes the last two lower bounds."""
    low = "> " if base.get("censored") and not m["censored"] else ""
    x = m["x_criu"]
    return [times(x["resume"]), times(x["resident"], low), times(x["drain"], low)]


def _checks(m: dict[str, Any]) -> str:
    text = f"{m['ok']}/{m['runs']} ok" + (f", {m['timed_out']} timed out" if m["timed_out"] else "")
    return text if m["ok"] + m["timed_out"] == m["runs"] else f"**{text}**"


def _row(kind: str, size: int, method: str, med: Medians) -> str:
    m, base = med[(kind, size, method)], med.get((kind, size, BASELINE), {})
    over, under = ("> ", "< ") if m["censored"] else ("", "")
    lat = "n/a" if m["lat_p50_us"] is None else f"{m['lat_p50_us']:.1f} / {m['lat_p99_us']:.1f}"
    cells = [f"{size} MiB", LABELS[method], fmt(m["resume_s"]), fmt(m["resident_s"], 3, over),
             fmt(m["drain_gbps"], 2, under), lat, fmt(m["daemon_cpu_s"], 3, over), *_ratios(m, base),
             fmt(m["wall_s"]), _checks(m)]
    return "| " + " | ".join(cells) + " |"


def kind_table(kind: str, sizes: list[int], med: Medians) -> str:
    rows = [_row(kind, s, meth, med) for s in sizes for meth in METHODS if (kind, s, meth) in med]
    return TABLE_HEAD + "\n" + "\n".join(rows)


def checkpoint_table(checkpoints: list[Record]) -> str:
    lines = ["| workload | size | lazy bytes | images | dump (s) | frozen (s, CRIU) | checkpoint |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for c in checkpoints:
        if c.get("error"):
            lines.append(f"| {c['kind']} | {c['size_mib']} MiB | | | | | **failed: {c['error']}** |")
            continue
        lines.append(f"| {c['kind']} | {c['size_mib']} MiB | {c['lazy_bytes'] / (1 << 20):.1f} MiB "
                     f"| {c['images_bytes'] / (1 << 20):.1f} MiB | {c['dump_s']:.3f} | {c['frozen_s']:.3f} | ok |")
    return "\n".join(lines)


def outcome(r: Record) -> str:
    if r.get("error") is not None:
        return f"**FAILED: {r['error']}**"
    if run_censored(r):
        return f"timed out: {r['note']}; memory not checked"
    return r["checksum"] if r["checksum"] == "ok" else f"**{r['checksum']}**"


CHECKPOINT_KEYS = ("size_mib", "kind", "error", "lazy_bytes", "images_bytes", "dump_s", "frozen_s")
RUN_KEYS = ("kind", "size_mib", "repeat", "order", "method", "error", "checksum", "timed_out", "note", "resident_min_s")


def run_rows(records: list[Record]) -> list[Record]:
    """What the report shows of each run: its keys (RUN_KEYS) and its figures (for a censored run, the bounds)."""
    rows = []
    for r in records:
        f = _figures(r)
        rows.append({**{k: r[k] for k in RUN_KEYS if k in r},
                     **{k: f.get(k) for k in ("resume_s", "resident_s", "drain_gbps")}})
    return rows


def runs_table(rows: list[Record]) -> str:
    lines = ["| workload | size | repeat | order | method | resume (s) | resident (s) | drain (GB/s) | outcome |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        over, under = ("> ", "< ") if run_censored(r) else ("", "")
        lines.append(f"| {r['kind']} | {r['size_mib']} MiB | {r['repeat']} | {r['order']} | {LABELS[r['method']]} "
                     f"| {fmt(r.get('resume_s'))} | {fmt(r.get('resident_s'), 3, over)} "
                     f"| {fmt(r.get('drain_gbps'), 2, under)} | {outcome(r)} |")
    return "\n".join(lines)


def fill_medians(fills: list[Record], kinds: list[str], sizes: list[int], med: Medians) -> list[Record]:
    """Per (kind, size): the median fill rates (GB/s) and each lazy method's drain as a share of the 1-thread
    UFFDIO_COPY rate (%)."""
    rows = []
    for kind in kinds:
        for size in sizes:
            got = [f for f in fills if (f["kind"], f["size_mib"]) == (kind, size) and not f.get("error")]
            if not got:
                continue
            row: Record = {"kind": kind, "size_mib": size,
                           **{k: statistics.median(f[k] for f in got) for k in ("uffd_1t", "uffd_2t", "memcpy_1t")}}
            for method in (OURS, BASELINE):
                drain = med.get((kind, size, method), {}).get("drain_gbps")
                row[f"{method}_pct"] = None if drain is None else 100 * drain / row["uffd_1t"]
            rows.append(row)
    return rows


def fill_table(fills: list[Record], med: Medians) -> str:
    """The machine's fresh-memory fill rates beside each lazy method's drain (the ceiling for any restore)."""
    rows = ["| workload | size | UFFDIO_COPY, 1 thread | UFFDIO_COPY, 2 threads | memcpy, 1 thread | lr-lazyd drain "
            "| of 1-thread UFFDIO_COPY | CRIU lazy-pages drain | of 1-thread UFFDIO_COPY |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in fills:
        kind, size = f["kind"], f["size_mib"]
        ours = med.get((kind, size, OURS), {}).get("drain_gbps")
        base = med.get((kind, size, BASELINE), {})
        under = "< " if base.get("censored") else ""
        rows.append(f"| {kind} | {size} MiB | {f['uffd_1t']:.2f} | {f['uffd_2t']:.2f} | {f['memcpy_1t']:.2f} "
                    f"| {fmt(ours, 2)} | {fmt(f[OURS + '_pct'], 0)} % | {fmt(base.get('drain_gbps'), 2, under)} | "
                    f"{fmt(f[BASELINE + '_pct'], 0, under)} % |")
    return "\n".join(rows)


# --- goals -----------------------------------------------------------------

def _verdict(ok: bool | None) -> str:
    return "not evaluated" if ok is None else ("**holds**" if ok else "**does not hold**")


def resume_flat(med: Medians, kinds: list[str]) -> dict[str, float | None]:
    """Per kind: lr-lazyd's resume at 4 GiB / at 256 MiB (goal a)."""
    return {kind: ratio(med.get((kind, 4096, OURS), {}).get("resume_s"), med.get((kind, 256, OURS), {}).get("resume_s"))
            for kind in kinds}


def goal_flat_resume(med: Medians, kind: str, r: float | None) -> tuple[bool | None, str]:
    small, big = med.get((kind, 256, OURS), {}), med.get((kind, 4096, OURS), {})
    if r is None:
        return None, f"needs lr-lazyd figures for the {kind} workload at 256 MiB and 4096 MiB"
    return r <= RESUME_FLAT_MAX, (f"{kind}: lr-lazyd resume {fmt(big['resume_s'])} s at 4 GiB / "
                                  f"{fmt(small['resume_s'])} s at 256 MiB = {r:.2f} (goal ≤ {RESUME_FLAT_MAX})")


def goal_drain(med: Medians, kind: str, size: int) -> tuple[bool | None, str]:
    ours, base = med.get((kind, size, OURS), {}), med.get((kind, size, BASELINE), {})
    gbps, r = ours.get("drain_gbps"), ours.get("x_criu", {}).get("drain")
    if gbps is None:
        return None, f"{kind} {size} MiB: no lr-lazyd drain figure"
    ok = gbps >= DRAIN_GBPS_MIN or (r is not None and r >= DRAIN_RATIO_MIN)
    over, under = ("> ", "< ") if base.get("censored") else ("", "")
    return ok, (f"{kind} {size} MiB: lr-lazyd {gbps:.2f} GB/s, CRIU lazy-pages {fmt(base.get('drain_gbps'), 2, under)} "
                f"GB/s, ratio {times(r, over)}")


def goals_section(med: Medians, flat: dict[str, float | None], kinds: list[str],
                  sizes: list[int]) -> tuple[str, list[bool | None]]:
    lines = ["## Goals", "",
             f"(a) Time to resume flat across sizes: lr-lazyd at 4 GiB / at 256 MiB ≤ {RESUME_FLAT_MAX} (idle workload).", ""]
    verdicts: list[bool | None] = []
    for kind in kinds:
        ok, text = goal_flat_resume(med, kind, flat.get(kind))
        tag = "" if kind == "idle" else " (for information)"
        lines.append(f"- {text}: {_verdict(ok)}{tag}")
        if kind == "idle":
            verdicts.append(ok)
    goal_b = (f"(b) Local drain ≥ {DRAIN_GBPS_MIN:g} GB/s or ≥ {DRAIN_RATIO_MIN}× CRIU's local lazy mode "
              "in the same run, per size.")
    lines += ["", goal_b, ""]
    for kind in kinds:
        for size in sizes:
            ok, text = goal_drain(med, kind, size)
            lines.append(f"- {text}: {_verdict(ok)}")
            verdicts.append(ok)
    return "\n".join(lines), verdicts


# --- document --------------------------------------------------------------

NOTES = """\
How the figures are taken (all times from the start of CRIU's restore of the same checkpoint):

- **resume**: until the restored tree runs. eager: `restore_s` from `lazyrestore restore --json` minus the
  tool's fixed {settle:.1f} s liveness wait, i.e. CRIU's restore with every page placed; CRIU lazy-pages: wall
  time of `criu restore --lazy-pages -d`; lr-lazyd: `resume_s` from `lazyrestore restore --lazy --json`.
- **resident**: until every page is resident. eager: same as resume; CRIU lazy-pages: until the
  `criu lazy-pages` daemon exits (it exits once every page is placed); lr-lazyd: `resume_s + resident_s`
  (`resident_s` counts from CRIU's "restore finished" message, slightly before the tree resumes, so this
  over-counts a little).
- **drain**: lazy bytes of the checkpoint / (resident − resume), in GB/s (10^9 bytes/s); faults included.
- **fault p50 / p99**: lr-lazyd's own fault service latency; CRIU's daemon does not report it (n/a).
- **daemon CPU**: CRIU lazy-pages: user+system time from `wait4()` on the daemon; lr-lazyd: its own
  `getrusage` in its final report. Eager has no daemon.
- **× CRIU**: against CRIU lazy-pages in the same run, from the medians: resume and resident = CRIU / method
  (> 1 is faster), drain = method / CRIU.
- **command wall**: eager and lr-lazyd: the whole `lazyrestore restore` command (checkpoint verification,
  daemon start, the liveness wait); CRIU lazy-pages: from starting its daemon to the daemon's exit.
- Logging: CRIU restores at -v{restore_level} (as lazyrestore's own), `criu lazy-pages` at its default -v2 (at
  -v4 it logs every page it copies), lr-lazyd at its default level.
- Every restore is checked: the restored tree reports its memory checksum, which must equal the one taken
  before the checkpoint, and the workload's log must show no `BAD` line; then it is killed.
- Workloads: `lr-workload --mib N` as init of its own pid namespace; "idle" only sleeps, "scanning" runs two
  threads that keep reading (and comparing) all of the main region. Images on tmpfs (/dev/shm).
- **time limit**: {limit:.0f} s from the start of a lazy restore until every page is resident
  (`--drain-timeout`). When CRIU's daemon runs out of it, its row shows bounds (resident and CPU ">",
  drain "<"), the ratios against it are lower bounds (">"), and that tree is killed without a memory check;
  lr-lazyd running out of it counts as a failure.
- First touch of fresh memory is slow and noisy in a VM: compare figures within one run, not across runs.
"""


def summarize(meta: dict[str, Any], records: list[Record], checkpoints: list[Record],
              fills: list[Record]) -> dict[str, Any]:
    """The suite's summary: what render needs, from a run's records, checkpoints and fill rates."""
    med = with_ratios(medians(records))
    return {"suite": "local", "date": meta["date"], "commit": meta["machine"].get("lazyrestore"), "meta": meta,
            "checkpoints": pick(checkpoints, CHECKPOINT_KEYS),
            "medians": [{"kind": k, "size_mib": s, "method": m, **v} for (k, s, m), v in sorted(med.items())],
            "fill_rates": fill_medians(fills, meta["kinds"], meta["sizes"], med),
            "resume_flat": resume_flat(med, meta["kinds"]), "runs": run_rows(records)}


def medians_of(summary: dict[str, Any]) -> Medians:
    """The summary's medians by (kind, size, method)."""
    return {(m["kind"], m["size_mib"], m["method"]): m for m in summary["medians"]}


def render(summary: dict[str, Any]) -> str:
    """The report (without the marked sections that follow it) from the summary alone."""
    meta, records, checkpoints, med = summary["meta"], summary["runs"], summary["checkpoints"], medians_of(summary)
    kinds, sizes = meta["kinds"], meta["sizes"]
    parts = ["# lazyrestore benchmarks", ""]
    parts += _alarms(records, checkpoints)
    parts += [f"Date: {meta['date']}  ", f"Command: `{meta['command']}` (repeats: {meta['repeat']}, median reported)", "",
              "Machine:", ""]
    parts += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    parts += ["", "Checkpoints (one per workload; every method restores the same one):", "",
              checkpoint_table(checkpoints), ""]
    for kind in kinds:
        parts += [f"## {kind.capitalize()} workload", "", kind_table(kind, sizes, med), ""]
    parts += ["## What this machine allows", "",
              "Any restore must write every page once into memory the process never had. `lr-fill-rate` measures "
              "how fast this VM does that, for the checkpoint's lazy size, before each repeat: UFFDIO_COPY "
              "of 1 MiB from a resident buffer into a region registered with userfaultfd, as a lazy-pages daemon "
              "does but with nothing to read or verify, with 1 and 2 threads; and memcpy into fresh memory (a page "
              "fault, a zeroed page, then the copy: eager restore's way). Figures in GB/s.", "",
              fill_table(summary["fill_rates"], med), ""]
    goals, _ = goals_section(med, summary["resume_flat"], kinds, sizes)
    notes = NOTES.format(settle=meta["settle_s"], restore_level=meta["criu_log_level"], limit=meta["drain_timeout_s"])
    parts += [goals, "", "## Method", "", notes, "## Every run", "", runs_table(records), ""]
    return "\n".join(parts)


def _alarms(records: list[Record], checkpoints: list[Record]) -> list[str]:
    mism = [r for r in records if r.get("error") is None and not run_censored(r) and r.get("checksum") != "ok"]
    slow = [r for r in records if run_censored(r)]
    failed = [r for r in records if r.get("error") is not None]
    bad_cp = [c for c in checkpoints if c.get("error")]
    out = []
    if mism:
        out.append(f"**CHECKSUM MISMATCH in {len(mism)} run(s): "
                   + "; ".join(f"{r['kind']} {r['size_mib']} MiB {r['method']} #{r['repeat']}: {r['checksum']}"
                               for r in mism) + "**")
    if failed:
        out.append(f"**{len(failed)} restore(s) FAILED: "
                   + "; ".join(f"{r['kind']} {r['size_mib']} MiB {r['method']} #{r['repeat']}" for r in failed) + "**")
    if slow:
        out.append(f"**CRIU lazy-pages did not make every page resident within the time limit in {len(slow)} run(s) "
                   "(" + "; ".join(f"{r['kind']} {r['size_mib']} MiB #{r['repeat']}: > {r['resident_min_s']:.0f} s"
                                  for r in slow)
                   + "): its figures there are bounds (>, <) and those trees were killed unchecked.**")
    if bad_cp:
        out.append(f"**{len(bad_cp)} checkpoint(s) FAILED (their sizes are missing below)**")
    if not (mism or failed or bad_cp):
        out.append(("Every other restore" if slow else "All restores") + " succeeded and every checked tree's "
                   "memory checksum matched the original.")
    return [line for alarm in out for line in (alarm, "")]
