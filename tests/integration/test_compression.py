"""Page data over a slow link: zstd-compressed PAGES frames between the test hosts (host A serves, host B
restores). Checksums cover the uncompressed bytes, so every restored byte is still compared with the
original; all-zero blocks never travel as bytes whatever --compress says."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lazyrestore import sample, testhosts

from .migration import checkpoint_on_a, checksums, finished, restore_on_b, serve_a, start_on_a


def migrate(workdir: Path, reaper, fill: str, *extra: str, rate_mbit: float = 0, read_at_once: bool = True) -> dict:
    """A workload of 64 MiB filled with `fill` migrated from A to B, its memory compared: read at once (it faults
    during the drain), or once every page is there."""
    w = start_on_a(workdir, reaper, 64, fill=fill)
    before = checksums(w)
    checkpoint_on_a(w, workdir / "images")
    src = serve_a(workdir / "images")
    try:
        with testhosts.rate_limit(rate_mbit) if rate_mbit else _nothing():
            run = restore_on_b(src.address, workdir / "images", workdir / "dst", "--prefetch", "off", *extra)
            restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
            summary = None if read_at_once else finished(run)
            assert checksums(restored) == before, "a restored byte differs"
            summary = summary or finished(run)
        os.kill(restored.pid, signal.SIGKILL)
    finally:
        src.stop()
    return summary


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_compressible_memory_crosses_compressed_and_arrives_intact(hosts, workdir: Path, reaper) -> None:
    s = migrate(workdir, reaper, "text", "--compress", "on")
    placed = s["fault_bytes"] + s["drain_bytes"]
    assert s["compress"] is True and s["zstd_frames"] > 0, s
    assert s["wire_bytes"] * 3 < placed, f"{s['wire_bytes']} bytes on the link for {placed} placed"


def test_random_memory_is_sent_as_it_is_when_compression_does_not_pay(hosts, workdir: Path, reaper) -> None:
    s = migrate(workdir, reaper, "random", "--compress", "on")
    placed = s["fault_bytes"] + s["drain_bytes"]
    # ~1000 frames (records end at the workload's holes); the few compressed ones hold other, zero-filled memory
    assert s["compress"] is True and s["zstd_frames"] < 20, "incompressible frames go as they are"
    assert s["wire_bytes"] >= placed * 0.98, (s["wire_bytes"], placed)


def test_zero_blocks_never_travel_as_bytes(hosts, workdir: Path, reaper) -> None:
    s = migrate(workdir, reaper, "zeros", "--compress", "off")
    placed = s["fault_bytes"] + s["drain_bytes"]
    assert s["compress"] is False and s["zstd_frames"] > 0, s
    assert s["wire_bytes"] < placed * 0.85, "a quarter of the memory is all-zero blocks"


def test_auto_compresses_on_a_slow_link(hosts, workdir: Path, reaper) -> None:
    """The tree does not fault here: auto measures the link on the bulk stream (a fault storm pauses it)."""
    s = migrate(workdir, reaper, "text", rate_mbit=200, read_at_once=False)
    assert 0 < s["link_bps"] < 250 << 20 and s["compress"] is True, s
    assert s["zstd_frames"] > 0
