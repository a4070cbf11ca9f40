"""`lazyrestore report` on the run dir of a real lazy restore (real CRIU, lr-lazyd's own progress and working set)."""

from __future__ import annotations

import struct
from pathlib import Path

from lazyrestore import sample

from .helpers import LazyRun, checkpoint, run_cli
from .migration import finished as assert_done


def test_a_lazy_restore_is_drawn_from_its_run_dir(workdir: Path, reaper) -> None:
    w = sample.start(workdir, 64, scanners=2)  # scanners fault on pages the slow drain has not placed yet
    reaper.add(w.pid)
    checkpoint(w, workdir / "images")
    run = LazyRun(workdir / "images", "--drain-rate", "32M")
    reaper.add(run.pid)
    summary = assert_done(run)
    assert summary["faults"] > 0, summary
    res = run_cli("report", str(run.workdir))
    assert res.code == 0, res.stderr
    rep = res.last("report")
    png = Path(rep["png"])
    assert png == run.workdir / "report.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (rep["width_px"], rep["height_px"]) == (1100, 1200)
    assert rep["images_dir"] == str(workdir / "images"), "the run dir's checkpoint is found by its place"
    assert rep["faults"] > 0 and rep["progress_lines"] >= 2
    assert rep["empty_panels"] == {}, rep["empty_panels"]
