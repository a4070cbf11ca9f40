"""The "Slow links" section of BENCHMARKS.md: remote restores with --compress off, on and auto over rate-limited links.

One table per memory fill (text: compressible; random: incompressible). Rows: link rate × --compress mode.
Columns: median total migration time (the restore command's start to every page resident), its ratio against
--compress off on the same link, bytes on the link, the compression ratio, whether auto chose compression and the
link it measured, the page server's CPU time. Goals: on each limited link, compression cuts the total migration
time of compressible memory, with --compress on and with the default auto.
"""

from __future__ import annotations

from typing import Any

from .summaries import pick
from .cells import (Record, dated, failed_alarm, fmt, markdown_table, median, outcome, ratio, run_ok, table_row,
                          times, verdict)

Key = tuple[str, float, str]  # (fill, rate in Mbit/s with 0 for unlimited, --compress mode)

OFF, ON, AUTO = "off", "on", "auto"
MODES = (OFF, ON, AUTO)
TEXT, RANDOM = "text", "random"
FILL_LABELS = {TEXT: "Compressible memory (`--fill text`)", RANDOM: "Incompressible memory (`--fill random`)",
               "zeros": "A quarter of the pages all zero (`--fill zeros`)"}
# A cut smaller than this is within what two runs of the same thing differ by on this 2-vCPU VM.
CUT_MIN = 1.10
MIB = 1 << 20
SECTION = "compress"  # its name between BENCHMARKS.md's markers (markers.py)
FIELDS = ("total_s", "fetch_s", "resume_s", "resident_s", "wire_bytes", "placed_bytes", "zstd_frames", "link_bps",
          "server_cpu_s", "daemon_cpu_s")


def compression_unused(records: list[Record]) -> list[Record]:
    """Runs of compressible memory that succeeded with compression on, yet with no page frame compressed."""
    return [r for r in records if r["fill"] == TEXT and run_ok(r) and r.get("compress") and not r.get("zstd_frames")]


def keys(records: list[Record]) -> list[Key]:
    """Every (fill, rate, mode) in the records: fills and rates in the order they first ran, modes off, on, auto."""
    fills = list(dict.fromkeys(r["fill"] for r in records))
    rates = list(dict.fromkeys(r["rate_mbit"] for r in records))
    present = {(r["fill"], r["rate_mbit"], r["mode"]) for r in records}
    return [(f, rate, m) for f in fills for rate in rates for m in MODES if (f, rate, m) in present]


def medians(records: list[Record]) -> dict[Key, Record]:
    """Per (fill, rate, mode): runs, runs ok, runs that compressed, and the medians of the runs that succeeded."""
    out: dict[Key, Record] = {}
    for key in keys(records):
        runs = [r for r in records if (r["fill"], r["rate_mbit"], r["mode"]) == key]
        ok = [r for r in runs if run_ok(r)]
        row: Record = {"runs": len(runs), "ok": len(ok), "compressed": sum(bool(r.get("compress")) for r in ok)}
        row |= {f: median(r.get(f) for r in ok) for f in FIELDS}
        row["ratio"] = ratio(row["placed_bytes"], row["wire_bytes"])
        out[key] = row
    return out


def speedup(med: dict[Key, Record], fill: str, rate: float, mode: str) -> float | None:
    """Median total migration time with --compress off over that with mode, on the same link and fill."""
    off, other = med.get((fill, rate, OFF)), med.get((fill, rate, mode))
    return ratio(off and off["total_s"], other and other["total_s"])


def rate_label(rate: float) -> str:
    if not rate:
        return "unlimited"
    return f"{rate / 1000:g} Gbit/s" if rate >= 1000 else f"{rate:g} Mbit/s"


def chose(m: Record) -> str:
    """Whether page data travelled compressed: how many of the runs that succeeded did."""
    if not m["ok"]:
        return "n/a"
    if m["compressed"] in (0, m["ok"]):
        return "yes" if m["compressed"] else "no"
    return f"{m['compressed']}/{m['ok']}"


def measured(m: Record, mode: str) -> str:
    """The link auto measured (MB/s); the other modes do not measure it."""
    if mode != AUTO:
        return "—"
    bps = m.get("link_bps")
    return "n/a" if not bps else f"{bps / 1e6:.1f}"


TABLE_HEAD = ("| link (tbf) | `--compress` | total migration (s) | off / this | resumed after (s) | on the link (MiB) "
              "| placed / on the link | compression on | frames compressed | link measured by auto (MB/s) "
              "| page server CPU (s) | runs ok |\n"
              "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")


