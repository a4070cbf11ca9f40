#!/usr/bin/env python3
"""`make compress` (and the end of `make bench`): total migration time over slow links, --compress off / on / auto.

For each memory fill (text: compressible; random: incompressible) a workload of --mib MiB is started on test host
A and checkpointed once; `lazyrestore serve` serves that checkpoint. Then, for each link rate (a tbf qdisc on both
veth ends; 0: unlimited), --repeat rounds of `restore --from … --prefetch off` on host B with --compress off, on
and auto, in rotating order. For each: the time from the restore command's start to every page resident, the
page-frame bytes on the link, whether page data travelled compressed, the link auto measured and the page
server's CPU time; every restored tree's memory checksum must equal the original's. Writes the "Slow links"
section of BENCHMARKS.md (between its markers) and bench/compress_results.json. Exits 1 if any run failed or
restored wrong memory, 130 on Ctrl-C or SIGTERM, after killing every process it started and removing its dir
in /dev/shm and its test hosts (their qdiscs go with them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

# Our own test hosts (lrcz-host-a/-b), apart from the tests' and the other benches': read by
# lazyrestore.testhosts when it is first imported (remote_procs imports it).
os.environ.setdefault("LAZYRESTORE_TESTHOSTS_PREFIX", "lrcz")

import compress_report  # noqa: E402
import remote_report  # noqa: E402
from bench_methods import lazyrestore_cmd  # noqa: E402
from bench_procs import become_subreaper, kill_and_wait, kill_descendants, wait_gone  # noqa: E402
from compress_report import MODES, RANDOM, TEXT  # noqa: E402
from remote_procs import HOSTS, JsonProc, Network, finish, pump, shielded  # noqa: E402

from pyroute2 import netns  # noqa: E402

from lazyrestore import criu, sample, testhosts  # noqa: E402
from lazyrestore.errors import LazyRestoreError  # noqa: E402
from lazyrestore.manifest import META_DIR  # noqa: E402
from lazyrestore.secret import SECRET_NAME  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SHM = Path("/dev/shm")
SCRATCH_PREFIX = "lazyrestore-compress-"
STEP_TIMEOUT_S = 300.0     # start, checkpoint, report; plus a restore's time on its link (step_timeout)
SLOW_LINK_MARGIN = 3.0     # a restore may take this many times its memory's time on a limited link
DELIVERY_TIMEOUT_S = 30.0  # for the page server to report a delivery the destination already saw
CLK_TCK = os.sysconf("SC_CLK_TCK")
ERRORS = (LazyRestoreError, subprocess.SubprocessError, TimeoutError, OSError, KeyError, ValueError, TypeError)


def log(text: str) -> None:
    print(f"compress: {text}", flush=True)


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=positive, default=256, help="each workload's memory in MiB (256)")
    p.add_argument("--repeat", type=positive, default=2, help="rounds of off, on and auto per link and fill (2)")
    p.add_argument("--rates", type=rates, default=[0.0, 1000.0, 100.0],
                   help="link rates in Mbit/s, 0 for unlimited (0,1000,100)")
    p.add_argument("--fills", type=fills, default=[TEXT, RANDOM], help="workload fills (text,random)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="report (its slow-links section only)")
    p.add_argument("--json-out", type=Path, default=BENCH_DIR / "compress_results.json", help="raw results")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.mib, args.repeat = 64, 1
    return args


def step_timeout(mib: int, rate_mbit: float) -> float:
    """A restore's limit: the usual step, plus SLOW_LINK_MARGIN times its memory's time on a limited link."""
    return STEP_TIMEOUT_S + (SLOW_LINK_MARGIN * mib * (1 << 20) * 8 / (rate_mbit * 1e6) if rate_mbit else 0.0)


# --- the source: workload, checkpoint, page server ---------------------------------------------------

@dataclass
class Source:
    """One fill's checkpoint, what its memory must be, and the page server serving it."""

    net: Network
    fill: str
    scratch: Path
    images: Path
    pid: int                   # the workload's root, until the checkpoint ends it
    log: Path
    roles: tuple[str, ...]
    checksums: dict[str, str]  # the tree's memory before the checkpoint
    log_size: int = -1
    address: str = ""          # lazyrestore serve's HOST:PORT
    server: JsonProc | None = None
    server_pid: int | None = None  # lr-pageserver, whose CPU time each run reads

    def rewind_log(self) -> None:
        """CRIU restores the open log at its checkpoint-time size: put it back before each restore."""
        os.truncate(self.log, self.log_size)


