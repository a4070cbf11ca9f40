"""`make compress` (and the end of `make bench`): total migration time over slow links, --compress off / on / auto.

For each memory fill (text: compressible; random: incompressible) a workload of --mib MiB is started on test host
A and checkpointed once; `lazyrestore serve` serves that checkpoint. Then, for each link rate (a tbf qdisc on both
veth ends; 0: unlimited), --repeat rounds of `restore --from … --prefetch off` on host B with --compress off, on
and auto, in rotating order. For each: the time from the restore command's start to every page resident, the
page-frame bytes on the link, whether page data travelled compressed, the link auto measured and the page
server's CPU time; every restored tree's memory checksum must equal the original's. Writes the "Slow links"
section of BENCHMARKS.md (between its markers) bench/results/compress.json (its summary) and build/bench/compress.jsonl (every record). Exits 1 if any run failed or
restored wrong memory, 130 on Ctrl-C or SIGTERM, after killing every process it started and removing its dir
in /dev/shm and its test hosts (their qdiscs go with them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import served
from . import compress_report
from .markers import write_section
from .machine import command_line
from .options import positive
from .summaries import write_raw, write_summary
from .served import (STEP_TIMEOUT_S, RunFailed, Served, deliveries, read_restore,
                       start_restore, wait_delivered)
from .compress_report import MODES, RANDOM, TEXT
from .netprocs import HOSTS, JsonProc, Network, shielded

from lazyrestore import sample, testhosts

SCRATCH_PREFIX = "lazyrestore-compress-"
SLOW_LINK_MARGIN = 3.0     # a restore may take this many times its memory's time on a limited link
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    served.say("compress", text)


def rates(text: str) -> list[float]:
    """"0,1000,100": link rates in Mbit/s, 0 for unlimited."""
    try:
        got = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        got = []
    if not got or any(r < 0 or r > testhosts.MAX_RATE_MBIT for r in got):
        raise argparse.ArgumentTypeError(f"expected Mbit/s figures from 0 (unlimited) to {testhosts.MAX_RATE_MBIT:g}, "
                                         f"comma-separated, got {text!r}")
    return got


def fills(text: str) -> list[str]:
    got = [x.strip() for x in text.split(",") if x.strip()]
    if not got or any(f not in sample.FILLS for f in got):
        raise argparse.ArgumentTypeError(f"expected fills among {', '.join(sample.FILLS)}, got {text!r}")
    return got


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench compress", description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=positive, default=256, help="each workload's memory in MiB (256)")
    p.add_argument("--repeat", type=positive, default=2, help="rounds of off, on and auto per link and fill (2)")
    p.add_argument("--rates", type=rates, default=[0.0, 1000.0, 100.0],
                   help="link rates in Mbit/s, 0 for unlimited (0,1000,100)")
    p.add_argument("--fills", type=fills, default=[TEXT, RANDOM], help="workload fills (text,random)")
    return served.parse_options(p, argv, section="slow-links", suite="compress",
                                   quick_help="smoke run: 64 MiB, 1 round", quick={"mib": 64, "repeat": 1})


def step_timeout(mib: int, rate_mbit: float) -> float:
    """A restore's limit: the usual step, plus SLOW_LINK_MARGIN times its memory's time on a limited link."""
    return STEP_TIMEOUT_S + (SLOW_LINK_MARGIN * mib * (1 << 20) * 8 / (rate_mbit * 1e6) if rate_mbit else 0.0)


# --- the source: workload, checkpoint, page server ---------------------------------------------------

@dataclass(kw_only=True)
class Source(Served):
    """One fill's checkpoint, what its memory must be, and the page server serving it."""

    fill: str


def start_workload(net: Network, scratch: Path, mib: int, fill: str) -> Source:
    w = served.start_workload(net, scratch, mib, fill=fill)
    return Source(net, scratch, w.pid, w.log, w.roles, served.memory_checksums(w), fill=fill)


