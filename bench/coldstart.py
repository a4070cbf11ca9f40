"""`make coldstart` (and the end of `make bench`): time to the first correct answer of a restored server.

A serving workload (lr-workload --serve: a key-value table of --mib MiB) is started on test host A, asked
for its hot range, and checkpointed once; `lazyrestore serve` serves that one checkpoint. Then, on host B,
--repeat lazy restores with --prefetch off and as many with --prefetch auto, alternating (off first, so that
every auto run has the working set earlier restores recorded), and --eager eager restores of a copy. For
each: the time from the restore command's start to the first verified answer to `GET 0 KEYS`, the remote
faults lr-lazyd served until then, and the time until every page is resident; every restored tree's memory
checksum must equal the original's. Writes the "Cold start" section of BENCHMARKS.md (between its markers)
bench/results/coldstart.json (its summary) and build/bench/coldstart.jsonl (every record). Exits 1 if any run failed or restored wrong memory, 130 on Ctrl-C or
SIGTERM, after killing every process it started and removing its dir in /dev/shm and its test hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import served
from . import coldstart_report
from .markers import write_section
from .local_methods import lazyrestore_cmd
from .machine import command_line
from .options import positive
from .summaries import write_raw, write_summary
from .served import (ERRORS, STEP_TIMEOUT_S, RunFailed, Served, deliveries,
                       read_restore, start_restore, wait_delivered)
from .coldstart_report import AUTO, EAGER, OFF
from .netprocs import HOSTS, LOOPBACK, JsonProc, Network, hosts_up, loopback, shielded

from lazyrestore import daemons, sample, testhosts, workingset
from lazyrestore.errors import LazyRestoreError
from lazyrestore.layout import RUN_SUBDIR
from lazyrestore.restore import SETTLE_S

SCRATCH_PREFIX = "lazyrestore-coldstart-"
ANSWER_TIMEOUT_S = 60.0  # one request, once the restored server took the connection
POLL_S = 0.001           # between connection attempts while nothing listens yet
PROBE_GRACE_S = 5.0      # for the client after the restore command ended
WARM_REQUESTS = 3


def log(text: str) -> None:
    served.say("coldstart", text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench coldstart", description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=positive, default=1024, help="the key-value table's size in MiB (1024)")
    p.add_argument("--keys", type=positive, default=2000, help="keys of the first request, each on its own page (2000)")
    p.add_argument("--repeat", type=positive, default=5, help="lazy restores with prefetch off, and as many with auto (5)")
    p.add_argument("--eager", type=int, default=1, help="eager restores (1)")
    p.add_argument("--drain-rate", default=None, metavar="SIZE",
                   help="pass --drain-rate SIZE to the lazy restores (default: theirs, uncapped)")
    p.add_argument("--network", choices=(HOSTS, LOOPBACK), default=HOSTS,
                   help="hosts: workload and page server on test host A, restores on B (default); loopback: all in "
                        "the root network namespace")
    return served.parse_options(p, argv, section="cold-start", suite="coldstart",
                                   quick_help="smoke run: 256 MiB, 2 repeats", quick={"mib": 256, "repeat": 2})


# --- the source: workload, checkpoint, page server ---------------------------------------------------

@dataclass(kw_only=True)
class Source(Served):
    """The one checkpoint every run restores, and the hot request its restored server must answer."""

    table: sample.KvTable
    keys: int
    answer: str                # the checksum of GET 0 keys
    lazy_extra: tuple[str, ...] = ()  # more options for the lazy restores


def start_workload(net: Network, scratch: Path, mib: int, keys: int) -> Source:
    """The serving workload in the source's namespace, warmed with its hot request."""
    w = served.start_workload(net, scratch, mib, serve=random.randrange(1 << 32))
    table = w.kv_table()
    with net.inside_src():
        answers = {sample.kv_get(table.name, 0, keys, timeout=ANSWER_TIMEOUT_S) for _ in range(WARM_REQUESTS)}
    checksums = served.memory_checksums(w)
    if len(answers) != 1:
        raise LazyRestoreError(f"the workload answered GET 0 {keys} differently each time: {sorted(answers)}")
    return Source(net, scratch, w.pid, w.log, w.roles, checksums, table=table, keys=keys, answer=answers.pop())


# --- the client on the destination --------------------------------------------------------------------

