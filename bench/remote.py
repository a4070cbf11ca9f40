"""`make bench`, part 2: migrating a running workload to another host, lazily and eagerly, side by side.

For each size, repeat, network (loopback at every size; the two test hosts A -> B
at --hosts-sizes), workload (idle: no scanner thread; scanning: 2 scanner threads
reading all of the memory, so the restored tree faults during the drain) and method
(lazyrestore migrate + restore --from, live or via disk, destination started after
or first; CRIU's own remote lazy mode; eager checkpoint + copy + restore), in an
order that rotates between repeats: start a fresh sample workload, take its
checksum, migrate it, check the restored memory against the checksum, kill the
tree. The methods that keep a full copy of the memory on tmpfs (lr-remote,
eager-copy) are skipped above --disk-max MiB. Writes the
"Remote migration" section of BENCHMARKS.md (between its markers; the rest of
the file is left alone), bench/results/remote.json (its summary) and build/bench/remote.jsonl
(every record). Exits 1 if any migration
failed or any checksum differed, 130 on Ctrl-C (or SIGTERM), after killing every
process it started, removing its dirs in /dev/shm and the test hosts, and putting
fs.pipe-max-size back. CRIU's daemon running out of --drain-timeout is a bound, not a failure.
"""

from __future__ import annotations

import argparse
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

from . import remote_report
from .markers import write_section
from .local_methods import MethodFailed
from .local_report import run_failed
from .machine import command_line, machine
from .memory import check_restored
from .options import csv_choice, csv_ints, positive
from .summaries import raw_path, read_summary, summary_path, write_raw, write_summary
from .procs import become_subreaper, kill_and_wait, kill_descendants
from .remote_methods import LABELS, METHODS, WORKLOADS, RemoteTimedOut, methods_at, start_source
from .netprocs import CRIU_PIPE_MAX, HOSTS, LOOPBACK, NETWORKS, PIPE_MAX_SIZE, Network, hosts_up, loopback, shielded

from pyroute2 import netns

from lazyrestore import criu, testhosts
from lazyrestore.errors import LazyRestoreError
from lazyrestore.restore import SETTLE_S

REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
SCRATCH_PREFIX = "lazyrestore-remote-bench-"
DEFAULT_SIZES = (256, 1024, 4096, 8192)
DEFAULT_HOSTS_SIZES = (1024,)
DISK_MAX_MIB = 4096  # 24 GiB: an 8 GiB source and its destination fit, a tmpfs copy of it beside them does not
DRAIN_TIMEOUT_S = 120
ERRORS = (LazyRestoreError, subprocess.SubprocessError, TimeoutError, OSError, KeyError, ValueError, TypeError)


def log(text: str) -> None:
    print(f"remote-bench: {text}", flush=True)


# --- options ---------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench remote", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=csv_ints, default=list(DEFAULT_SIZES),
                   help=f"workload sizes in MiB ({','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--networks", type=csv_choice(NETWORKS), default=None,
                   help="loopback (127.0.0.1) and/or hosts (test hosts A -> B) (both; hosts only at --hosts-sizes)")
    p.add_argument("--hosts-sizes", type=csv_ints, default=list(DEFAULT_HOSTS_SIZES),
                   help=f"the sizes also run between the test hosts ({','.join(map(str, DEFAULT_HOSTS_SIZES))})")
    p.add_argument("--workloads", type=csv_choice(tuple(WORKLOADS)), default=list(WORKLOADS),
                   help="idle (no scanner thread) and/or scanning (2 scanner threads fault during the drain) (both)")
    p.add_argument("--methods", type=csv_choice(tuple(METHODS)), default=list(METHODS),
                   help=f"methods ({','.join(METHODS)})")
    p.add_argument("--disk-max", type=positive, default=DISK_MAX_MIB,
                   help=f"largest size in MiB for the methods keeping a full copy on tmpfs ({DISK_MAX_MIB})")
    p.add_argument("--repeat", type=positive, default=1, help="migrations per size, network and method (median)")
    p.add_argument("--drain-timeout", type=positive, default=DRAIN_TIMEOUT_S,
                   help="seconds from a lazy restore's start until every page must be resident (120); past it "
                        "CRIU's daemon gets a bound, lazyrestore a failure")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="report (its remote section only)")
    p.add_argument("--summary", type=Path, default=summary_path("remote"),
                   help="the summary the section is rendered from (bench/results/remote.json)")
    p.add_argument("--json-out", type=Path, default=raw_path("remote"), help="raw records, JSON Lines")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: write the section again from --summary (after a change of the report)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 256 MiB, 1 repeat, loopback only (both workloads unless --workloads)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat, args.networks = [256], 1, [LOOPBACK]
    if args.networks is None:
        args.networks = [LOOPBACK] + ([HOSTS] if set(args.sizes) & set(args.hosts_sizes) else [])
    elif HOSTS in args.networks and not set(args.sizes) & set(args.hosts_sizes):
        p.error(f"--networks hosts: none of --sizes {args.sizes} is in --hosts-sizes {args.hosts_sizes}")
    return args