def start_workload(net: Network, scratch: Path, mib: int, fill: str) -> Source:
    with net.inside_src():
        w = sample.start(scratch, mib, fill=fill, timeout=STEP_TIMEOUT_S)
    before = w.request_report(timeout=STEP_TIMEOUT_S)
    return Source(net, fill, scratch, scratch / "images", w.pid, w.log, w.roles,
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
    src.server_pid = listening[1].get("server_pid")


def servers(src: Source) -> tuple[JsonProc, ...]:
    """The page server's command, read along with each restore (its events must not fill its pipe)."""
    return () if src.server is None else (src.server,)


def deliveries(src: Source) -> int:
    return 0 if src.server is None else sum(e.get("event") == "server_delivered" for _, e in src.server.events)


def wait_delivered(src: Source, count: int) -> bool:
    """Until the page server has reported count deliveries: it is done with the last restore then."""
    return pump(list(servers(src)), lambda: deliveries(src) >= count, time.monotonic() + DELIVERY_TIMEOUT_S)


def server_cpu_s(src: Source) -> float | None:
    """lr-pageserver's user + system CPU time so far, None when it cannot be read."""
    try:
        fields = Path(f"/proc/{src.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


def stop_server(src: Source) -> None:
    if src.server is None:
        return
    if src.server.proc.poll() is None:
        src.server.proc.send_signal(signal.SIGTERM)
    finish(src.server, time.monotonic() + 30.0)
    src.server.close()


# --- one restore ---------------------------------------------------------------------------------------

def restore_args(src: Source, mode: str, work: Path) -> list[str]:
    return lazyrestore_cmd("restore", "--from", src.address, "--secret-file", str(src.images / META_DIR / SECRET_NAME),
                           "--workdir", str(work), "--prefetch", "off", "--compress", mode, "--json")


def figures(rst: JsonProc, code: int | None) -> dict[str, Any]:
    resumed, summary, fetched = rst.first("resumed"), rst.last("summary"), rst.first("fetched")
    pid = (summary[1].get("pid") if summary else None) or (resumed[1].get("pid") if resumed else None)
    if code != 0 or summary is None:
        raise RunFailed(f"restore: exit {code}: {rst.error_text()}", pid)
    s = summary[1]
    placed = sum(s.get(k) or 0 for k in ("fault_bytes", "drain_bytes", "prefetch_bytes"))
    return {"pid": pid, "total_s": summary[0] - rst.launched, "fetch_s": fetched[1].get("seconds") if fetched else None,
            "resume_s": s.get("resume_s"), "resident_s": s.get("resident_s"), "compress": s.get("compress"),
            "link_bps": s.get("link_bps"), "zstd_frames": s.get("zstd_frames"), "wire_bytes": s.get("wire_bytes"),
            "placed_bytes": placed, "faults": s.get("faults"), "daemon_cpu_s": s.get("daemon_cpu_s"),
            "summary": {k: v for k, v in s.items() if not isinstance(v, (dict, list))}}


def check_memory(src: Source, pid: int) -> str:
    after = sample.Workload(pid, src.log, src.roles).request_report(timeout=STEP_TIMEOUT_S)
    wrong = [f"{r} {src.checksums[r]} -> {after[r].checksum}" for r in src.roles if after[r].checksum != src.checksums[r]]
    bad = sample.Workload(pid, src.log, src.roles).bad_lines()
    return "; ".join(([f"checksum mismatch: {', '.join(wrong)}"] if wrong else []) + bad[:1]) or "ok"


def restore_run(src: Source, mode: str, work: Path, timeout: float, rec: dict[str, Any]) -> int | None:
    delivered, cpu0 = deliveries(src), server_cpu_s(src)
    rst = JsonProc(restore_args(src, mode, work), work.parent / f"{work.name}.stderr", src.net.dst_preexec())
    try:
        code = finish(rst, rst.launched + timeout, servers(src))
    finally:
        rst.close()
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
    src.rewind_log()
    pid = None
    try:
        pid = restore_run(src, mode, work, timeout, rec)
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

MAIN_PID = os.getpid()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM unwind the bench; a pyroute2 helper (a fork of this process) just exits."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def setup_network(meta: dict[str, Any]) -> Network:
    """The test hosts without netem (tbf limits the link per rate): A serves, B restores."""
    if set(netns.listnetns()) & {testhosts.HOST_A, testhosts.HOST_B}:
        raise LazyRestoreError(f"test hosts {testhosts.HOST_A}/{testhosts.HOST_B} already exist (another run?); "
                               f"remove them with `LAZYRESTORE_TESTHOSTS_PREFIX="
                               f"{os.environ['LAZYRESTORE_TESTHOSTS_PREFIX']} lazyrestore testhosts down`")
    meta["hosts"] = {"note": "being set up"}  # from here on, cleanup() removes them
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
    cp = checkpoint(src)
    meta["checkpoints"][fill] = {k: cp.get(k) for k in ("checkpoint_id", "lazy_pages", "eager_pages", "frozen_s")}
    start_server(src)
    log(f"checkpoint {cp.get('checkpoint_id')} ({fill}) served on {src.address}")
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
                stop_server(src)
                shutil.rmtree(src.scratch, ignore_errors=True)


def cleanup(scratch: Path, hosts: bool) -> None:
    with shielded():
        kill_descendants()
        shutil.rmtree(scratch, ignore_errors=True)
        if hosts:
            testhosts.down()


def write_outputs(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    med = compress_report.medians(records)
    goals = compress_report.goals(med)
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(compress_report.put_section(previous, compress_report.render(meta, records)))
    args.json_out.write_text(json.dumps({"meta": meta, "runs": records, "medians": compress_report.medians_json(med),
                                         "goals": goals, "costs": compress_report.costs(med)}, indent=2) + "\n")
    for line in goals:
        log(line)
    log(f"wrote the slow-links section of {args.out} and {args.json_out}")


def new_meta(args: argparse.Namespace, argv: list[str], criu_path: str) -> dict[str, Any]:
    command = shlex.join([os.path.relpath(sys.executable, REPO), os.path.relpath(__file__, REPO), *argv])
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "mib": args.mib, "repeat": args.repeat,
            "rates_mbit": args.rates, "fills": args.fills, "command": command, "checkpoints": {},
            "machine": remote_report.machine(criu_path, REPO), "hosts": None}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("compress: must run as root (CRIU, network namespaces and qdiscs need it)")
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
    failed = [r for r in records if not compress_report.run_ok(r)]
    if failed:
        log(f"{len(failed)} failed run(s) or wrong memory: see {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
