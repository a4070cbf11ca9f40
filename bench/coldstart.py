#!/usr/bin/env python3
"""`make coldstart` (and the end of `make bench`): time to the first correct answer of a restored server.

A serving workload (lr-workload --serve: a key-value table of --mib MiB) is started on test host A, asked
for its hot range, and checkpointed once; `lazyrestore serve` serves that one checkpoint. Then, on host B,
--repeat lazy restores with --prefetch off and as many with --prefetch auto, alternating (off first, so that
every auto run has the working set earlier restores recorded), and --eager eager restores of a copy. For
each: the time from the restore command's start to the first verified answer to `GET 0 KEYS`, the remote
faults lr-lazyd served until then, and the time until every page is resident; every restored tree's memory
checksum must equal the original's. Writes the "Cold start" section of BENCHMARKS.md (between its markers)
and bench/coldstart_results.json. Exits 1 if any run failed or restored wrong memory, 130 on Ctrl-C or
SIGTERM, after killing every process it started and removing its dir in /dev/shm and its test hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

# Our own test hosts (lrcs-host-a/-b), apart from the tests' and the other benches': read by
# lazyrestore.testhosts when it is first imported (remote_procs imports it).
os.environ.setdefault("LAZYRESTORE_TESTHOSTS_PREFIX", "lrcs")

import coldstart_report  # noqa: E402
import remote_report  # noqa: E402
from bench_methods import lazyrestore_cmd  # noqa: E402
from bench_procs import become_subreaper, kill_and_wait, kill_descendants, wait_gone  # noqa: E402
from coldstart_report import AUTO, EAGER, OFF  # noqa: E402
from remote_procs import HOSTS, LOOPBACK, JsonProc, Network, finish, hosts_up, loopback, pump, shielded  # noqa: E402

from pyroute2 import netns  # noqa: E402

from lazyrestore import criu, daemons, sample, testhosts, workingset  # noqa: E402
from lazyrestore.errors import LazyRestoreError  # noqa: E402
from lazyrestore.manifest import META_DIR  # noqa: E402
from lazyrestore.remote import RUN_SUBDIR  # noqa: E402
from lazyrestore.restore import SETTLE_S  # noqa: E402
from lazyrestore.secret import SECRET_NAME  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SHM = Path("/dev/shm")
SCRATCH_PREFIX = "lazyrestore-coldstart-"
STEP_TIMEOUT_S = 300.0   # start, checkpoint, a restore to every page resident
ANSWER_TIMEOUT_S = 60.0  # one request, once the restored server took the connection
POLL_S = 0.001           # between connection attempts while nothing listens yet
PROBE_GRACE_S = 5.0      # for the client after the restore command ended
DELIVERY_TIMEOUT_S = 30.0  # for the page server to report a delivery the destination already saw
WARM_REQUESTS = 3
ERRORS = (LazyRestoreError, subprocess.SubprocessError, TimeoutError, OSError, KeyError, ValueError, TypeError)


def log(text: str) -> None:
    print(f"coldstart: {text}", flush=True)


class RunFailed(Exception):
    """One restore failed; the message says how. pid: its restored root, when there is one."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=positive, default=1024, help="the key-value table's size in MiB (1024)")
    p.add_argument("--keys", type=positive, default=2000, help="keys of the first request, each on its own page (2000)")
    p.add_argument("--repeat", type=positive, default=5, help="lazy restores with prefetch off, and as many with auto (5)")
    p.add_argument("--eager", type=int, default=1, help="eager restores (1)")
    p.add_argument("--drain-rate", default=None, metavar="SIZE",
                   help="pass --drain-rate SIZE to the lazy restores (default: theirs, uncapped)")
    p.add_argument("--network", choices=(HOSTS, LOOPBACK), default=HOSTS,
                   help="hosts: workload and page server on test host A, restores on B (default); loopback: all in "
                        "the root network namespace")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="report (its cold-start section only)")
    p.add_argument("--json-out", type=Path, default=BENCH_DIR / "coldstart_results.json", help="raw results")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MiB, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.mib, args.repeat = 256, 2
    return args


# --- the source: workload, checkpoint, page server ---------------------------------------------------

@dataclass
class Source:
    """The one checkpoint every run restores, and what its memory and answers must be."""

    net: Network
    scratch: Path
    images: Path
    pid: int                   # the workload's root, until the checkpoint ends it
    log: Path
    roles: tuple[str, ...]
    table: sample.KvTable
    keys: int
    answer: str                # the checksum of GET 0 keys
    checksums: dict[str, str]  # the tree's memory before the checkpoint
    log_size: int = -1
    address: str = ""          # lazyrestore serve's HOST:PORT
    lazy_extra: tuple[str, ...] = ()  # more options for the lazy restores
    server: JsonProc | None = None

    def rewind_log(self) -> None:
        """CRIU restores the open log at its checkpoint-time size: put it back before each restore."""
        os.truncate(self.log, self.log_size)