def _row(med: dict[Key, Record], key: Key) -> str:
    fill, rate, mode = key
    m = med[key]
    cells = [rate_label(rate), f"`{mode}`", fmt(m["total_s"], 2), "—" if mode == OFF else times(speedup(med, *key)),
             fmt(m["resume_s"], 2), fmt(m["wire_bytes"], 1, scale=1 / MIB), times(m["ratio"]), chose(m),
             fmt(m["zstd_frames"], 0), measured(m, mode), fmt(m["server_cpu_s"], 2), f"{m['ok']}/{m['runs']}"]
    return table_row(cells)


def table(med: dict[Key, Record], fill: str) -> str:
    return markdown_table(TABLE_HEAD, (_row(med, k) for k in med if k[0] == fill))


def goals(med: dict[Key, Record]) -> list[str]:
    """Per limited link: compression cuts the total migration time of compressible memory by CUT_MIN or more,
    with --compress on and with auto (the default: a cut only it can make is no cut for most users)."""
    rates = sorted({k[1] for k in med if k[0] == TEXT and k[1]}, reverse=True)
    lines = []
    for rate in rates:
        on, auto = speedup(med, TEXT, rate, ON), speedup(med, TEXT, rate, AUTO)
        ok = None if on is None or auto is None else on >= CUT_MIN and auto >= CUT_MIN
        off = med.get((TEXT, rate, OFF), {}).get("total_s")
        lines.append(f"- {rate_label(rate)}, compressible memory: total migration {fmt(off, 2)} s with `off`; off / on "
                     f"{times(on)}, off / auto {times(auto)} (goal: both ≥ {CUT_MIN:.2f}×): {verdict(ok)}")
    return lines or ["- no limited link with compressible memory ran: not evaluated"]


def costs(med: dict[Key, Record]) -> list[str]:
    """What compression costs where it cannot pay: incompressible memory, every link (no goal)."""
    rates = list(dict.fromkeys(k[1] for k in med if k[0] == RANDOM))
    return [f"- {rate_label(rate)}, incompressible memory: off / on {times(speedup(med, RANDOM, rate, ON))}, off / auto "
            f"{times(speedup(med, RANDOM, rate, AUTO))} (below 1×: compressing cost time)" for rate in rates]