@dataclass
class Probe:
    """Asks the restored server for the hot range until it answers, from a thread in the destination's
    network namespace. Times on the bench's clock: connected (CRIU had restored the listening socket; the
    request then waits until the tree runs and takes it), at (the first verified answer arrived)."""

    src: Source
    deadline: float
    connected: float | None = None
    at: float | None = None
    attempts: int = 0
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="coldstart-probe", daemon=True)
        self.thread.start()

    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def finish(self, grace: float) -> None:
        """Give the client grace seconds more (an answer may be on its way), then stop it."""
        if self.thread is None:
            return
        self.thread.join(grace)
        self.stop.set()
        self.thread.join(ANSWER_TIMEOUT_S + 5.0)

    def _run(self) -> None:
        try:
            with destination(self.src.net):
                self._ask_until_answered()
        except ERRORS as exc:
            self.error = f"client: {type(exc).__name__}: {exc}"

    def _ask_until_answered(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            self.attempts += 1
            try:
                sock = sample.kv_connect(self.src.table.name, ANSWER_TIMEOUT_S)
            except ConnectionRefusedError:
                time.sleep(POLL_S)  # nothing listens yet: CRIU has not restored the socket
                continue
            self.connected = self.connected or time.monotonic()
            with sock:
                reply = sample.kv_exchange(sock, f"GET 0 {self.src.keys}")
            self._check(reply)
            return
        self.error = "no answer before the restore ended or timed out"

    def _check(self, reply: str) -> None:
        try:
            got = sample.kv_check(reply, 0, self.src.keys)
        except sample.WrongAnswer as exc:
            self.error = str(exc)
            return
        self.at = time.monotonic()
        if got != self.src.answer:
            self.error = f"answer {got} differs from the one before the checkpoint ({self.src.answer})"


@contextlib.contextmanager
def destination(net: Network) -> Iterator[None]:
    """This thread in the destination's network namespace (none to enter on loopback)."""
    if net.dst_ns is None:
        yield
        return
    with testhosts.inside(net.dst_ns):
        yield


# --- one restore ---------------------------------------------------------------------------------------

def restore_args(src: Source, mode: str, work: Path) -> list[str]:
    if mode == EAGER:
        return lazyrestore_cmd("restore", "--images", str(work), "--json")
    return served.restore_from(src, work, "--prefetch", mode, *src.lazy_extra)


def restore_and_ask(src: Source, mode: str, work: Path) -> tuple[JsonProc, Probe, int | None]:
    """Start the restore and the client; read the restore to its end. The command, the client and its exit."""
    rst = start_restore(src, restore_args(src, mode, work), work)
    probe = Probe(src, rst.launched + STEP_TIMEOUT_S)
    probe.start()
    try:
        code = read_restore(src, rst, STEP_TIMEOUT_S)
    finally:
        probe.finish(PROBE_GRACE_S)
    return rst, probe, code


def running_at(rst: JsonProc, s: dict[str, Any]) -> float | None:
    """When the restored tree started running (bench clock): CRIU's restore returning. Lazy: its `listening`
    event comes just before CRIU's restore starts, which takes resume_s. Eager: its `verified` event, then
    restore_s, which ends after the tool's fixed liveness wait (SETTLE_S)."""
    listening, verified = rst.first("listening"), rst.first("verified")
    if listening is not None and s.get("resume_s") is not None:
        return listening[0] + s["resume_s"]
    if verified is not None and s.get("restore_s") is not None:
        return verified[0] + s["restore_s"] - SETTLE_S
    return None


def figures(rst: JsonProc, probe: Probe, code: int | None) -> dict[str, Any]:
    pid, summary = served.restore_result(rst, code)
    if probe.at is None or probe.error:
        raise RunFailed(probe.error or "no answer", pid)
    s, t0, running = summary[1], rst.launched, running_at(rst, summary[1])
    return {"pid": pid, "first_answer_s": probe.at - t0, "running_s": None if running is None else running - t0,
            "connected_s": None if probe.connected is None else probe.connected - t0, "attempts": probe.attempts,
            "resident_s": summary[0] - t0, "faults": s.get("faults"), "prefetch_bytes": s.get("prefetch_bytes"),
            "prefetch_restores": s.get("prefetch_restores"), "lat_p50_us": s.get("lat_p50_us"),
            "lat_p99_us": s.get("lat_p99_us"), "summary": served.scalars(s)}


def faults_until(run_dir: Path, answered_at: float) -> tuple[int | None, str | None]:
    """Faults lr-lazyd recorded on pages not yet placed up to answered_at (bench clock), or None and why not."""
    try:
        first = json.loads((run_dir / daemons.STATS_LOG).read_text().splitlines()[0])
        profile = workingset.read(run_dir / workingset.FILE_NAME)
    except (OSError, IndexError, ValueError, workingset.BadProfile) as exc:
        return None, f"no fault record: {exc}"
    started = first.get("started_mono_s")
    if started is None:
        return None, "lr-lazyd reports no started_mono_s"
    return sum(1 for f in profile.faults if started + f.t_us / 1e6 <= answered_at), None


def stored_workingset(src: Source) -> dict[str, int] | None:
    try:
        p = workingset.read(src.images / workingset.STORED)
    except workingset.BadProfile:
        return None
    return {"pages": len(p.faults), "restores": p.restores}


def lazy_run(src: Source, mode: str, work: Path, rec: dict[str, Any]) -> int | None:
    rec["workingset_before"] = stored_workingset(src)
    delivered = deliveries(src)
    rst, probe, code = restore_and_ask(src, mode, work)
    rec.update(figures(rst, probe, code))
    rec["faults_until_answer"], rec["faults_note"] = faults_until(work / RUN_SUBDIR, probe.at or 0.0)
    if not wait_delivered(src, delivered + 1):
        raise RunFailed("the page server reported no delivery for this restore: its working set may not be merged",
                        rec["pid"])
    return rec["pid"]


def eager_run(src: Source, work: Path, rec: dict[str, Any]) -> int | None:
    t = time.monotonic()
    shutil.copytree(src.images, work, symlinks=True)
    rec["copy_s"] = time.monotonic() - t
    rst, probe, code = restore_and_ask(src, EAGER, work)
    rec.update(figures(rst, probe, code))
    return rec["pid"]


def measure(src: Source, mode: str, order: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"mode": mode, "order": order, "error": None, "memory": None}
    work = src.scratch / f"restore-{order}-{mode}"
    if mode == EAGER:
        return served.run_checked(src, work, rec, lambda: eager_run(src, work, rec))
    return served.run_checked(src, work, rec, lambda: lazy_run(src, mode, work, rec))


def schedule(repeat: int, eager: int) -> list[str]:
    """off, auto, off, auto, ... (off first: auto needs a working set an earlier restore recorded), then eager."""
    return [m for _ in range(repeat) for m in (OFF, AUTO)] + [EAGER] * eager


def describe(rec: dict[str, Any]) -> str:
    head = f"#{rec['order']} {rec['mode']:<5}"
    if rec["error"]:
        return f"{head} FAILED: {rec['error']}"
    ws = rec.get("workingset_before")
    lazy = "" if rec["mode"] == EAGER else (
        f", faults until then {rec.get('faults_until_answer')} (of {rec.get('faults')}, p50/p99 "
        f"{rec.get('lat_p50_us')}/{rec.get('lat_p99_us')} us), prefetched {rec.get('prefetch_bytes') or 0} B, "
        f"working set before {ws['pages'] if ws else 0} pages")
    return (f"{head} first answer {rec['first_answer_s'] * 1000:.1f} ms (tree running at "
            f"{(rec.get('running_s') or 0) * 1000:.1f} ms){lazy}, resident {rec['resident_s']:.3f} s; "
            f"memory {rec['memory']}")


# --- main ------------------------------------------------------------------------------------------------

def setup_network(name: str, meta: dict[str, Any]) -> Network:
    if name == LOOPBACK:
        net = loopback()
        meta.update(network_label="loopback (everything in the root network namespace)", src_label="the root "
                    "network namespace", dst_label="the root network namespace")
        return net
    served.claim_hosts(meta)
    net, meta["hosts"] = hosts_up()
    meta.update(network_label=net.label, src_label=f"test host A ({testhosts.HOST_A}, {testhosts.ADDR_A})",
                dst_label=f"test host B ({testhosts.HOST_B}, {testhosts.ADDR_B})")
    return net


def prepare(args: argparse.Namespace, meta: dict[str, Any], scratch: Path) -> Source:
    net = setup_network(args.network, meta)
    log(f"{args.mib} MiB serving workload on {meta['src_label']} ...")
    src = start_workload(net, scratch, args.mib, args.keys)
    meta["checkpoint"] = served.checkpoint_and_serve(src)
    log(f"checkpoint {meta['checkpoint']['checkpoint_id']} served on {src.address}; the hot request: GET 0 {args.keys}")
    return src


def run_all(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]], scratch: Path) -> None:
    src = prepare(args, meta, scratch)
    src.lazy_extra = ("--drain-rate", args.drain_rate) if args.drain_rate else ()
    try:
        for order, mode in enumerate(schedule(args.repeat, args.eager)):
            rec = measure(src, mode, order)
            records.append(rec)
            log(describe(rec))
    finally:
        with shielded():
            served.stop_server(src)
    copies = [r["copy_s"] for r in records if r.get("copy_s") is not None]
    meta["eager_copy_s"] = sum(copies) / len(copies) if copies else None


def write_outputs(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    summary = coldstart_report.summarize(meta, records)
    write_summary(args.summary, summary)
    write_raw(args.json_out, meta, {"run": records})
    write_section(args.out, coldstart_report.SECTION, coldstart_report.render_summary(summary))
    for line in coldstart_report.goals(summary["medians"]):
        log(line)
    log(f"wrote the cold-start section of {args.out}, {args.summary} and {args.json_out}")


def new_meta(args: argparse.Namespace, argv: list[str], criu_path: str) -> dict[str, Any]:
    return {"date": served.utc_now(), "mib": args.mib, "keys": args.keys, "repeat": args.repeat, "eager": args.eager,
            "network": args.network, "drain_rate": args.drain_rate, "command": command_line("coldstart", argv),
            "machine": served.machine(criu_path), "hosts": None}


# What main runs: options, meta, the runs and the outputs (served.main does the rest).
BENCH = served.Bench("coldstart", "CRIU and network namespaces", SCRATCH_PREFIX,
                        parse_args, new_meta, run_all, write_outputs)


def main(argv: list[str]) -> int:
    """`python -m bench coldstart`: its exit code (served.main)."""
    return served.main(BENCH, argv)