def server_cpu_s(src: Source) -> float | None:
    """lr-pageserver's user + system CPU time so far, None when it cannot be read."""
    try:
        fields = Path(f"/proc/{src.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


# --- one restore ---------------------------------------------------------------------------------------

def figures(rst: JsonProc, code: int | None) -> dict[str, Any]:
    pid, summary = served.restore_result(rst, code)
    s, fetched = summary[1], rst.first("fetched")
    placed = sum(s.get(k) or 0 for k in ("fault_bytes", "drain_bytes", "prefetch_bytes"))
    return {"pid": pid, "total_s": summary[0] - rst.launched, "fetch_s": fetched[1].get("seconds") if fetched else None,
            "resume_s": s.get("resume_s"), "resident_s": s.get("resident_s"), "compress": s.get("compress"),
            "link_bps": s.get("link_bps"), "zstd_frames": s.get("zstd_frames"), "wire_bytes": s.get("wire_bytes"),
            "placed_bytes": placed, "faults": s.get("faults"), "daemon_cpu_s": s.get("daemon_cpu_s"),
            "summary": served.scalars(s)}


def restore_run(src: Source, mode: str, work: Path, timeout: float, rec: dict[str, Any]) -> int | None:
    delivered, cpu0 = deliveries(src), server_cpu_s(src)
    rst = start_restore(src, served.restore_from(src, work, "--prefetch", "off", "--compress", mode), work)
    code = read_restore(src, rst, timeout)
    rec.update(figures(rst, code))
    if not wait_delivered(src, delivered + 1):
        raise RunFailed("the page server reported no delivery for this restore", rec["pid"])
    cpu1 = server_cpu_s(src)
    rec["server_cpu_s"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return rec["pid"]


def measure(src: Source, rate: float, mode: str, order: int, timeout: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"fill": src.fill, "rate_mbit": rate, "mode": mode, "order": order, "error": None,
                           "memory": None}
    work = src.scratch / f"restore-{order}-{mode}"
    return served.run_checked(src, work, rec, lambda: restore_run(src, mode, work, timeout, rec))


def rotation(repeat: int) -> list[list[str]]:
    """The modes of each round: off, on, auto; then on, auto, off; then auto, off, on; ..."""
    return [[MODES[(i + k) % len(MODES)] for k in range(len(MODES))] for i in range(repeat)]


def describe(rec: dict[str, Any]) -> str:
    head = f"#{rec['order']} {rec['fill']:<6} {compress_report.rate_label(rec['rate_mbit']):>11} {rec['mode']:<4}"
    if rec["error"]:
        return f"{head} FAILED: {rec['error']}"
    placed, wire, bps = rec["placed_bytes"], rec.get("wire_bytes") or 0, rec.get("link_bps")
    return (f"{head} total {rec['total_s']:.2f} s (resumed after {rec['resume_s']:.2f} s), {wire / (1 << 20):.1f} MiB "
            f"on the link for {placed / (1 << 20):.1f} MiB placed, compression {'on' if rec['compress'] else 'off'} "
            f"({rec.get('zstd_frames') or 0} frames compressed)"
            f"{f', link measured {bps / 1e6:.1f} MB/s' if bps else ''}, server CPU {rec['server_cpu_s'] or 0:.2f} s; "
            f"memory {rec['memory']}")


# --- main ------------------------------------------------------------------------------------------------

def setup_network(meta: dict[str, Any]) -> Network:
    """The test hosts without netem (tbf limits the link per rate): A serves, B restores."""
    served.claim_hosts(meta)
    h = testhosts.up()
    meta["hosts"] = {"a": h.a, "b": h.b, "note": "no netem: tbf on both veth ends per rate, no delay"}
    meta.update(network_label="test hosts A → B, tbf on both veth ends (no netem, no delay)",
                src_label=f"test host A ({h.a}, {h.addr_a})", dst_label=f"test host B ({h.b}, {h.addr_b})")
    return Network(HOSTS, meta["network_label"], h.addr_a, h.a, h.b)


def prepare(net: Network, args: argparse.Namespace, fill: str, scratch: Path, meta: dict[str, Any]) -> Source:
    dir_ = scratch / fill
    dir_.mkdir()
    log(f"{args.mib} MiB workload filled with {fill} on {meta['src_label']} ...")
    src = start_workload(net, dir_, args.mib, fill)
    meta["checkpoints"][fill] = served.checkpoint_and_serve(src)
    log(f"checkpoint {meta['checkpoints'][fill]['checkpoint_id']} ({fill}) served on {src.address}")
    return src


def link(rate: float) -> contextlib.AbstractContextManager[None]:
    return testhosts.rate_limit(rate) if rate else contextlib.nullcontext()


def run_fill(src: Source, args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    for rate in args.rates:
        with link(rate):
            log(f"link {compress_report.rate_label(rate)}")
            for modes in rotation(args.repeat):
                for mode in modes:
                    rec = measure(src, rate, mode, len(records), step_timeout(args.mib, rate))
                    records.append(rec)
                    log(describe(rec))


def run_all(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]], scratch: Path) -> None:
    net = setup_network(meta)
    for fill in args.fills:
        src = prepare(net, args, fill, scratch, meta)
        try:
            run_fill(src, args, records)
        finally:
            with shielded():
                served.stop_server(src)
                shutil.rmtree(src.scratch, ignore_errors=True)


def write_outputs(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    summary = compress_report.summarize(meta, records)
    write_summary(args.summary, summary)
    write_raw(args.json_out, meta, {"run": records})
    write_section(args.out, compress_report.SECTION, compress_report.render_summary(summary))
    for line in summary["goals"]:
        log(line)
    log(f"wrote the slow-links section of {args.out}, {args.summary} and {args.json_out}")


def new_meta(args: argparse.Namespace, argv: list[str], criu_path: str) -> dict[str, Any]:
    return {"date": served.utc_now(), "mib": args.mib, "repeat": args.repeat, "rates_mbit": args.rates,
            "fills": args.fills, "command": command_line("compress", argv), "checkpoints": {},
            "machine": served.machine(criu_path), "hosts": None}


# What main runs: options, meta, the runs and the outputs (served.main does the rest).
BENCH = served.Bench("compress", "CRIU, network namespaces and qdiscs", SCRATCH_PREFIX,
                        parse_args, new_meta, run_all, write_outputs)


def main(argv: list[str]) -> int:
    """`python -m bench compress`: its exit code (served.main)."""
    return served.main(BENCH, argv)