# --- the plan -------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One migration of the run."""

    size: int
    network: str
    workload: str
    method: str
    repeat: int
    order: int


def schedule(nets: list[str], workloads: list[str], methods: list[str], rep: int) -> list[tuple[str, str, str]]:
    """Every (network, workload, method) once; methods rotate, networks and workloads alternate between repeats."""
    shift = rep % len(methods)
    order_m = methods[shift:] + methods[:shift]
    order_n = nets if rep % 2 == 0 else nets[::-1]
    order_w = workloads if rep % 2 == 0 else workloads[::-1]
    return [(n, w, m) for n in order_n for w in order_w for m in order_m]


def plan(args: argparse.Namespace) -> list[Step]:
    """Every migration in run order: sizes in turn; the test hosts only at --hosts-sizes; the disk methods
    only up to --disk-max."""
    steps = []
    for size in args.sizes:
        nets = [n for n in args.networks if n != HOSTS or size in args.hosts_sizes]
        methods = methods_at(size, args.methods, args.disk_max)
        if not nets or not methods:
            continue
        for rep in range(args.repeat):
            steps += [Step(size, n, w, m, rep, order)
                      for order, (n, w, m) in enumerate(schedule(nets, args.workloads, methods, rep))]
    return steps


# --- one migration ----------------------------------------------------------------

def migrate_once(rec: dict[str, Any], step: Step, net: Network, scratch: Path, drain_timeout: float) -> int | None:
    """Fill rec with one migration's figures and outcome; the restored root's pid (None if there is none)."""
    try:
        src = start_source(step.size, net, scratch, WORKLOADS[step.workload])
    except ERRORS as exc:
        rec["error"] = f"workload did not start: {type(exc).__name__}: {exc}"
        return None
    try:
        figures = METHODS[step.method](src, drain_timeout)
    except RemoteTimedOut as exc:
        rec.update(exc.figures, timed_out=True, checksum="not checked (timed out)", note=str(exc))
        return rec.pop("pid", exc.pid)
    except MethodFailed as exc:
        rec["error"] = str(exc)
        return exc.pid
    except ERRORS as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        return None
    pid = figures.pop("pid")
    rec.update(figures)
    try:
        rec["checksum"], rec["checksums_after"] = check_restored(pid, src.log, src.log_size, src.roles, src.checksums)
    except ERRORS as exc:
        rec["error"] = f"memory check: {type(exc).__name__}: {exc}"
    return pid


def measure(step: Step, net: Network, drain_timeout: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"size_mib": step.size, "network": net.name, "workload": step.workload,
                           "method": step.method, "repeat": step.repeat, "order": step.order, "error": None,
                           "checksum": None}
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=SHM))
    pid = None
    try:
        pid = migrate_once(rec, step, net, scratch, drain_timeout)
    finally:
        with shielded():
            if pid is not None and not kill_and_wait(pid):
                rec["error"] = rec["error"] or f"restored root {pid} did not go away after SIGKILL"
            leftovers = kill_descendants()
            shutil.rmtree(scratch, ignore_errors=True)
    if leftovers:
        rec["leftover_pids_killed"] = leftovers
    return rec


def describe(rec: dict[str, Any]) -> str:
    head = f"[{rec['size_mib']} MiB {rec['network']} {rec['workload']}] #{rec['repeat']} {rec['method']:<13}"
    f = remote_report.fmt
    if rec["error"]:
        return f"{head} FAILED: {rec['error']}"
    if rec.get("timed_out"):
        return (f"{head} resume {f(rec['resume_s'])} s, TIMED OUT (resident > {f(rec['total_s'])} s, "
                f"drain < {f(rec['drain_gbps'])} GB/s); memory not checked")
    lat = "" if rec.get("lat_p50_us") is None else \
        f", faults {rec['faults']} p50/p99 {rec['lat_p50_us']:.1f}/{rec['lat_p99_us']:.1f} us"
    drain = "" if rec.get("drain_gbps") is None else f", drain {f(rec['drain_gbps'], 2)} GB/s"
    if rec.get("server_peak_kib") is not None:
        drain += f", source server peak RSS {rec['server_peak_kib'] / 1024:.1f} MiB"
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in rec.get("breakdown", {}).items()
                      if v is not None)
    return (f"{head} resume {f(rec['resume_s'])} s, resident {f(rec['total_s'])} s{drain}{lat}; "
            f"memory {rec['checksum']}\n    ({parts})")


# --- main ---------------------------------------------------------------------

