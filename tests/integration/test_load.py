"""Load: 8 lazy restores of one checkpoint at once, on host B, through one page server on host A. Every
restored tree ends with every byte right; the page server's memory and CPU stay bounded (recorded for
RELIABILITY.md)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lazyrestore import sample

from . import faults
from .migration import checkpoint_on_a, checksums, finished, restore_on_b, serve_a, start_on_a

RESTORES = 8
MIB = 128
TICKS = os.sysconf("SC_CLK_TCK")


def server_usage(pid: int) -> tuple[int, float]:
    """(peak RSS in bytes, CPU seconds) of a running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(status["VmHWM"].split()[0]) * 1024, (int(fields[11]) + int(fields[12])) / TICKS


def test_eight_concurrent_restores_through_one_page_server(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, MIB)
    before = checksums(w)
    checkpoint_on_a(w, workdir / "images")
    log_size = w.log.stat().st_size
    src = serve_a(workdir / "images")
    server = src.listening["server_pid"]
    rss_idle, _ = server_usage(server)
    t0 = time.monotonic()
    try:
        runs = [restore_on_b(src.address, workdir / "images", workdir / f"dst{i}") for i in range(RESTORES)]
        restored = [sample.Workload(reaper.add(r.first("resumed")["pid"]), w.log, w.roles) for r in runs]
        summaries = [finished(r) for r in runs]
        seconds = time.monotonic() - t0
        rss_peak, cpu = server_usage(server)
    finally:
        src.stop()
    bad = 0
    for r in restored:  # the trees share one log file at the checkpoint's offset: one report at a time
        os.truncate(w.log, log_size)
        bad += faults.mismatches(checksums(r), before)
        os.kill(r.pid, signal.SIGKILL)
    served = src.result.last("summary")
    faults.record(f"{RESTORES} concurrent restores of one {MIB} MiB checkpoint, one page server",
                  injected=None, mismatches=bad, detect_s=None, recover_s=seconds,
                  outcome=f"all delivered; server peak RSS {rss_peak / 2**20:.1f} MiB, CPU {cpu:.2f} s",
                  server_rss_mib=round(rss_peak / 2**20, 1), server_idle_rss_mib=round(rss_idle / 2**20, 1),
                  server_cpu_s=round(cpu, 2), restores=RESTORES, seconds=round(seconds, 2),
                  resident_s_max=max(s["resident_s"] for s in summaries))
    assert bad == 0
    assert served["delivered"] == RESTORES and served["sessions"] == RESTORES
    # The server streams from the page cache: its memory must not grow with the clients or the checkpoint.
    assert rss_peak < 64 * 2**20, f"page server peak RSS {rss_peak / 2**20:.1f} MiB for {RESTORES} clients"
    assert cpu < seconds * 2, f"page server CPU {cpu:.2f} s in {seconds:.2f} s"
