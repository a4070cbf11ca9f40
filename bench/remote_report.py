"""The "Remote migration" section of BENCHMARKS.md: medians per (size, network, workload, method), ratios, goals."""

from __future__ import annotations

import statistics
from typing import Any

from .remote_methods import DISK_METHODS, LABELS, METHODS, SCANNERS
from .cells import fmt, ratio, times
from .local_report import outcome, run_censored, run_ok
from .summaries import pick

Record = dict[str, Any]
Key = tuple[int, str, str, str]  # (size_mib, network, workload, method)
Medians = dict[Key, dict[str, Any]]
Verdict = tuple[str, str, bool | None]  # (goal, method, verdict): the judged lines only

OURS, FIRST, VIA_DISK, CRIU, EAGER = "lr-live", "lr-live-first", "lr-remote", "criu-remote", "eager-copy"
LIVE = (OURS, FIRST)  # judged side by side in the goals
LOOPBACK = "loopback"
RESUME_RATIO_MAX = 1.2  # (1) resume ≤ 1.2× CRIU remote
FLAT_MAX = 1.5  # (2) resume at the largest size / at the smallest
DRAIN_SIZE = 1024  # (3) drain and fault p99 at 1 GiB
DRAIN_GBPS_MIN = {"idle": 3.0, "scanning": 2.0}
FAULT_P99_MAX_US = 1000.0
TOTAL_SIZE = 4096  # (4) every page resident ≤ 0.5× eager at 4 GiB
TOTAL_RATIO_MAX = 0.5
FIELDS = ("resume_s", "total_s", "drain_gbps", "lat_p50_us", "lat_p99_us", "lat_max_us", "faults", "daemon_cpu_s",
          "server_peak_kib")
BREAKDOWN = (  # column, keys (per method)
    ("dump", ("dump_s",)), ("index", ("index_s",)), ("copy", ("copy_s",)), ("page server start", ("serve_start_s",)),
    ("destination start", ("restore_start_s", "daemon_start_s")), ("fetch / verify", ("fetch_s", "verify_s")),
    ("CRIU restore", ("criu_resume_s", "criu_restore_s")), ("then until resident", ("resident_after_resume_s",)),
)


# --- numbers --------------------------------------------------------------------

def key(r: Record) -> Key:
    """A run's group; runs from before the workloads were all "scanning"."""
    return r["size_mib"], r["network"], r.get("workload", "scanning"), r["method"]


