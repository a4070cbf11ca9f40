"""`make bench`: eager restore, CRIU's local lazy mode and lr-lazyd, side by side in one run.

For each size and workload kind: start the sample workload, take its checksum,
checkpoint it once onto tmpfs, then restore that same checkpoint with each
method in turn (the order rotates between repeats), check the restored memory
against the checksum, kill the tree. Writes BENCHMARKS.md (its top), bench/results/local.json (the
summary it is rendered from) and build/bench/local.jsonl (every record);
exits 1 if any restore failed or any checksum differed, 130 on Ctrl-C (or SIGTERM),
after killing every process it started and removing its dirs in /dev/shm.
CRIU's daemon running out of --drain-timeout is reported as a bound, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import local_report
from .markers import keep_remote
from .local_methods import METHODS, BaselineTimedOut, MethodFailed, Target, lazyrestore_cmd
from .machine import command_line, machine
from .memory import REPORT_TIMEOUT_S, check_restored
from .options import csv_ints, positive
from .summaries import raw_path, summary_path, write_raw, write_summary
from .procs import DRAIN_TIMEOUT_S, TIMEOUT_S, become_subreaper, kill_and_wait, kill_descendants, run_json

from lazyrestore import criu, sample
from lazyrestore.paths import native_binary
from lazyrestore.errors import LazyRestoreError
from lazyrestore.restore import SETTLE_S

REPO = Path(__file__).resolve().parent.parent
KINDS = {"idle": 0, "scanning": 2}  # kind -> scanner threads
DEFAULT_SIZES = (256, 1024, 4096)
SHM = Path("/dev/shm")


@dataclass
class Checkpointed:
    """One checkpoint restored by every method: where it is and what it must restore to."""

    size_mib: int
    kind: str
    images: Path
    scratch: Path
    log: Path
    log_size: int
    roles: tuple[str, ...]
    checksums: dict[str, str]
    lazy_bytes: int


def log(text: str) -> None:
    print(f"bench: {text}", flush=True)


# --- options ---------------------------------------------------------------

def csv_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"expected kinds from {','.join(KINDS)}, got {text!r}")
    return kinds


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench local", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=csv_ints, default=list(DEFAULT_SIZES), help="workload sizes in MiB (256,1024,4096)")
    p.add_argument("--kinds", type=csv_kinds, default=list(KINDS), help="workload kinds (idle,scanning)")
    p.add_argument("--repeat", type=positive, default=1, help="measurements per size, kind and method (median reported)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="report file (BENCHMARKS.md)")
    p.add_argument("--summary", type=Path, default=summary_path("local"),
                   help="the summary the report is rendered from (bench/results/local.json)")
    p.add_argument("--json-out", type=Path, default=raw_path("local"),
                   help="raw records, JSON Lines (build/bench/local.jsonl)")
    p.add_argument("--drain-timeout", type=positive, default=int(DRAIN_TIMEOUT_S),
                   help="seconds from a lazy restore's start until every page must be resident (600); "
                        "past it CRIU's daemon gets a bound (resident > limit), lr-lazyd a failure")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MiB idle only")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.kinds = [256], ["idle"]
    return args


# --- one workload: start, checksum, checkpoint ----------------------------

def prepare(size: int, kind: str, scratch: Path) -> tuple[Checkpointed, dict[str, Any]]:
    log(f"[{size} MiB {kind}] starting the workload")
    w = sample.start(scratch, size, scanners=KINDS[kind], timeout=TIMEOUT_S)
    try:
        before = w.request_report(timeout=REPORT_TIMEOUT_S)
        images = scratch / "images"
        r = run_json(lazyrestore_cmd("checkpoint", "--pid", str(w.pid), "--images", str(images), "--json"))
        s = r.last("summary")
        if r.code != 0 or s is None:
            raise LazyRestoreError(f"checkpoint failed: exit {r.code}: {r.error_text()}")
    finally:
        kill_and_wait(w.pid)  # after a dump CRIU has already killed the tree; this waits until it is gone
    cp = Checkpointed(size, kind, images, scratch, w.log, w.log.stat().st_size, w.roles,
                      {role: rep.checksum for role, rep in before.items()}, s["lazy_pages"] * s["page_size"])
    info = {"lazy_bytes": cp.lazy_bytes, "images_bytes": s["images_bytes"], "dump_s": s["dump_s"],
            "frozen_s": s["frozen_s"], "checksums": cp.checksums}
    log(f"[{size} MiB {kind}] checkpointed: {cp.lazy_bytes / (1 << 20):.0f} MiB lazy, dump {s['dump_s']:.2f} s")
    return cp, info


# --- one restore -----------------------------------------------------------

def measure(cp: Checkpointed, method: str, repeat: int, order: int, drain_timeout: float) -> dict[str, Any]:
    """Restore cp once with method, verify, kill; a record for build/bench/local.jsonl (error set on failure)."""
    os.truncate(cp.log, cp.log_size)
    rec: dict[str, Any] = {"size_mib": cp.size_mib, "kind": cp.kind, "method": method, "repeat": repeat,
                           "order": order, "lazy_bytes": cp.lazy_bytes, "error": None, "checksum": None}
    pid = None
    try:
        m = METHODS[method](Target(cp.images, cp.scratch, f"r{repeat}", drain_timeout))
        pid = m.pid
        rec.update(pid=m.pid, resume_s=m.resume_s, resident_s=m.resident_s, wall_s=m.wall_s,
                   drain_gbps=drain_gbps(cp, m.resume_s, m.resident_s, method), lat_p50_us=m.lat_p50_us,
                   lat_p99_us=m.lat_p99_us, lat_max_us=m.lat_max_us, daemon_cpu_s=m.daemon_cpu_s,
                   faults=m.faults, extra=m.extra)
        rec["checksum"], rec["checksums_after"] = check_restored(m.pid, cp.log, cp.log_size, cp.roles, cp.checksums)
    except BaselineTimedOut as exc:
        pid = exc.pid
        rec.update(timed_out=True, resume_s=exc.resume_s, resident_min_s=exc.limit_s, daemon_cpu_min_s=exc.cpu_s,
                   checksum="not checked (timed out)", note=str(exc))
    except MethodFailed as exc:
        pid, rec["error"] = exc.pid, str(exc)
    except (LazyRestoreError, subprocess.TimeoutExpired, TimeoutError, OSError, KeyError, ValueError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if pid is not None and not kill_and_wait(pid):
            rec["error"] = rec["error"] or f"restored root {pid} did not go away after SIGKILL"
        leftovers = kill_descendants()
    if leftovers:
        rec["leftover_pids_killed"] = leftovers
    return rec


FILL_MODES = {"uffd_1t": ("1", "--uffd"), "uffd_2t": ("2", "--uffd"), "memcpy_1t": ("1",)}


def measure_fill(cp: Checkpointed, repeat: int) -> dict[str, Any]:
    """How fast this machine fills fresh memory of the checkpoint's lazy size (lr-fill-rate), in GB/s:
    UFFDIO_COPY with 1 and 2 threads (the most any lazy daemon could do), and memcpy after a page fault."""
    mib = max(1, cp.lazy_bytes >> 20)
    rec: dict[str, Any] = {"size_mib": cp.size_mib, "kind": cp.kind, "repeat": repeat, "mib": mib, "error": None}
    for key, (threads, *mode) in FILL_MODES.items():
        try:
            out = subprocess.run([str(native_binary("lr-fill-rate")), "--mib", str(mib), "--threads", threads, *mode],
                                 capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
            rec[key] = json.loads(out.stdout)["gbps"]
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            rec["error"] = f"lr-fill-rate {key}: {type(exc).__name__}: {exc}"
    return rec


def drain_gbps(cp: Checkpointed, resume: float, resident: float, method: str) -> float | None:
    if method == "eager" or resident <= resume:
        return None
    return cp.lazy_bytes / (resident - resume) / 1e9


def describe(rec: dict[str, Any]) -> str:
    head = f"[{rec['size_mib']} MiB {rec['kind']}] #{rec['repeat']} {rec['method']:<9}"
    if rec["error"]:
        return f"{head} FAILED: {rec['error']}"
    if rec.get("timed_out"):
        return f"{head} resume {rec['resume_s']:.3f} s, TIMED OUT: {rec['note']}; memory not checked"
    f = local_report.fmt
    lat = "" if rec["lat_p50_us"] is None else f", fault p50/p99 {rec['lat_p50_us']:.1f}/{rec['lat_p99_us']:.1f} us"
    cpu = "" if rec["daemon_cpu_s"] is None else f", daemon cpu {rec['daemon_cpu_s']:.3f} s"
    return (f"{head} resume {f(rec['resume_s'])} s, resident {f(rec['resident_s'])} s, "
            f"drain {f(rec['drain_gbps'], 2)} GB/s{lat}{cpu}, wall {f(rec['wall_s'])} s; memory {rec['checksum']}")


# --- one (size, kind) ------------------------------------------------------

def run_set(size: int, kind: str, args: argparse.Namespace, records: list[dict[str, Any]],
            checkpoints: list[dict[str, Any]], fills: list[dict[str, Any]]) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="lazyrestore-bench-", dir=SHM))
    try:
        try:
            cp, info = prepare(size, kind, scratch)
        except (LazyRestoreError, subprocess.TimeoutExpired, OSError, KeyError) as exc:
            log(f"[{size} MiB {kind}] checkpoint FAILED: {exc}")
            checkpoints.append({"size_mib": size, "kind": kind, "error": f"{type(exc).__name__}: {exc}"})
            return
        checkpoints.append({"size_mib": size, "kind": kind, "error": None, **info})
        methods = list(METHODS)
        for rep in range(args.repeat):
            fills.append(measure_fill(cp, rep))
            f = fills[-1]
            log(f"[{size} MiB {kind}] #{rep} fill rate (GB/s): UFFDIO_COPY {f.get('uffd_1t')} (1 thread), "
                f"{f.get('uffd_2t')} (2 threads); memcpy {f.get('memcpy_1t')}")
            shift = rep % len(methods)
            for order, method in enumerate(methods[shift:] + methods[:shift]):
                rec = measure(cp, method, rep, order, args.drain_timeout)
                records.append(rec)
                log(describe(rec))
    finally:
        cleanup(scratch)


def cleanup(scratch: Path | None) -> None:
    """Kill every process the bench started and remove the scratch dir; a second Ctrl-C cannot cut it short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        kill_descendants()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, previous)


