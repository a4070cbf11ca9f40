"""What coldstart.py and compress.py share: one workload's checkpoint, served by `lazyrestore serve` on the source,
restored many times on the destination, each restored tree checked and killed; and the process around it.

- Served: the checkpoint, what its memory must be, and the page server (checkpoint_and_serve, stop_server).
- restore_from, start_restore, read_restore, restore_result: one `lazyrestore restore --from … --json`.
- run_checked: one restore, then its tree's memory checked, the tree killed and its dir removed, whatever happened.
- Bench and main: what a script supplies (options, meta, runs, outputs) and the process around it: root,
  subreaper, Ctrl-C and SIGTERM, a scratch dir in /dev/shm and the test hosts (claim_hosts), removed afterwards,
  and the exit code.

Import it only after setting LAZYRESTORE_TESTHOSTS_PREFIX (python -m bench does): netprocs imports
lazyrestore.testhosts, which reads it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .local_methods import lazyrestore_cmd
from .machine import machine as describe_machine
from .summaries import raw_path, summary_path
from .procs import become_subreaper, kill_and_wait, kill_descendants, wait_gone
from .netprocs import JsonProc, Network, finish, pump, shielded
from .cells import run_ok

from pyroute2 import netns

from lazyrestore import criu, sample, testhosts
from lazyrestore.errors import LazyRestoreError
from lazyrestore.manifest import META_DIR
from lazyrestore.secret import SECRET_NAME


REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
STEP_TIMEOUT_S = 300.0          # start, checkpoint, memory report; a restore to every page resident on a fast link
DELIVERY_TIMEOUT_S = 30.0       # for the page server to report a delivery the destination already saw
WORKLOAD_EXIT_TIMEOUT_S = 60.0  # for the workload to be gone once its checkpoint ended
SERVER_STOP_TIMEOUT_S = 30.0    # for lazyrestore serve to exit after SIGTERM
CHECKPOINT_FIGURES = ("checkpoint_id", "lazy_pages", "eager_pages", "frozen_s")  # kept in the report's meta
EXIT_FAILED = 1                 # the bench could not run (said why), or a run failed or restored wrong memory
EXIT_INTERRUPTED = 130          # Ctrl-C or SIGTERM, as a shell reports SIGINT
ERRORS = (LazyRestoreError, subprocess.SubprocessError, TimeoutError, OSError, KeyError, ValueError, TypeError)

Record = dict[str, Any]
Meta = dict[str, Any]


class RunFailed(Exception):
    """One restore failed; the message says how. pid: its restored root, when there is one."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def say(name: str, text: str) -> None:
    print(f"{name}: {text}", flush=True)


def parse_options(p: argparse.ArgumentParser, argv: list[str], *, section: str, suite: str, quick_help: str,
                  quick: dict[str, Any]) -> argparse.Namespace:
    """argv parsed with p's options and --out (BENCHMARKS.md, of which the bench writes its section only),
    --summary (bench/results/SUITE.json), --json-out (build/bench/SUITE.jsonl) and --quick (a smoke run: the
    options in quick take its values)."""
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help=f"report (its {section} section only)")
    p.add_argument("--summary", type=Path, default=summary_path(suite), help="the summary the section is rendered from")
    p.add_argument("--json-out", type=Path, default=raw_path(suite), help="raw records, JSON Lines")
    p.add_argument("--quick", action="store_true", help=quick_help)
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(quick)
    return args


# --- the source: workload, checkpoint, page server ---------------------------------------------------

@dataclass
class Served:
    """One workload's checkpoint (in scratch/images), what its memory must be, and the page server serving it."""

    net: Network
    scratch: Path
    pid: int                   # the workload's root, until the checkpoint ends it
    log: Path
    roles: tuple[str, ...]
    checksums: dict[str, str]  # the tree's memory before the checkpoint
    log_size: int = -1
    address: str = ""          # lazyrestore serve's HOST:PORT
    server: JsonProc | None = None
    server_pid: int | None = None  # lr-pageserver, as lazyrestore serve reported it

    @property
    def images(self) -> Path:
        return self.scratch / "images"

    def rewind_log(self) -> None:
        """CRIU restores the open log at its checkpoint-time size: put it back before each restore."""
        os.truncate(self.log, self.log_size)


def start_workload(net: Network, scratch: Path, mib: int, serve: int | None = None,
                   fill: str = "random") -> sample.Workload:
    """The sample workload in the source's network namespace (sample.start's serve and fill)."""
    with net.inside_src():
        return sample.start(scratch, mib, serve=serve, fill=fill, timeout=STEP_TIMEOUT_S)


def memory_checksums(w: sample.Workload) -> dict[str, str]:
    """Each role's memory checksum, from a fresh report."""
    return {r: rep.checksum for r, rep in w.request_report(timeout=STEP_TIMEOUT_S).items()}