def medians(records: list[Record]) -> Medians:
    groups: dict[Key, list[Record]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return {k: _group(runs) for k, runs in groups.items()}


def _group(runs: list[Record]) -> dict[str, Any]:
    used = [r for r in runs if run_ok(r) or run_censored(r)]
    bounds = [r["total_s"] for r in runs if run_censored(r)]
    row: dict[str, Any] = {"runs": len(runs), "ok": sum(map(run_ok, runs)), "timed_out": len(bounds)}
    for f in FIELDS:
        row[f] = _median([r.get(f) for r in used])
    row["worst_p99_us"] = max((r["lat_p99_us"] for r in used if r.get("lat_p99_us") is not None), default=None)
    names = {k for r in used for k in r.get("breakdown", {})}
    row["breakdown"] = {k: _median([r.get("breakdown", {}).get(k) for r in used]) for k in sorted(names)}
    row["censored"] = bool(bounds) and row["total_s"] is not None and row["total_s"] >= min(bounds)
    return row


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _get(med: Medians, size: int, net: str, wl: str, method: str) -> dict[str, Any]:
    return med.get((size, net, wl, method), {})


def drain_vs_criu(med: Medians, size: int, net: str, wl: str, method: str = OURS) -> tuple[float | None, str]:
    """method's drain / CRIU remote's in the same run; "> " when CRIU's figure is only a bound."""
    ours, base = _get(med, size, net, wl, method), _get(med, size, net, wl, CRIU)
    return ratio(ours.get("drain_gbps"), base.get("drain_gbps")), ("> " if base.get("censored") else "")


def resume_vs_criu(med: Medians, size: int, net: str, wl: str, method: str = OURS) -> float | None:
    return ratio(_get(med, size, net, wl, method).get("resume_s"), _get(med, size, net, wl, CRIU).get("resume_s"))


def total_vs_eager(med: Medians, size: int, net: str, wl: str, method: str) -> float | None:
    return ratio(_get(med, size, net, wl, method).get("total_s"), _get(med, size, net, wl, EAGER).get("total_s"))


def ran(med: Medians, method: str) -> bool:
    return any(k[3] == method for k in med)


# --- tables ---------------------------------------------------------------------

TABLE_HEAD = ("| size | network | workload | method | resume from checkpoint start (s) | every page resident (s) "
              "| drain (GB/s) | drain × CRIU remote | total × eager | fault p50 / p99 (µs) | faults "
              "| source server peak RSS (MiB) | checksums |\n"
              "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _checks(m: dict[str, Any]) -> str:
    text = f"{m['ok']}/{m['runs']} ok" + (f", {m['timed_out']} timed out (unchecked)" if m["timed_out"] else "")
    return text if m["ok"] + m["timed_out"] == m["runs"] else f"**{text}**"


def _mib(kib: float | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f}"


def _row(k: Key, med: Medians, nets: dict[str, str]) -> str:
    size, net, wl, method = k
    m = med[k]
    over, under = ("> ", "< ") if m["censored"] else ("", "")
    lat = "n/a" if m["lat_p50_us"] is None else f"{m['lat_p50_us']:.1f} / {m['lat_p99_us']:.1f}"
    x_criu = times(*drain_vs_criu(med, size, net, wl, method)) if method in LIVE else "—"
    x_eager = "—" if method == EAGER else times(total_vs_eager(med, size, net, wl, method), over)
    cells = [f"{size} MiB", nets.get(net, net), wl, LABELS[method], fmt(m["resume_s"]), fmt(m["total_s"], 3, over),
             fmt(m["drain_gbps"], 3, under), x_criu, x_eager, lat, fmt(m["faults"], 0), _mib(m["server_peak_kib"]),
             _checks(m)]
    return "| " + " | ".join(cells) + " |"


def _keys(med: Medians, meta: dict[str, Any]) -> list[Key]:
    """The measured groups in table order: size, network, workload, method."""
    return [(s, n, w, m) for s in meta["sizes"] for n in meta["networks"] for w in meta["workloads"] for m in METHODS
            if (s, n, w, m) in med]


def main_table(med: Medians, meta: dict[str, Any]) -> str:
    rows = [_row(k, med, meta["networks"]) for k in _keys(med, meta)]
    return TABLE_HEAD + "\n" + "\n".join(rows)


def skipped_note(meta: dict[str, Any]) -> str:
    """Which disk methods were not run at which sizes (--disk-max), or ""."""
    big = [s for s in meta["sizes"] if s > meta["disk_max_mib"]]
    disk = [m for m in meta["methods"] if m in DISK_METHODS]
    if not big or not disk:
        return ""
    return (f"Not run at {', '.join(f'{s} MiB' for s in big)} (above `--disk-max` {meta['disk_max_mib']} MiB): "
            f"{', '.join(LABELS[m] for m in disk)}, which keep a full copy of the memory on tmpfs (see below).")


def breakdown_table(med: Medians, meta: dict[str, Any]) -> str:
    lines = ["| size | network | workload | method | " + " | ".join(c for c, _ in BREAKDOWN) + " |",
             "|---:|---|---|---|" + "---:|" * len(BREAKDOWN)]
    nets = meta["networks"]
    for s, n, w, meth in _keys(med, meta):
        b = med[(s, n, w, meth)]["breakdown"]
        cells = [next((fmt(b[k]) for k in keys if b.get(k) is not None), "—") for _, keys in BREAKDOWN]
        lines.append(f"| {s} MiB | {nets.get(n, n)} | {w} | {LABELS[meth]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(records: list[Record], nets: dict[str, str]) -> str:
    lines = ["| size | network | workload | repeat | order | method | resume (s) | resident (s) | drain (GB/s) "
             "| fault p99 (µs) | outcome |", "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in records:
        over, under = ("> ", "< ") if run_censored(r) else ("", "")
        lines.append(f"| {r['size_mib']} MiB | {nets.get(r['network'], r['network'])} | {key(r)[2]} | {r['repeat']} "
                     f"| {r['order']} | {LABELS[r['method']]} | {fmt(r.get('resume_s'))} "
                     f"| {fmt(r.get('total_s'), 3, over)} | {fmt(r.get('drain_gbps'), 3, under)} "
                     f"| {fmt(r.get('lat_p99_us'), 1)} | {outcome(r)} |")
    return "\n".join(lines)


# --- goals ----------------------------------------------------------------------

def _verdict(ok: bool | None) -> str:
    return "not evaluated" if ok is None else ("**PASS**" if ok else "**FAIL**")


def goal_resume(med: Medians, size: int, net: str, wl: str, method: str = OURS) -> tuple[bool | None, str]:
    """(1) method's time to resume ≤ RESUME_RATIO_MAX × CRIU remote's, same size, network and workload."""
    ours, base = _get(med, size, net, wl, method).get("resume_s"), _get(med, size, net, wl, CRIU).get("resume_s")
    r = resume_vs_criu(med, size, net, wl, method)
    if r is None:
        return None, f"{method} {fmt(ours)}, CRIU remote {fmt(base)}: needs both"
    return r <= RESUME_RATIO_MAX, (f"{method} {ours:.3f} s, CRIU remote {base:.3f} s, ratio {r:.2f}× "
                                   f"(≤ {RESUME_RATIO_MAX:g}×)")


def flat_ratio(med: Medians, sizes: list[int], wl: str, method: str) -> tuple[int, int, float | None]:
    """(smallest, largest) measured size on loopback and resume there / resume at the smallest."""
    got = sorted(s for s in sizes if _get(med, s, LOOPBACK, wl, method).get("resume_s") is not None)
    if len(got) < 2:
        return (got[0] if got else 0), (got[-1] if got else 0), None
    lo, hi = _get(med, got[0], LOOPBACK, wl, method), _get(med, got[-1], LOOPBACK, wl, method)
    return got[0], got[-1], ratio(hi["resume_s"], lo["resume_s"])


def goal_flat(med: Medians, sizes: list[int], wl: str, method: str = OURS) -> tuple[bool | None, str]:
    """(2) resume at the largest measured size / at the smallest ≤ FLAT_MAX (loopback)."""
    lo, hi, r = flat_ratio(med, sizes, wl, method)
    if r is None:
        return None, f"{method}: needs its resume at two sizes or more"
    a, b = _get(med, hi, LOOPBACK, wl, method)["resume_s"], _get(med, lo, LOOPBACK, wl, method)["resume_s"]
    return r <= FLAT_MAX, (f"{method} {a:.3f} s at {hi} MiB / {b:.3f} s at {lo} MiB = {r:.2f} "
                           f"(≤ {FLAT_MAX:g})")


def goal_drain(med: Medians, wl: str, method: str = OURS) -> tuple[bool | None, str]:
    """(3) drain at DRAIN_SIZE on loopback ≥ DRAIN_GBPS_MIN[wl]."""
    m, floor = _get(med, DRAIN_SIZE, LOOPBACK, wl, method), DRAIN_GBPS_MIN.get(wl)
    if m.get("drain_gbps") is None or floor is None:
        return None, f"{method}: no drain figure at {DRAIN_SIZE} MiB on loopback"
    r, low = drain_vs_criu(med, DRAIN_SIZE, LOOPBACK, wl, method)
    x_criu = "" if r is None else f", {times(r, low)} CRIU remote's"
    return m["drain_gbps"] >= floor, f"{method} drain {m['drain_gbps']:.2f} GB/s{x_criu} (≥ {floor:g} GB/s)"


def goal_p99(med: Medians, method: str = OURS, wl: str = "scanning") -> tuple[bool | None, str]:
    """(3) fault p99 ≤ FAULT_P99_MAX_US at DRAIN_SIZE on loopback (the scanning workload)."""
    m = _get(med, DRAIN_SIZE, LOOPBACK, wl, method)
    if m.get("lat_p99_us") is None:
        return None, f"{method}: no fault latency figure at {DRAIN_SIZE} MiB on loopback"
    return m["lat_p99_us"] <= FAULT_P99_MAX_US, (
        f"{method} fault p99 {m['lat_p99_us']:.1f} µs (worst run {m['worst_p99_us']:.1f} µs), "
        f"{fmt(m['faults'], 0)} faults (≤ {FAULT_P99_MAX_US / 1000:g} ms)")


def goal_total(med: Medians, net: str, wl: str, method: str = OURS) -> tuple[bool | None, str]:
    """(4) every page resident ≤ TOTAL_RATIO_MAX × eager's total at TOTAL_SIZE."""
    ours, eager = _get(med, TOTAL_SIZE, net, wl, method), _get(med, TOTAL_SIZE, net, wl, EAGER)
    r = total_vs_eager(med, TOTAL_SIZE, net, wl, method)
    if r is None:
        return None, (f"{method} {fmt(ours.get('total_s'))}, eager {fmt(eager.get('total_s'))}: needs both totals "
                      f"at {TOTAL_SIZE} MiB")
    return r <= TOTAL_RATIO_MAX, (f"{method} {ours['total_s']:.3f} s, eager {eager['total_s']:.3f} s, ratio "
                                  f"{r:.2f}× (≤ {TOTAL_RATIO_MAX:g}×)")


def _ours(med: Medians) -> list[str]:
    """lr-live always; lr-live-first beside it when it ran."""
    return [OURS] + ([FIRST] if ran(med, FIRST) else [])


def _line(ok: bool | None, text: str, judged: bool = True) -> str:
    return f"- {text}: {_verdict(ok)}" + ("" if judged else " (for information)")


def goals_resume(med: Medians, meta: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    lines, verdicts = [f"(1) Time to resume ≤ {RESUME_RATIO_MAX:g}× CRIU's remote lazy mode, same size, network "
                       "and workload, at every size (loopback; the test hosts for information):", ""], []
    for net in meta["networks"]:
        for wl in meta["workloads"]:
            for size in meta["sizes"]:
                for method in _ours(med):
                    if not _get(med, size, net, wl, method) and (net != LOOPBACK or not _get(med, size, net, wl, CRIU)):
                        continue  # off loopback (for information), only what ran
                    ok, text = goal_resume(med, size, net, wl, method)
                    lines.append(_line(ok, f"{size} MiB, {meta['networks'][net]}, {wl}: {text}", net == LOOPBACK))
                    verdicts += [("1", method, ok)] if net == LOOPBACK else []
    return lines, verdicts


def goals_flat(med: Medians, meta: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    lines, verdicts = [f"(2) Flat: resume at the largest measured size / at the smallest ≤ {FLAT_MAX:g} "
                       "(loopback, per workload):", ""], []
    for wl in meta["workloads"]:
        for method in _ours(med):
            ok, text = goal_flat(med, meta["sizes"], wl, method)
            lines.append(_line(ok, f"{wl}: {text}"))
            verdicts.append(("2", method, ok))
        lo, hi, r = flat_ratio(med, meta["sizes"], wl, CRIU)
        if r is not None:
            lines.append(f"- {wl}: CRIU remote's own ratio {hi} MiB / {lo} MiB = {r:.2f} (for information)")
    return lines, verdicts


def goals_drain(med: Medians, meta: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    floors = " and ".join(f"≥ {DRAIN_GBPS_MIN[w]:g} GB/s {w}" for w in DRAIN_GBPS_MIN)
    lines, verdicts = [f"(3) Drain at {DRAIN_SIZE} MiB on loopback {floors}; fault p99 ≤ "
                       f"{FAULT_P99_MAX_US / 1000:g} ms (scanning):", ""], []
    for wl in meta["workloads"]:
        for method in _ours(med):
            checks = [goal_drain(med, wl, method)] + ([goal_p99(med, method, wl)] if wl == "scanning" else [])
            for ok, text in checks:
                lines.append(_line(ok, f"{wl}: {text}"))
                verdicts.append(("3", method, ok))
    return lines, verdicts


def goals_total(med: Medians, meta: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    lines, verdicts = [f"(4) Total migration time (every page resident) ≤ {TOTAL_RATIO_MAX:g}× eager (checkpoint "
                       f"+ copy + restore) at {TOTAL_SIZE} MiB, per workload:", ""], []
    nets = [n for n in meta["networks"] if n == LOOPBACK or any(k[:2] == (TOTAL_SIZE, n) for k in med)]
    for net in nets:
        for wl in meta["workloads"]:
            for method in _ours(med):
                ok, text = goal_total(med, net, wl, method)
                lines.append(_line(ok, f"{meta['networks'][net]}, {wl}: {text}", net == LOOPBACK))
                verdicts += [("4", method, ok)] if net == LOOPBACK else []
    return lines, verdicts


def goals(med: Medians, meta: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    """The goal lines and the verdicts of the judged ones (loopback; the test hosts are for information)."""
    lines = [f"Judged for {LABELS[OURS]} (`{OURS}`)" + (f" and, beside it, {LABELS[FIRST]} (`{FIRST}`)"
                                                        if ran(med, FIRST) else "") + ".", ""]
    verdicts: list[Verdict] = []
    for part in (goals_resume, goals_flat, goals_drain, goals_total):
        got, v = part(med, meta)
        lines += got + [""]
        verdicts += v
    return lines[:-1], verdicts


# --- section --------------------------------------------------------------------

NOTES = """\
How the figures are taken. t0 is the start of the checkpoint on the source, on the bench's clock: the
`started` event of `lazyrestore migrate` / `checkpoint` (read as it is printed, after the CLI's own start-up),
or starting `criu dump` for CRIU. Each run migrates a fresh sample workload ({mib_note}), checkpointed onto
tmpfs (/dev/shm); sizes run in turn, and networks, workloads and methods rotate their order between
repeats.

- **workload**: idle = the sample workload with no scanner thread (the restored tree touches little of its
  memory: the drain streams nearly all of it); scanning = {scanners} scanner threads that keep reading all of
  its memory, so the restored tree faults while the rest streams in (fault p50 / p99 come from these faults).
- **{live}** (`lr-live`): `lazyrestore migrate --pid PID --images IMAGES --listen ADDR:0` on the source (live:
  CRIU dumps the metadata and holds the tree stopped, `lr-pageserver --live` serves its memory until one
  destination has every page, then the source ends); when it prints its port, `lazyrestore restore --from
  ADDR:PORT --secret-file IMAGES/lazyrestore/secret --workdir NEW` on the destination. resume = its `listening`
  event (just before CRIU's restore) + `resume_s` (its `resumed` event comes {settle:.1f} s later, after the
  tool's liveness wait; the raw records keep that time too); every page resident = resume + `resident_s`; drain =
  (drain_bytes + fault_bytes) / resident_s; fault p50 / p99 and fault count from its summary. Breakdown: dump
  and index (`checkpointed`), page server start (to `listening`), destination start (the restore command's
  start-up and lr-lazyd's), fetch (metadata and eager pages, `verify_s`), CRIU restore (`resume_s`).
- **{first}** (`lr-live-first`): the same two commands, the destination first: a 32-byte secret file (0600)
  shared by both, `lazyrestore restore --from ADDR:PORT --secret-file SHARED` started on a fixed port free on
  the source's address (it waits for the source), then `lazyrestore migrate --secret-file SHARED --listen
  ADDR:PORT`, as an orchestrator starting both ends at once would. Its time still counts from migrate's
  `started` event, so the destination's start-up overlaps the checkpoint and is no part of it; its fetch is
  from the source's `listening` to the destination's.
- **{disk}** (`lr-remote`): `lazyrestore migrate --via-disk`: a full checkpoint of every page onto tmpfs
  (the source tree ends), then `serve --once` from it; the destination as for `lr-live`.
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
- **the dump and fs.pipe-max-size**: `criu dump --lazy-pages` vmsplices every lazy page into its page pipes
  while the tree is frozen (criu/mem.c, drain_pages), in pipes as large as fs.pipe-max-size lets it make them.
  CRIU's remote mode runs with the 4 MiB it needs, lazyrestore with the machine's value: the same `criu dump
  --lazy-pages --ps-socket` of the 4 GiB workload took 0.24 s at 4 MiB and 0.42 s at 1 MiB here (measured side
  by side outside this run). That is most of the gap between `lr-live-first` and CRIU at 4 and 8 GiB, and it
  grows with memory for every method: no method here resumes in a time flat in memory.
- **drain at 4 and 8 GiB**: first touch of fresh memory is slow in this VM (eager's CRIU restore places 4 GiB
  in about 10 s): the destination's pages are new memory, so the drain falls with size for every method.
- **disk max**: `lr-remote` and eager keep a full copy of the memory on tmpfs beside the source and the
  destination, so they run only up to `--disk-max` {disk_max} MiB ({skipped}): this machine has {memory}; an
  8 GiB source and its destination fit, a third 8 GiB copy on tmpfs beside them does not.
- The copies (eager's images, CRIU's metadata dir) are tmpfs-to-tmpfs on this machine, not over the
  test hosts' link: a best case for eager migration; lazyrestore's and CRIU's pages do cross the network.
- **network**: loopback = everything in the root network namespace, pages over 127.0.0.1 (every size). Test
  hosts A → B = two network namespaces joined by a veth pair (`lazyrestore.testhosts`), at {hosts_sizes}
  only: the workload, its checkpoint / dump and the page server run in {host_a} ({addr_a}), the restore, its
  daemon and the restored tree in {host_b} ({addr_b}). {netem}
- **source server peak RSS**: lr-pageserver's peak resident memory (VmHWM, from the exit line of its log),
  the memory the source spends serving; "—" for the methods without it.
- **drain × CRIU remote**: `lr-live`'s (and `lr-live-first`'s) drain / CRIU remote's, medians of the same run,
  network and workload; "> " when CRIU's daemon ran out of the {limit:.0f} s time limit (`--drain-timeout`,
  counted from its restore's start): its resident time is then a lower bound (">"), its drain an upper bound
  ("<") and that tree is killed without a memory check. **total × eager**: every page resident / eager's total,
  same run, network and workload (n/a where eager did not run).
- Every other restored tree reports its memory checksum, which must equal the one taken before the
  migration, and its log must show no `BAD` line; then it is killed.
- Medians over {repeat} repeat(s); a 2-vCPU VM is noisy: compare figures within one run.
"""


def _name(r: Record) -> str:
    return f"{r['size_mib']} MiB {r['network']} {key(r)[2]} {r['method']} #{r['repeat']}"


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


def _netem(meta: dict[str, Any]) -> str:
    hosts = meta.get("hosts") or {}
    if hosts and not hosts.get("netem"):
        return ("**netem is not available on this kernel** (CONFIG_NET_SCH_NETEM unset): the 1 ms delay could not "
                "be set, so the test hosts ran without any delay or rate limit.")
    return f"netem: {hosts.get('note')}." if hosts else "The test hosts were not part of this run."


def notes(meta: dict[str, Any]) -> str:
    big = [s for s in meta["sizes"] if s > meta["disk_max_mib"]]
    skipped = f"not run at {', '.join(f'{s} MiB' for s in big)} here" if big else "no size above it here"
    mib_note = "/".join(f"{s} MiB" for s in meta["sizes"])
    return NOTES.format(
        mib_note=mib_note, scanners=SCANNERS, live=LABELS[OURS], first=LABELS[FIRST], disk=LABELS[VIA_DISK],
        criu=LABELS[CRIU], eager=LABELS[EAGER], pipe_max=meta["criu_pipe_max"], pipe_old=meta["pipe_max_size"],
        level=meta["criu_log_level"], settle=meta["settle_s"], disk_max=meta["disk_max_mib"], skipped=skipped,
        memory=meta["machine"]["memory"], hosts_sizes="/".join(f"{s} MiB" for s in meta["hosts_sizes"]),
        host_a=meta["host_a"], addr_a=meta["addr_a"], host_b=meta["host_b"], addr_b=meta["addr_b"],
        netem=_netem(meta), limit=meta["drain_timeout_s"], repeat=meta["repeat"])


def render(meta: dict[str, Any], records: list[Record], med: Medians) -> str:
    goal_lines, _ = goals(med, meta)
    m = meta["machine"]
    skipped = skipped_note(meta)
    parts = ["## Remote migration", ""] + _alarms(records) + [
        f"Date: {meta['date']}; lazyrestore HEAD {m['lazyrestore']}; machine: {m['cpu']}, {m['nproc']} vCPU, "
        f"{m['memory']}, kernel {m['kernel']}, CRIU {m['criu']}  ",
        f"Command: `{meta['command']}`; {meta['repeat']} repeat(s) of every size × network × workload × method "
        f"({len(records)} migrations), median reported.", "",
        f"fs.pipe-max-size was {meta['pipe_max_size']} and was raised to {meta['criu_pipe_max']} for CRIU's remote "
        f"runs only, then put back (CRIU's page server needs it; see below). {_netem(meta)}", "",
        main_table(med, meta), "", *([skipped, ""] if skipped else []),
        "Where the time to resume goes (medians, s):", "", breakdown_table(med, meta), "",
        "### Goals", "", *goal_lines, "", "### Method", "", notes(meta),
        "### Every run", "", runs_table(records, meta["networks"]), ""]
    return "\n".join(parts)


# --- summary ------------------------------------------------------------------

RUN_KEYS = ("size_mib", "network", "workload", "method", "repeat", "order", "error", "checksum", "timed_out", "note",
            "resume_s", "total_s", "drain_gbps", "lat_p99_us")


def medians_json(med: Medians) -> list[Record]:
    """The medians as a JSON-friendly list (tuple keys spelled out)."""
    return [{"size_mib": s, "network": n, "workload": w, "method": m, **v} for (s, n, w, m), v in sorted(med.items())]


def medians_from_json(rows: list[Record]) -> Medians:
    """medians_json's list back by (size, network, workload, method)."""
    names = ("size_mib", "network", "workload", "method")
    return {(m["size_mib"], m["network"], m["workload"], m["method"]): {k: v for k, v in m.items() if k not in names}
            for m in rows}


def summarize(meta: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """The suite's summary (bench/results/remote.json): meta, medians and each run's row."""
    return {"suite": "remote", "date": meta["date"], "commit": meta["machine"].get("lazyrestore"), "meta": meta,
            "medians": medians_json(medians(records)), "runs": pick(records, RUN_KEYS)}


def render_summary(summary: dict[str, Any]) -> str:
    return render(summary["meta"], summary["runs"], medians_from_json(summary["medians"]))