# --- main ------------------------------------------------------------------

def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def write_outputs(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]],
                  checkpoints: list[dict[str, Any]], fills: list[dict[str, Any]]) -> None:
    summary = local_report.summarize(meta, records, checkpoints, fills)
    write_summary(args.summary, summary)
    write_raw(args.json_out, meta, {"checkpoint": checkpoints, "fill_rate": fills, "run": records})
    previous = args.out.read_text() if args.out.exists() else ""
    # The marked sections (remote, coldstart, compress, the CRIU comparison) survive this rewrite.
    args.out.write_text(keep_remote(previous, local_report.render(summary)))
    log(f"wrote {args.out}, {args.summary} and {args.json_out}")


def check_machine() -> str:
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (CRIU needs it)")
    if not SHM.is_dir():
        raise SystemExit("bench: /dev/shm (tmpfs) is missing")
    return criu.find_criu().path


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    criu_path = check_machine()
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_term)
    command = command_line("local", argv)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sizes": args.sizes, "kinds": args.kinds,
            "repeat": args.repeat, "drain_timeout_s": args.drain_timeout, "command": command,
            "settle_s": SETTLE_S, "criu_log_level": criu.log_level(),
            "machine": machine(criu_path, REPO)}
    records: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    fills: list[dict[str, Any]] = []
    log(f"sizes {args.sizes} MiB, kinds {args.kinds}, {args.repeat} repeat(s); machine {meta['machine']}")
    try:
        for size in args.sizes:
            for kind in args.kinds:
                run_set(size, kind, args, records, checkpoints, fills)
    except KeyboardInterrupt:
        log("interrupted: every started process killed, scratch dirs removed; nothing written")
        return 130
    finally:
        cleanup(None)
    write_outputs(args, meta, records, checkpoints, fills)
    failed = [r for r in records if local_report.run_failed(r)] + [c for c in checkpoints if c.get("error")]
    if failed:
        log(f"{len(failed)} failure(s) or checksum mismatch(es): see {args.out}")
    return 1 if failed else 0

