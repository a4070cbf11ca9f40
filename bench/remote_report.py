"""The "Remote migration" section of BENCHMARKS.md: medians per (size, network, method), ratios, goals."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from remote_methods import LABELS, METHODS, SCANNERS
from bench_report import fmt, fmt_ratio, outcome, ratio, run_censored, run_failed, run_ok

Record = dict[str, Any]
Key = tuple[int, str, str]  # (size_mib, network, method)
Medians = dict[Key, dict[str, Any]]

OURS, CRIU, EAGER = "lr-remote", "criu-remote", "eager-copy"
DRAIN_GBPS_MIN = 2.0
DRAIN_RATIO_MIN = 10.0
FAULT_P99_MAX_US = 1000.0
TOTAL_RATIO_MAX = 1.1
FIELDS = ("resume_s", "total_s", "drain_gbps", "lat_p50_us", "lat_p99_us", "lat_max_us", "faults", "daemon_cpu_s")
BREAKDOWN = (  # column, keys (per method)
    ("dump", ("dump_s",)), ("index", ("index_s",)), ("copy", ("copy_s",)), ("page server start", ("serve_start_s",)),
    ("destination start", ("restore_start_s", "daemon_start_s")), ("fetch / verify", ("fetch_s", "verify_s")),
    ("CRIU restore", ("criu_resume_s", "criu_restore_s")), ("then until resident", ("resident_after_resume_s",)),
)


# --- machine ------------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def git_commit(repo: Path) -> str:
    """HEAD's commit read from .git (without running git), short; "unknown" when it cannot be read."""
    head = _read(repo / ".git" / "HEAD")
    if not head.startswith("ref: "):
        return head[:7] or "unknown"
    ref = head.removeprefix("ref: ")
    found = _read(repo / ".git" / ref)
    if not found:
        packed = [ln.split() for ln in _read(repo / ".git" / "packed-refs").splitlines() if ln.endswith(" " + ref)]
        found = packed[0][0] if packed else ""
    return found[:7] or "unknown"


