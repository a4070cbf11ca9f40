"""Soak: migrate one workload back and forth between the test hosts for a given time.

The workload keeps rewriting part of its memory all the time (lr-workload --writers), so every migration
moves memory that changed since the last one. After every cycle the restored tree verifies every page of its
memory (the fixed region against its model, the rewritten region page by page), its fixed region's checksum is
compared with the original's, and the machine is checked for leftovers: lazyrestore's processes, CRIU,
mounts, the soak's own file descriptors. Writes bench/results/soak.json (its summary, which
`make reliability` shows) and build/bench/soak.jsonl (every cycle).

    python -m bench soak --minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .machine import commit
from .summaries import raw_path, summary_path, write_raw, write_summary

from lazyrestore import sample, testhosts

REPO = Path(__file__).resolve().parent.parent
LEFTOVER_NAMES = ("lr-lazyd", "lr-pageserver", "criu")


def cli(*args: str, host: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lazyrestore.cli", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=testhosts.enter(testhosts.host_name(host)))


def events_until(proc: subprocess.Popen[str], name: str) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["event"] in (name, "error"):
            if ev["event"] == "error":
                raise RuntimeError(ev["message"])
            return ev
    raise RuntimeError(f"no {name} event; stderr: {proc.stderr.read() if proc.stderr else ''}")


def leftovers(scratch: Path) -> list[str]:
    """lazyrestore's and CRIU's processes still working on this soak's files (its own cycles are over)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            comm = (entry / "comm").read_text().strip() if entry.name.isdigit() else ""
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if comm in LEFTOVER_NAMES and str(scratch) in args:
            found.append(f"{comm}[{entry.name}]")
    return found


def machine_state(scratch: Path) -> dict[str, int]:
    """What the soak could leak: its own fds, and mounts of its files or its test hosts' namespaces (counted
    apart from the rest of the machine, where other work may mount and unmount meanwhile)."""
    own = [ln for ln in Path("/proc/self/mounts").read_text().splitlines()
           if str(scratch) in ln or f"/run/netns/{testhosts.PREFIX}-" in ln]
    return {"mounts": len(own), "fds": len(os.listdir("/proc/self/fd")),
            "all_mounts": len(Path("/proc/self/mounts").read_text().splitlines())}


def migrate_once(w: sample.Workload, n: int, src: str, scratch: Path) -> tuple[sample.Workload, dict[str, Any]]:
    """Migrate w from host src to the other one; the restored workload and the figures."""
    dst = "b" if src == "a" else "a"
    addr = testhosts.ADDR_A if src == "a" else testhosts.ADDR_B
    images = scratch / f"c{n}" / "images"
    images.parent.mkdir(parents=True)
    t0 = time.monotonic()
    source = cli("migrate", "--pid", str(w.pid), "--images", str(images), "--listen", f"{addr}:0", host=src)
    listening = events_until(source, "listening")
    restore = cli("restore", "--from", f"{addr}:{listening['port']}", "--secret-file",
                  str(images / "lazyrestore" / "secret"), "--workdir", str(scratch / f"c{n}" / "dst"), host=dst)
    resumed = events_until(restore, "resumed")
    downtime = time.monotonic() - t0
    summary = events_until(restore, "summary")
    restore.wait(60)
    served = events_until(source, "summary")
    source.wait(60)
    if restore.returncode or source.returncode or served.get("delivered") != 1:
        raise RuntimeError(f"cycle {n}: restore exit {restore.returncode}, source exit {source.returncode}, {served}")
    moved = sample.Workload(resumed["pid"], w.log, w.roles, w.writers)
    return moved, {"cycle": n, "from": src, "downtime_s": round(downtime, 3), "resident_s": summary["resident_s"],
                   "faults": summary["faults"], "seconds": round(time.monotonic() - t0, 3)}


def check(w: sample.Workload, original: dict[str, str], scratch: Path) -> dict[str, Any]:
    verify = w.request_verify()
    sums = {role: r.checksum for role, r in w.request_report().items()}
    return {"verify": verify, "mismatches": sum(1 for r, c in original.items() if sums.get(r) != c)
            + sum(1 for v in verify.values() if v != "ok"), "leftovers": leftovers(scratch)}