MAIN_PID = os.getpid()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM unwind the bench (its finally blocks clean up). pyroute2 forks helpers that
    run Python code (netns creation) and stops them with SIGTERM: such a copy of this process just exits,
    and never runs the bench's cleanup (which would remove the test hosts from under the bench)."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def check_machine() -> str:
    if os.geteuid() != 0:
        raise SystemExit("remote-bench: must run as root (CRIU, network namespaces and the sysctl need it)")
    if not SHM.is_dir():
        raise SystemExit("remote-bench: /dev/shm (tmpfs) is missing")
    return criu.find_criu().path


def setup_networks(names: list[str], meta: dict[str, Any]) -> list[Network]:
    nets = [loopback()] if LOOPBACK in names else []
    if HOSTS in names:
        if set(netns.listnetns()) & {testhosts.HOST_A, testhosts.HOST_B}:
            prefix = os.environ.get("LAZYRESTORE_TESTHOSTS_PREFIX", "")
            raise LazyRestoreError(f"test hosts {testhosts.HOST_A}/{testhosts.HOST_B} already exist (another bench "
                                   f"run?); remove them with `LAZYRESTORE_TESTHOSTS_PREFIX={prefix} lazyrestore "
                                   "testhosts down`, or run with --networks loopback")
        meta["hosts"] = {"netem": None, "note": "being set up"}  # from here on, cleanup() removes them
        net, meta["hosts"] = hosts_up()
        log(f"test hosts up: {meta['hosts']['note']}")
        nets.append(net)
    meta["networks"] = {n.name: n.label for n in nets}
    return nets


def run_all(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    steps = plan(args)
    used = {s.network for s in steps}
    nets = {n.name: n for n in setup_networks([n for n in args.networks if n in used], meta)}
    log(f"{len(steps)} migrations")
    for i, step in enumerate(steps, 1):
        log(f"({i}/{len(steps)}) [{step.size} MiB {step.network} {step.workload}] #{step.repeat} "
            f"{LABELS[step.method]} ...")
        rec = measure(step, nets[step.network], args.drain_timeout)
        records.append(rec)
        log(describe(rec))


def cleanup(hosts: bool) -> None:
    """Kill every process the bench started, remove leftover scratch dirs and the test hosts."""
    with shielded():
        kill_descendants()
        for d in SHM.glob(f"{SCRATCH_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)
        if hosts:
            testhosts.down()


def write_outputs(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    write_summary(args.summary, remote_report.summarize(meta, records))
    write_raw(args.json_out, meta, {"run": records})
    render_section(args)
    lines, _ = remote_report.goals(remote_report.medians(records), meta)
    for line in lines:
        if line:
            log(line)
    log(f"wrote the remote section of {args.out}, {args.summary} and {args.json_out}")


def render_section(args: argparse.Namespace) -> None:
    """BENCHMARKS.md's remote section from the summary alone."""
    write_section(args.out, "remote-bench", remote_report.render_summary(read_summary(args.summary)))


def new_meta(args: argparse.Namespace, argv: list[str], criu_path: str) -> dict[str, Any]:
    command = command_line("remote", argv)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sizes": args.sizes,
            "methods": args.methods, "workloads": args.workloads, "scanners": WORKLOADS,
            "disk_max_mib": args.disk_max, "hosts_sizes": args.hosts_sizes, "repeat": args.repeat,
            "drain_timeout_s": args.drain_timeout,
            "command": command, "machine": machine(criu_path, REPO),
            "pipe_max_size": int(PIPE_MAX_SIZE.read_text()), "criu_pipe_max": CRIU_PIPE_MAX,
            "criu_log_level": criu.log_level(), "settle_s": SETTLE_S, "hosts": None,
            "host_a": testhosts.HOST_A, "addr_a": testhosts.ADDR_A, "host_b": testhosts.HOST_B,
            "addr_b": testhosts.ADDR_B}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render_only:
        render_section(args)
        return 0
    criu_path = check_machine()
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    meta = new_meta(args, argv, criu_path)
    records: list[dict[str, Any]] = []
    log(f"sizes {args.sizes} MiB, networks {args.networks} (hosts at {args.hosts_sizes} MiB), workloads "
        f"{args.workloads}, methods {args.methods} (disk ones up to {args.disk_max} MiB), {args.repeat} repeat(s)")
    try:
        run_all(args, meta, records)
    except LazyRestoreError as exc:
        log(f"cannot run: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every started process killed, scratch dirs and test hosts removed, "
            "fs.pipe-max-size put back; nothing written")
        return 130
    finally:
        cleanup(meta["hosts"] is not None)
    write_outputs(args, meta, records)
    failed = [r for r in records if run_failed(r)]
    if failed:
        log(f"{len(failed)} failed migration(s) or checksum mismatch(es): see {args.out}")
    return 1 if failed else 0