def start_workload(net: Network, scratch: Path, mib: int, keys: int) -> Source:
    """The serving workload in the source's namespace, warmed with its hot request."""
    with net.inside_src():
        w = sample.start(scratch, mib, serve=random.randrange(1 << 32), timeout=STEP_TIMEOUT_S)
    table = w.kv_table()
    with net.inside_src():
        answers = {sample.kv_get(table.name, 0, keys, timeout=ANSWER_TIMEOUT_S) for _ in range(WARM_REQUESTS)}
    before = w.request_report(timeout=STEP_TIMEOUT_S)
    if len(answers) != 1:
        raise LazyRestoreError(f"the workload answered GET 0 {keys} differently each time: {sorted(answers)}")
    return Source(net, scratch, scratch / "images", w.pid, w.log, w.roles, table, keys, answers.pop(),
                  {r: rep.checksum for r, rep in before.items()})


def checkpoint(src: Source) -> dict[str, Any]:
    """`lazyrestore checkpoint` in the source's namespace; the workload is gone afterwards."""
    ck = JsonProc(lazyrestore_cmd("checkpoint", "--pid", str(src.pid), "--images", str(src.images), "--json"),
                  src.scratch / "checkpoint.stderr", src.net.src_preexec())
    try:
        code = finish(ck, time.monotonic() + STEP_TIMEOUT_S)
        summary = ck.last("summary")
    finally:
        ck.close()
    if code != 0 or summary is None:
        raise LazyRestoreError(f"lazyrestore checkpoint: exit {code}: {ck.error_text()}")
    if not wait_gone(src.pid, 60.0):
        raise LazyRestoreError(f"the workload {src.pid} is still alive after its checkpoint")
    src.log_size = src.log.stat().st_size
    return summary[1]


def start_server(src: Source) -> None:
    src.server = JsonProc(lazyrestore_cmd("serve", "--images", str(src.images), "--listen", f"{src.net.src_addr}:0",
                                          "--json"), src.scratch / "serve.stderr", src.net.src_preexec())
    pump([src.server], lambda: src.server is not None and src.server.first("listening") is not None,
         time.monotonic() + STEP_TIMEOUT_S)
    listening = src.server.first("listening")
    if listening is None:
        raise LazyRestoreError(f"lazyrestore serve did not listen: {src.server.error_text()}")
    src.address = f"{src.net.src_addr}:{listening[1]['port']}"


def servers(src: Source) -> tuple[JsonProc, ...]:
    """The page server's command, read along with each restore (its events must not fill its pipe)."""
    return () if src.server is None else (src.server,)


def deliveries(src: Source) -> int:
    return 0 if src.server is None else sum(e.get("event") == "server_delivered" for _, e in src.server.events)


def wait_delivered(src: Source, count: int) -> bool:
    """Until the page server has reported count deliveries: the last restore's working set is merged then."""
    return pump(list(servers(src)), lambda: deliveries(src) >= count, time.monotonic() + DELIVERY_TIMEOUT_S)


def stop_server(src: Source) -> None:
    if src.server is None:
        return
    if src.server.proc.poll() is None:
        src.server.proc.send_signal(signal.SIGTERM)
    finish(src.server, time.monotonic() + 30.0)
    src.server.close()


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
    return lazyrestore_cmd("restore", "--from", src.address, "--secret-file", str(src.images / META_DIR / SECRET_NAME),
                           "--workdir", str(work), "--prefetch", mode, *src.lazy_extra, "--json")


def restore_and_ask(src: Source, mode: str, work: Path) -> tuple[JsonProc, Probe, int | None]:
    """Start the restore and the client; read the restore to its end. The command, the client and its exit."""
    rst = JsonProc(restore_args(src, mode, work), work.parent / f"{work.name}.stderr", src.net.dst_preexec())
    probe = Probe(src, rst.launched + STEP_TIMEOUT_S)
    probe.start()
    try:
        code = finish(rst, rst.launched + STEP_TIMEOUT_S, servers(src))
    finally:
        rst.close()
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
    resumed, summary = rst.first("resumed"), rst.last("summary")
    pid = (summary[1].get("pid") if summary else None) or (resumed[1].get("pid") if resumed else None)
    if code != 0 or summary is None:
        raise RunFailed(f"restore: exit {code}: {rst.error_text()}", pid)
    if probe.at is None or probe.error:
        raise RunFailed(probe.error or "no answer", pid)
    s, t0, running = summary[1], rst.launched, running_at(rst, summary[1])
    return {"pid": pid, "first_answer_s": probe.at - t0, "running_s": None if running is None else running - t0,
            "connected_s": None if probe.connected is None else probe.connected - t0, "attempts": probe.attempts,
            "resident_s": summary[0] - t0, "faults": s.get("faults"), "prefetch_bytes": s.get("prefetch_bytes"),
            "prefetch_restores": s.get("prefetch_restores"), "lat_p50_us": s.get("lat_p50_us"),
            "lat_p99_us": s.get("lat_p99_us"), "summary": {k: v for k, v in s.items() if not isinstance(v, (dict, list))}}


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