def soak(minutes: float, mib: int, writers: int, write_mib: int, scratch: Path) -> dict[str, Any]:
    before = machine_state(scratch)
    testhosts.up()
    with testhosts.inside(testhosts.HOST_A):
        w = sample.start(scratch, mib, writers=writers, write_mib=write_mib)
    original = {role: r.checksum for role, r in w.request_report().items()}
    start = time.monotonic()
    cycles: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    host = "a"
    try:
        while time.monotonic() - start < minutes * 60 and len(failed) < 3:
            n = len(cycles) + len(failed)
            try:
                w, rec = migrate_once(w, n, host, scratch)
            except RuntimeError as exc:  # a failed migration leaves the tree running on its source
                failed.append({"cycle": n, "from": host, "error": str(exc)[:2000]})
                print(f"soak: cycle {n} failed: {str(exc)[:300]}", flush=True)
                rec = {"cycle": n, "from": host}
            else:
                host = "b" if host == "a" else "a"
                cycles.append(rec)
            rec.update(check(w, original, scratch))
            shutil.rmtree(scratch / f"c{n - 1}", ignore_errors=True)
            print(f"soak: cycle {n} {rec['from']}->other: downtime {rec.get('downtime_s')} s, resident "
                  f"{rec.get('resident_s')} s, mismatches {rec['mismatches']}, leftovers {rec['leftovers']}",
                  flush=True)
            if rec["mismatches"] or rec["leftovers"]:
                break
    finally:
        w.kill()
        testhosts.down()
        after = machine_state(scratch)
    return {**summarize(cycles, before, after, time.monotonic() - start, mib, writers, write_mib),
            "failed_cycles": failed}


def summarize(cycles: list[dict[str, Any]], before: dict[str, int], after: dict[str, int], seconds: float,
              mib: int, writers: int, write_mib: int) -> dict[str, Any]:
    downs = sorted(c["downtime_s"] for c in cycles) or [0.0]
    return {"minutes": round(seconds / 60, 1), "cycles": len(cycles), "mib": mib, "writers": writers,
            "write_mib": write_mib, "mismatches": sum(c["mismatches"] for c in cycles),
            "leaked_processes": sum(len(c["leftovers"]) for c in cycles),
            "leaked_fds": after["fds"] - before["fds"], "leaked_mounts": after["mounts"] - before["mounts"],
            "downtime_p50_s": downs[len(downs) // 2], "downtime_max_s": downs[-1],
            "state_before": before, "state_after": after, "cycles_detail": cycles,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def summarize_soak(result: dict[str, Any], head: str | None) -> dict[str, Any]:
    """The soak's summary: its figures and the state before and after, without the cycles (those are raw)."""
    return {"suite": "soak", "date": result["date"], "commit": head,
            **{k: v for k, v in result.items() if k not in ("cycles_detail", "date")}}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--mib", type=int, default=128, help="the workload's fixed region")
    ap.add_argument("--writers", type=int, default=2, help="threads that keep rewriting memory")
    ap.add_argument("--write-mib", type=int, default=32, help="the region they rewrite")
    ap.add_argument("--out", type=Path, default=summary_path("soak"),
                    help="the summary RELIABILITY.md shows (bench/results/soak.json)")
    ap.add_argument("--json-out", type=Path, default=raw_path("soak"),
                    help="every cycle, JSON Lines (build/bench/soak.jsonl)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.mib <= 0 or args.writers < 1 or args.write_mib < 1:
        ap.error("--minutes, --mib, --writers and --write-mib must be positive")
    scratch = Path(tempfile.mkdtemp(prefix="lazyrestore-soak-", dir="/dev/shm"))
    try:
        result = soak(args.minutes, args.mib, args.writers, args.write_mib, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_summary(args.out, summarize_soak(result, commit(REPO)))
    write_raw(args.json_out, {k: v for k, v in result.items() if k != "cycles_detail"},
              {"cycle": result["cycles_detail"]})
    print(f"soak: {result['cycles']} cycles in {result['minutes']} min, {len(result['failed_cycles'])} failed, "
          f"{result['mismatches']} mismatches, "
          f"{result['leaked_processes']} leaked processes, fds {result['leaked_fds']:+d}, "
          f"mounts {result['leaked_mounts']:+d}; {args.out}, {args.json_out}")
    bad = result["mismatches"] or result["leaked_processes"] or result["leaked_fds"] or result["leaked_mounts"] \
        or result["failed_cycles"]
    return 1 if bad or not result["cycles"] else 0