def checkpoint(src: Served) -> dict[str, Any]:
    """`lazyrestore checkpoint` in the source's namespace; the workload is gone afterwards. Its summary."""
    ck = JsonProc(lazyrestore_cmd("checkpoint", "--pid", str(src.pid), "--images", str(src.images), "--json"),
                  src.scratch / "checkpoint.stderr", src.net.src_preexec())
    try:
        code = finish(ck, time.monotonic() + STEP_TIMEOUT_S)
        summary = ck.last("summary")
    finally:
        ck.close()
    if code != 0 or summary is None:
        raise LazyRestoreError(f"lazyrestore checkpoint: exit {code}: {ck.error_text()}")
    if not wait_gone(src.pid, WORKLOAD_EXIT_TIMEOUT_S):
        raise LazyRestoreError(f"the workload {src.pid} is still alive after its checkpoint")
    src.log_size = src.log.stat().st_size
    return summary[1]


def start_server(src: Served) -> None:
    """`lazyrestore serve` on the source, until it listens."""
    src.server = JsonProc(lazyrestore_cmd("serve", "--images", str(src.images), "--listen", f"{src.net.src_addr}:0",
                                          "--json"), src.scratch / "serve.stderr", src.net.src_preexec())
    pump([src.server], lambda: src.server is not None and src.server.first("listening") is not None,
         time.monotonic() + STEP_TIMEOUT_S)
    listening = src.server.first("listening")
    if listening is None:
        raise LazyRestoreError(f"lazyrestore serve did not listen: {src.server.error_text()}")
    src.address = f"{src.net.src_addr}:{listening[1]['port']}"
    src.server_pid = listening[1].get("server_pid")


def checkpoint_and_serve(src: Served) -> dict[str, Any]:
    """Checkpoint the workload and serve the checkpoint; what the report keeps of the checkpoint."""
    summary = checkpoint(src)
    start_server(src)
    return {k: summary.get(k) for k in CHECKPOINT_FIGURES}


def servers(src: Served) -> tuple[JsonProc, ...]:
    """The page server's command, read along with each restore (its events must not fill its pipe)."""
    return () if src.server is None else (src.server,)


def deliveries(src: Served) -> int:
    return 0 if src.server is None else sum(e.get("event") == "server_delivered" for _, e in src.server.events)


def wait_delivered(src: Served, count: int) -> bool:
    """Until the page server has reported count deliveries: it is done with the last restore then (and has merged
    the working set it recorded)."""
    return pump(list(servers(src)), lambda: deliveries(src) >= count, time.monotonic() + DELIVERY_TIMEOUT_S)


def stop_server(src: Served) -> None:
    if src.server is None:
        return
    if src.server.proc.poll() is None:
        src.server.proc.send_signal(signal.SIGTERM)
    finish(src.server, time.monotonic() + SERVER_STOP_TIMEOUT_S)
    src.server.close()


def check_memory(src: Served, pid: int) -> str:
    """"ok", or what differs: the restored tree's checksums against the original's, its first BAD line."""
    after = sample.Workload(pid, src.log, src.roles).request_report(timeout=STEP_TIMEOUT_S)
    wrong = [f"{r} {src.checksums[r]} -> {after[r].checksum}" for r in src.roles if after[r].checksum != src.checksums[r]]
    bad = sample.Workload(pid, src.log, src.roles).bad_lines()
    return "; ".join(([f"checksum mismatch: {', '.join(wrong)}"] if wrong else []) + bad[:1]) or "ok"


# --- one restore -------------------------------------------------------------------------------------------

def restore_from(src: Served, work: Path, *options: str) -> list[str]:
    """`lazyrestore restore --from` the page server into work, with options, printing JSON lines."""
    return lazyrestore_cmd("restore", "--from", src.address, "--secret-file", str(src.images / META_DIR / SECRET_NAME),
                           "--workdir", str(work), *options, "--json")


def start_restore(src: Served, args: list[str], work: Path) -> JsonProc:
    """The restore command args on the destination, its stderr beside work."""
    return JsonProc(args, work.parent / f"{work.name}.stderr", src.net.dst_preexec())


def read_restore(src: Served, rst: JsonProc, timeout: float) -> int | None:
    """Read the restore (and the page server) to its end, at most timeout from its launch; its exit code."""
    try:
        return finish(rst, rst.launched + timeout, servers(src))
    finally:
        rst.close()