RUNS_HEAD = ("| order | fill | link | `--compress` | total (s) | fetch (s) | resumed after (s) | then resident (s) "
             "| on the link (MiB) | placed (MiB) | frames compressed | compression on | link measured (MB/s) "
             "| server / lr-lazyd CPU (s) | outcome |\n"
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")


def _run_row(r: Record) -> str:
    bps = r.get("link_bps")
    cells = [str(r["order"]), r["fill"], rate_label(r["rate_mbit"]), f"`{r['mode']}`", fmt(r.get("total_s"), 2),
             fmt(r.get("fetch_s"), 2), fmt(r.get("resume_s"), 2), fmt(r.get("resident_s"), 2),
             fmt(r.get("wire_bytes"), 1, scale=1 / MIB), fmt(r.get("placed_bytes"), 1, scale=1 / MIB),
             fmt(r.get("zstd_frames"), 0),
             "n/a" if r.get("compress") is None else ("yes" if r["compress"] else "no"),
             f"{bps / 1e6:.1f}" if bps else "—",
             f"{fmt(r.get('server_cpu_s'), 2)} / {fmt(r.get('daemon_cpu_s'), 2)}", outcome(r)]
    return table_row(cells)


def runs_table(records: list[Record]) -> str:
    return markdown_table(RUNS_HEAD, (_run_row(r) for r in records))


NOTES = """\
Per fill, one workload of {mib} MiB (`lr-workload --fill text`: each page 8 random words, then those words plus
small steps, which zstd packs well; `--fill random`: random words, which it cannot) starts in {src},
reports its memory checksum and is checkpointed once onto tmpfs; `lazyrestore serve` serves that checkpoint from
{src}. For each link, {repeat} round(s) of `lazyrestore restore --from SRC:PORT --secret-file … --workdir NEW
--prefetch off --compress off|on|auto --json` in {dst}, the three modes in rotating order (off, on, auto; then on,
auto, off; …). `--prefetch off`: nothing is fetched ahead, the tree (idle) faults on little, and the bulk stream
carries nearly every page, so the link and the compression are what is measured.

- **link**: a token-bucket filter (tbf) as the root qdisc of both veth ends (`testhosts.rate_limit`: burst 10 ms
  of traffic or 64 KiB, latency 50 ms). This kernel has no netem: no delay is added, so the round trip stays that
  of a veth pair (tens of µs) and a slow link here is narrow but not long. "unlimited": no qdisc, the veth pair
  as fast as the 2 vCPUs move it.
- **total migration**: from starting the restore command to its `summary` event (every page placed and checked
  against the index's checksums, which cover the uncompressed bytes); the checkpoint is not counted (it is the
  same whatever `--compress` says). It includes fetching the checkpoint's metadata, CRIU's restore (resumed
  after) and the drain. **on the link**: page-frame bytes as they crossed it (`wire_bytes`); **placed / on the
  link**: the bytes placed by faults and the drain over that. **page server CPU**: utime + stime of
  `lr-pageserver` during the run (it compresses, on one core); lr-lazyd's (it inflates) is in Every run.
- **`--compress`**: `off` sends page data as it is (frames holding an all-zero block still travel compressed);
  `on` asks for every frame compressed (zstd level 1), and the server sends a frame compressed only when that
  makes it smaller, so random memory crosses as it is; `auto` (the default) measures the link on the first
  16 MiB of the bulk stream (here: nothing is fetched ahead) as page-frame bytes over their time, and below
  250 MiB/s (≈ 2.1 Gbit/s) turns compression on for the rest of the stream with a TUNE frame. "compression on"
  is the restore's `compress` (asked for, or chosen by auto); "frames compressed" its `zstd_frames` (page frames
  that came zstd-compressed); "link measured" its `link_bps` (0, shown "—", when it did not measure).
- Every restored tree then reports its memory checksum, which must equal the one taken before the checkpoint,
  and is killed. Medians over the runs that succeeded; a 2-vCPU VM is noisy: compare within one run.
"""


def render(meta: dict[str, Any], records: list[Record], med: dict[Key, Record] | None = None) -> str:
    """The section from the run's meta, its records (at least RUN_KEYS) and its medians (from records if None)."""
    med = medians(records) if med is None else med
    alarm = failed_alarm(records)
    unused = compression_unused(records)
    if unused:
        alarm += [f"**{len(unused)} run(s) of compressible memory had compression on (`compress`: true) yet no page "
                  f"frame came compressed (`zstd_frames` 0): runs {', '.join(str(r['order']) for r in unused)}.**", ""]
    fills = list(dict.fromkeys(k[0] for k in med))
    tables = [part for f in fills for part in (f"### {FILL_LABELS.get(f, f)}", "", table(med, f), "")]
    return "\n".join(["## Slow links: compression", "", *alarm, dated(meta),
                      f"Command: `{meta['command']}`; network: {meta['network_label']}; {meta['mib']} MiB per "
                      f"workload.", "", *tables,
                      "Goal: on a slow link, compression cuts total migration time for compressible memory.", "",
                      *goals(med), "", "Where it cannot pay (no goal):", "", *costs(med), "", "### Method", "",
                      NOTES.format(mib=meta["mib"], src=meta["src_label"], dst=meta["dst_label"],
                                   repeat=meta["repeat"]),
                      "### Every run", "", runs_table(records), ""])


def medians_json(med: dict[Key, Record]) -> list[Record]:
    """The medians as a JSON-friendly list (tuple keys spelled out)."""
    return [{"fill": f, "rate_mbit": rate, "mode": mode, **row, "off_over_this": speedup(med, f, rate, mode)}
            for (f, rate, mode), row in med.items()]



def medians_from_json(rows: list[Record]) -> dict[Key, Record]:
    """medians_json's list back by (fill, rate, mode)."""
    derived = ("fill", "rate_mbit", "mode", "off_over_this")
    return {(m["fill"], m["rate_mbit"], m["mode"]): {k: v for k, v in m.items() if k not in derived} for m in rows}


# --- summary -----------------------------------------------------------------------------------------------

RUN_KEYS = ("fill", "rate_mbit", "mode", "order", "error", "memory", "compress", "total_s", "fetch_s", "resume_s",
            "resident_s", "wire_bytes", "placed_bytes", "zstd_frames", "link_bps", "server_cpu_s", "daemon_cpu_s")


def summarize(meta: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """The suite's summary (bench/results/compress.json): meta, medians, goals, costs and each run's row."""
    med = medians(records)
    return {"suite": "compress", "date": meta["date"], "commit": meta["machine"].get("lazyrestore"), "meta": meta,
            "medians": medians_json(med), "goals": goals(med), "costs": costs(med), "runs": pick(records, RUN_KEYS)}


def render_summary(summary: dict[str, Any]) -> str:
    return render(summary["meta"], summary["runs"], medians_from_json(summary["medians"]))