def check_memory(src: Source, pid: int) -> str:
    after = sample.Workload(pid, src.log, src.roles).request_report(timeout=STEP_TIMEOUT_S)
    wrong = [f"{r} {src.checksums[r]} -> {after[r].checksum}" for r in src.roles if after[r].checksum != src.checksums[r]]
    bad = sample.Workload(pid, src.log, src.roles).bad_lines()
    return "; ".join(([f"checksum mismatch: {', '.join(wrong)}"] if wrong else []) + bad[:1]) or "ok"


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
    src.rewind_log()
    pid = None
    try:
        pid = eager_run(src, work, rec) if mode == EAGER else lazy_run(src, mode, work, rec)
        rec["memory"] = check_memory(src, pid) if pid else "no restored tree"
    except RunFailed as exc:
        rec["error"], pid = str(exc), exc.pid
    except ERRORS as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        with shielded():
            if pid is not None and not kill_and_wait(pid):
                rec["error"] = rec["error"] or f"restored root {pid} did not go away after SIGKILL"
            shutil.rmtree(work, ignore_errors=True)
    return rec


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

MAIN_PID = os.getpid()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM unwind the bench; a pyroute2 helper (a fork of this process) just exits."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def setup_network(name: str, meta: dict[str, Any]) -> Network:
    if name == LOOPBACK:
        net = loopback()
        meta.update(network_label="loopback (everything in the root network namespace)", src_label="the root "
                    "network namespace", dst_label="the root network namespace")
        return net
    if set(netns.listnetns()) & {testhosts.HOST_A, testhosts.HOST_B}:
        raise LazyRestoreError(f"test hosts {testhosts.HOST_A}/{testhosts.HOST_B} already exist (another run?); "
                               f"remove them with `LAZYRESTORE_TESTHOSTS_PREFIX="
                               f"{os.environ['LAZYRESTORE_TESTHOSTS_PREFIX']} lazyrestore testhosts down`")
    meta["hosts"] = {"note": "being set up"}  # from here on, cleanup() removes them
    net, meta["hosts"] = hosts_up()
    meta.update(network_label=net.label, src_label=f"test host A ({testhosts.HOST_A}, {testhosts.ADDR_A})",
                dst_label=f"test host B ({testhosts.HOST_B}, {testhosts.ADDR_B})")
    return net


def prepare(args: argparse.Namespace, meta: dict[str, Any], scratch: Path) -> Source:
    net = setup_network(args.network, meta)
    log(f"{args.mib} MiB serving workload on {meta['src_label']} ...")
    src = start_workload(net, scratch, args.mib, args.keys)
    cp = checkpoint(src)
    meta["checkpoint"] = {k: cp.get(k) for k in ("checkpoint_id", "lazy_pages", "eager_pages", "frozen_s")}
    start_server(src)
    log(f"checkpoint {cp.get('checkpoint_id')} served on {src.address}; the hot request: GET 0 {args.keys}")
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
            stop_server(src)
    copies = [r["copy_s"] for r in records if r.get("copy_s") is not None]
    meta["eager_copy_s"] = sum(copies) / len(copies) if copies else None


def cleanup(scratch: Path, hosts: bool) -> None:
    with shielded():
        kill_descendants()
        shutil.rmtree(scratch, ignore_errors=True)
        if hosts:
            testhosts.down()


def write_outputs(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    med = coldstart_report.medians(records)
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(coldstart_report.put_section(previous, coldstart_report.render(meta, records)))
    args.json_out.write_text(json.dumps({"meta": meta, "runs": records, "medians": med,
                                         "ratios": coldstart_report.ratios(med)}, indent=2) + "\n")
    for line in coldstart_report.goals(med):
        log(line)
    log(f"wrote the cold-start section of {args.out} and {args.json_out}")


def new_meta(args: argparse.Namespace, argv: list[str], criu_path: str) -> dict[str, Any]:
    command = shlex.join([os.path.relpath(sys.executable, REPO), os.path.relpath(__file__, REPO), *argv])
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "mib": args.mib, "keys": args.keys,
            "repeat": args.repeat, "eager": args.eager, "network": args.network, "drain_rate": args.drain_rate,
            "command": command,
            "machine": remote_report.machine(criu_path, REPO), "hosts": None}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("coldstart: must run as root (CRIU and network namespaces need it)")
    criu_path = criu.find_criu().path
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    meta = new_meta(args, argv, criu_path)
    records: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=SHM))
    try:
        run_all(args, meta, records, scratch)
    except LazyRestoreError as exc:
        log(f"cannot run: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every started process killed, the scratch dir and test hosts removed; nothing written")
        return 130
    finally:
        cleanup(scratch, meta["hosts"] is not None)
    write_outputs(args, meta, records)
    failed = [r for r in records if not coldstart_report.run_ok(r)]
    if failed:
        log(f"{len(failed)} failed run(s) or wrong memory: see {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