def restore_result(rst: JsonProc, code: int | None) -> tuple[int | None, tuple[float, dict[str, Any]]]:
    """The restored root and the restore's summary (bench time, event); RunFailed unless it exited 0 with one."""
    resumed, summary = rst.first("resumed"), rst.last("summary")
    pid = (summary[1].get("pid") if summary else None) or (resumed[1].get("pid") if resumed else None)
    if code != 0 or summary is None:
        raise RunFailed(f"restore: exit {code}: {rst.error_text()}", pid)
    return pid, summary


def scalars(event: dict[str, Any]) -> dict[str, Any]:
    """An event without its nested dicts and lists (what a run's record keeps of a summary)."""
    return {k: v for k, v in event.items() if not isinstance(v, (dict, list))}


def run_checked(src: Served, work: Path, rec: Record, restore: Callable[[], int | None]) -> Record:
    """rec, filled by restore() (which returns the restored root) and by the check of the root's memory; the root
    is killed and work removed whatever happened. A failure is rec["error"]."""
    src.rewind_log()
    pid = None
    try:
        pid = restore()
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


# --- the process -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bench:
    """What a bench module supplies to main: its name (log prefix), what it needs root for, its scratch dir's
    prefix, and its steps. run_all fills the records (a LazyRestoreError: the bench cannot run); write_outputs
    writes the summary, the report's section rendered from it and the raw records (args.summary, args.out,
    args.json_out)."""

    name: str
    needs_root_for: str
    scratch_prefix: str
    parse_args: Callable[[list[str]], argparse.Namespace]
    new_meta: Callable[[argparse.Namespace, list[str], str], Meta]  # args, argv, CRIU's path
    run_all: Callable[[argparse.Namespace, Meta, list[Record], Path], None]  # args, meta, records, scratch
    write_outputs: Callable[[argparse.Namespace, Meta, list[Record]], None]


MAIN_PID = os.getpid()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM unwind the bench; a pyroute2 helper (a fork of this process) just exits."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def prepare_process(bench: Bench) -> str:
    """Refuse unless root; become a subreaper whose Ctrl-C and SIGTERM unwind the bench. CRIU's path."""
    if os.geteuid() != 0:
        raise SystemExit(f"{bench.name}: must run as root ({bench.needs_root_for} need it)")
    criu_path = criu.find_criu().path
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return criu_path


def claim_hosts(meta: Meta) -> None:
    """Refuse when this bench's test hosts exist already (another run?); else mark them in meta for cleanup."""
    if set(netns.listnetns()) & {testhosts.HOST_A, testhosts.HOST_B}:
        raise LazyRestoreError(f"test hosts {testhosts.HOST_A}/{testhosts.HOST_B} already exist (another run?); "
                               f"remove them with `LAZYRESTORE_TESTHOSTS_PREFIX="
                               f"{os.environ['LAZYRESTORE_TESTHOSTS_PREFIX']} lazyrestore testhosts down`")
    meta["hosts"] = {"note": "being set up"}  # from here on, cleanup() removes them


def cleanup(scratch: Path, hosts: bool) -> None:
    with shielded():
        kill_descendants()
        shutil.rmtree(scratch, ignore_errors=True)
        if hosts:
            testhosts.down()


def run_in_scratch(bench: Bench, args: argparse.Namespace, meta: Meta, records: list[Record]) -> int:
    """bench.run_all with a new dir in /dev/shm; then every process it started is killed, the dir removed and, once
    meta["hosts"] is set, the test hosts. 0 when it ran to its end, else EXIT_FAILED or EXIT_INTERRUPTED."""
    scratch = Path(tempfile.mkdtemp(prefix=bench.scratch_prefix, dir=SHM))
    try:
        bench.run_all(args, meta, records, scratch)
    except LazyRestoreError as exc:
        say(bench.name, f"cannot run: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        say(bench.name, "interrupted: every started process killed, the scratch dir and test hosts removed; "
                        "nothing written")
        return EXIT_INTERRUPTED
    finally:
        cleanup(scratch, meta["hosts"] is not None)
    return 0


def failed_runs(bench: Bench, records: list[Record], report: Path) -> int:
    """The exit code: EXIT_FAILED (said) when a run failed or restored wrong memory, else 0."""
    failed = [r for r in records if not run_ok(r)]
    if failed:
        say(bench.name, f"{len(failed)} failed run(s) or wrong memory: see {report}")
    return EXIT_FAILED if failed else 0


def main(bench: Bench, argv: list[str]) -> int:
    args = bench.parse_args(argv)
    criu_path = prepare_process(bench)
    meta = bench.new_meta(args, argv, criu_path)
    records: list[Record] = []
    code = run_in_scratch(bench, args, meta, records)
    if code:
        return code
    bench.write_outputs(args, meta, records)
    return failed_runs(bench, records, args.out)


# --- outputs -----------------------------------------------------------------------------------------------

def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def machine(criu_path: str) -> dict[str, str]:
    return describe_machine(criu_path, REPO)