def _cpu() -> str:
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine(criu_path: str, repo: Path) -> dict[str, str]:
    mem_kb = next((ln.split()[1] for ln in _read(Path("/proc/meminfo")).splitlines() if ln.startswith("MemTotal")), "")
    try:
        out = subprocess.run([criu_path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = "unknown"
    return {"kernel": platform.release(), "nproc": str(len(os.sched_getaffinity(0))),
            "memory": f"{int(mem_kb) / (1 << 20):.1f} GiB" if mem_kb.isdigit() else "unknown", "cpu": _cpu(),
            "criu": f"{out.strip().replace(chr(10), ', ').removeprefix('Version: ')} ({criu_path})",
            "python": platform.python_version(), "lazyrestore": git_commit(repo)}


# --- numbers --------------------------------------------------------------------

def medians(records: list[Record]) -> Medians:
    groups: dict[Key, list[Record]] = {}
    for r in records:
        groups.setdefault((r["size_mib"], r["network"], r["method"]), []).append(r)
    out: Medians = {}
    for key, runs in groups.items():
        used = [r for r in runs if run_ok(r) or run_censored(r)]
        bounds = [r["total_s"] for r in runs if run_censored(r)]
        row: dict[str, Any] = {"runs": len(runs), "ok": sum(map(run_ok, runs)), "timed_out": len(bounds)}
        for f in FIELDS:
            row[f] = _median([r.get(f) for r in used])
        row["worst_p99_us"] = max((r["lat_p99_us"] for r in used if r.get("lat_p99_us") is not None), default=None)
        names = {k for r in used for k in r.get("breakdown", {})}
        row["breakdown"] = {k: _median([r.get("breakdown", {}).get(k) for r in used]) for k in sorted(names)}
        row["censored"] = bool(bounds) and row["total_s"] is not None and row["total_s"] >= min(bounds)
        out[key] = row
    return out


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def drain_vs_criu(med: Medians, size: int, net: str) -> tuple[float | None, str]:
    """lazyrestore's drain / CRIU remote's in the same run; "> " when CRIU's figure is only a bound."""
    ours, base = med.get((size, net, OURS), {}), med.get((size, net, CRIU), {})
    return ratio(ours.get("drain_gbps"), base.get("drain_gbps")), ("> " if base.get("censored") else "")


def total_vs_eager(med: Medians, size: int, net: str, method: str) -> float | None:
    return ratio(med.get((size, net, method), {}).get("total_s"), med.get((size, net, EAGER), {}).get("total_s"))


# --- tables ---------------------------------------------------------------------

TABLE_HEAD = ("| size | network | method | resume from checkpoint start (s) | every page resident (s) | drain (GB/s) "
              "| drain × CRIU remote | total × eager | fault p50 / p99 (µs) | faults | checksums |\n"
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")


def _checks(m: dict[str, Any]) -> str:
    text = f"{m['ok']}/{m['runs']} ok" + (f", {m['timed_out']} timed out (unchecked)" if m["timed_out"] else "")
    return text if m["ok"] + m["timed_out"] == m["runs"] else f"**{text}**"


def _row(size: int, net: str, method: str, med: Medians, nets: dict[str, str]) -> str:
    m = med[(size, net, method)]
    over, under = ("> ", "< ") if m["censored"] else ("", "")
    lat = "n/a" if m["lat_p50_us"] is None else f"{m['lat_p50_us']:.1f} / {m['lat_p99_us']:.1f}"
    x_criu, low = drain_vs_criu(med, size, net) if method == OURS else (None, "")
    x_eager = total_vs_eager(med, size, net, method) if method != EAGER else None
    cells = [f"{size} MiB", nets.get(net, net), LABELS[method], fmt(m["resume_s"]), fmt(m["total_s"], 3, over),
             fmt(m["drain_gbps"], 3, under), "—" if method != OURS else fmt_ratio(x_criu, low),
             "—" if method == EAGER else fmt_ratio(x_eager, over), lat, fmt(m["faults"], 0), _checks(m)]
    return "| " + " | ".join(cells) + " |"


def main_table(med: Medians, sizes: list[int], nets: dict[str, str]) -> str:
    rows = [_row(s, n, meth, med, nets) for s in sizes for n in nets for meth in METHODS if (s, n, meth) in med]
    return TABLE_HEAD + "\n" + "\n".join(rows)


def breakdown_table(med: Medians, sizes: list[int], nets: dict[str, str]) -> str:
    lines = ["| size | network | method | " + " | ".join(c for c, _ in BREAKDOWN) + " |",
             "|---:|---|---|" + "---:|" * len(BREAKDOWN)]
    for s in sizes:
        for n in nets:
            for meth in METHODS:
                b = med.get((s, n, meth), {}).get("breakdown")
                if b is None:
                    continue
                cells = [next((fmt(b[k]) for k in keys if b.get(k) is not None), "—") for _, keys in BREAKDOWN]
                lines.append(f"| {s} MiB | {nets.get(n, n)} | {LABELS[meth]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(records: list[Record], nets: dict[str, str]) -> str:
    lines = ["| size | network | repeat | order | method | resume (s) | resident (s) | drain (GB/s) "
             "| fault p99 (µs) | outcome |", "|---:|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in records:
        over, under = ("> ", "< ") if run_censored(r) else ("", "")
        lines.append(f"| {r['size_mib']} MiB | {nets.get(r['network'], r['network'])} | {r['repeat']} | {r['order']} "
                     f"| {LABELS[r['method']]} | {fmt(r.get('resume_s'))} | {fmt(r.get('total_s'), 3, over)} "
                     f"| {fmt(r.get('drain_gbps'), 3, under)} | {fmt(r.get('lat_p99_us'), 1)} | {outcome(r)} |")
    return "\n".join(lines)


# --- goals ----------------------------------------------------------------------

def _verdict(ok: bool | None) -> str:
    return "not evaluated" if ok is None else ("**PASS**" if ok else "**FAIL**")


def goal_drain(med: Medians, size: int, net: str, nets: dict[str, str]) -> tuple[bool | None, str]:
    ours, base = med.get((size, net, OURS), {}), med.get((size, net, CRIU), {})
    gbps = ours.get("drain_gbps")
    r, low = drain_vs_criu(med, size, net)
    if gbps is None or r is None:
        return None, f"{size} MiB, {nets[net]}: needs lazyrestore and CRIU remote drain figures"
    under = "< " if base.get("censored") else ""
    fast, ahead = gbps >= DRAIN_GBPS_MIN, r >= DRAIN_RATIO_MIN
    text = (f"{size} MiB, {nets[net]}: lazyrestore {gbps:.2f} GB/s (≥ {DRAIN_GBPS_MIN:g}: {_yes(fast)}), CRIU remote "
            f"{fmt(base.get('drain_gbps'), 3, under)} GB/s, ratio {fmt_ratio(r, low)} "
            f"(≥ {DRAIN_RATIO_MIN:g}×: {_yes(ahead)})")
    return fast and ahead, text


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def goal_p99(med: Medians, size: int, net: str, nets: dict[str, str]) -> tuple[bool | None, str]:
    m = med.get((size, net, OURS), {})
    if m.get("lat_p99_us") is None:
        return None, f"{size} MiB, {nets[net]}: no fault latency figure"
    text = (f"{size} MiB, {nets[net]}: median p99 {m['lat_p99_us']:.1f} µs (worst run {m['worst_p99_us']:.1f} µs), "
            f"median {fmt(m['faults'], 0)} faults during the drain")
    return m["lat_p99_us"] <= FAULT_P99_MAX_US, text


def goal_total(med: Medians, size: int, net: str, nets: dict[str, str]) -> tuple[bool | None, str]:
    ours, eager = med.get((size, net, OURS), {}), med.get((size, net, EAGER), {})
    r = total_vs_eager(med, size, net, OURS)
    if r is None:
        return None, f"{size} MiB, {nets[net]}: needs lazyrestore and eager totals"
    return r <= TOTAL_RATIO_MAX, (f"{size} MiB, {nets[net]}: lazyrestore {ours['total_s']:.3f} s, eager "
                                  f"{eager['total_s']:.3f} s, ratio {r:.2f} (goal ≤ {TOTAL_RATIO_MAX})")


def goals(med: Medians, sizes: list[int], nets: dict[str, str]) -> tuple[list[str], list[bool | None]]:
    """The goal lines and their verdicts (the drain goal is judged on loopback; other networks for information)."""
    lines = [f"(1) Drain ≥ {DRAIN_GBPS_MIN:g} GB/s on loopback and ≥ {DRAIN_RATIO_MIN:g}× CRIU's remote lazy mode "
             "in the same run:", ""]
    verdicts: list[bool | None] = []
    for net in nets:
        for size in sizes:
            ok, text = goal_drain(med, size, net, nets)
            tag = "" if net == "loopback" else " (for information)"
            lines.append(f"- {text}: {_verdict(ok)}{tag}")
            verdicts += [ok] if net == "loopback" else []
    for title, fn in ((f"(2) Fault p99 ≤ {FAULT_P99_MAX_US / 1000:g} ms during the drain:", goal_p99),
                      (f"(3) Total lazy migration time ≤ {TOTAL_RATIO_MAX}× eager migration (checkpoint + copy + "
                       "restore):", goal_total)):
        lines += ["", title, ""]
        for net in nets:
            for size in sizes:
                ok, text = fn(med, size, net, nets)
                lines.append(f"- {text}: {_verdict(ok)}")
                verdicts.append(ok)
    return lines, verdicts


# --- section --------------------------------------------------------------------

NOTES = """\
How the figures are taken. t0 is the start of the checkpoint on the source, on the bench's clock: the
`started` event of `lazyrestore migrate` / `checkpoint` (read as it is printed, after the CLI's own start-up),
or starting `criu dump` for CRIU. Each run migrates a fresh {mib_note} workload with {scanners} scanner threads
(they keep reading all of its memory, so the restored tree faults while the rest streams in), checkpointed
onto tmpfs (/dev/shm); methods and networks rotate their order between repeats.

- **{ours}**: `lazyrestore migrate --listen ADDR:0` on the source (checkpoint, then lr-pageserver
  until one destination has every page); when it prints its port, `lazyrestore restore --from ADDR:PORT
  --secret-file IMAGES/lazyrestore/secret --workdir NEW` on the destination. resume = its `listening` event
  (just before CRIU's restore) + `resume_s` (its `resumed` event comes {settle:.1f} s later, after the tool's
  liveness wait; results.json keeps that time too); every page resident = resume + `resident_s`; drain =
  (drain_bytes + fault_bytes) / resident_s; fault p50 / p99 and fault count from its summary. Breakdown:
  dump and index (`checkpointed`), page server start (to `listening`), destination start (the restore
  command's start-up and lr-lazyd's), fetch (metadata and eager pages, `verify_s`), CRIU restore (`resume_s`).
- **{criu}**: exactly CRIU-NOTES.md's recipe: `criu dump -t PID -D SRC --lazy-pages --address ADDR --port P
  --status-fd` (its page server keeps the pages), wait for the status byte, copy SRC to DST (timed: part of its
  resume), `criu lazy-pages --page-server --address ADDR --port P -D DST`, `criu restore -D DST --lazy-pages -d`.
  resume = `criu restore` returning; resident = the `criu lazy-pages` daemon exiting; drain = lazy bytes of
  the dump (pagemap entries flagged lazy) / (resident − resume). CRIU reports no fault latency.
  **fs.pipe-max-size**: CRIU's page server needs a 3.3 MB pipe, so the bench raises
  `/proc/sys/fs/pipe-max-size` to {pipe_max} for each CRIU remote run only and puts the old value
  ({pipe_old}) back right after it (also on Ctrl-C / SIGTERM); lazyrestore runs with the old value.
  Dump and restore at -v{level}, `criu lazy-pages` at -v2.
- **{eager}**: `lazyrestore checkpoint`, `shutil.copytree` of the images dir to the destination's dir
  (timed), `lazyrestore restore --images DST` (verifies every page's checksum, then CRIU places every page
  before the tree runs). resume = total = `verified` event + `restore_s` − the tool's fixed {settle:.1f} s
  liveness wait.
- The copies (eager's images, CRIU's metadata dir) are tmpfs-to-tmpfs on this machine, not over the
  test hosts' link: a best case for eager migration; lazyrestore's and CRIU's pages do cross the network.
- **network**: loopback = everything in the root network namespace, pages over 127.0.0.1. Test hosts
  A → B = two network namespaces joined by a veth pair (`lazyrestore.testhosts`): the workload, its
  checkpoint / dump and the page server run in {host_a} ({addr_a}), the restore, its daemon and the
  restored tree in {host_b} ({addr_b}). {netem}
- **× CRIU remote**: lazyrestore's drain / CRIU remote's, medians of the same run and network; "> " when
  CRIU's daemon ran out of the {limit:.0f} s time limit (`--drain-timeout`, counted from its restore's start):
  its resident time is then a lower bound (">"), its drain an upper bound ("<") and that tree is killed
  without a memory check. **total × eager**: every page resident / eager's total, same run and network.
- Every other restored tree reports its memory checksum, which must equal the one taken before the
  migration, and its log must show no `BAD` line; then it is killed.
- Medians over {repeat} repeat(s); a 2-vCPU VM is noisy: compare figures within one run.
"""


def _name(r: Record) -> str:
    return f"{r['size_mib']} MiB {r['network']} {r['method']} #{r['repeat']}"


def _alarms(records: list[Record]) -> list[str]:
    mism = [r for r in records if r.get("error") is None and not run_censored(r) and r.get("checksum") != "ok"]
    failed = [r for r in records if r.get("error") is not None]
    slow = [r for r in records if run_censored(r)]
    out = []
    if mism:
        out.append(f"**CHECKSUM MISMATCH in {len(mism)} run(s): " + "; ".join(f"{_name(r)}: {r['checksum']}"
                                                                         for r in mism) + "**")
    if failed:
        out.append(f"**{len(failed)} migration(s) FAILED: " + "; ".join(map(_name, failed)) + "**")
    if slow:
        out.append(f"CRIU lazy-pages did not make every page resident within the time limit in {len(slow)} run(s) "
                   f"({'; '.join(_name(r) for r in slow)}): its figures there are bounds and those trees were "
                   "killed unchecked.")
    if not (mism or failed):
        out.append(("Every other migration" if slow else "Every migration") + " succeeded and every checked "
                   "tree's memory checksum matched the original.")
    return [line for alarm in out for line in (alarm, "")]


def render(meta: dict[str, Any], records: list[Record], med: Medians) -> str:
    sizes, nets = meta["sizes"], meta["networks"]
    goal_lines, _ = goals(med, sizes, nets)
    hosts = meta.get("hosts") or {}
    netem = (f"**netem is not available on this kernel** (CONFIG_NET_SCH_NETEM unset): the 1 ms delay could not "
             f"be set, so the test hosts ran without any delay or rate limit." if hosts and not hosts.get("netem")
             else (f"netem: {hosts.get('note')}." if hosts else "The test hosts were not part of this run."))
    m = meta["machine"]
    parts = ["## Remote migration", ""] + _alarms(records) + [
        f"Date: {meta['date']}; lazyrestore HEAD {m['lazyrestore']}; machine: {m['cpu']}, {m['nproc']} vCPU, "
        f"{m['memory']}, kernel {m['kernel']}, CRIU {m['criu']}  ",
        f"Command: `{meta['command']}`; {meta['repeat']} repeat(s) of every size × network × method "
        f"({len(records)} migrations), median reported.", "",
        f"fs.pipe-max-size was {meta['pipe_max_size']} and was raised to {meta['criu_pipe_max']} for CRIU's remote "
        f"runs only, then put back (CRIU's page server needs it; see below). {netem}", "",
        main_table(med, sizes, nets), "", "Where the time to resume goes (medians, s):", "",
        breakdown_table(med, sizes, nets), "", "### Goals", "", *goal_lines, "", "### Method", "",
        NOTES.format(mib_note="/".join(f"{s} MiB" for s in sizes), scanners=SCANNERS, ours=LABELS[OURS],
                     criu=LABELS[CRIU], eager=LABELS[EAGER], pipe_max=meta["criu_pipe_max"],
                     pipe_old=meta["pipe_max_size"], level=meta["criu_log_level"], settle=meta["settle_s"],
                     host_a=meta["host_a"], addr_a=meta["addr_a"], host_b=meta["host_b"], addr_b=meta["addr_b"],
                     netem=netem,
                     limit=meta["drain_timeout_s"], repeat=meta["repeat"]),
        "### Every run", "", runs_table(records, nets), ""]
    return "\n".join(parts)
