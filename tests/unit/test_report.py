"""`lazyrestore report` on synthesized run dirs: the PNG is drawn, sized and honest; bad inputs are refused by name."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lazyrestore import cli, lazyindex, report, workingset
from lazyrestore.lazyindex import IndexEntry, LazyIndex
from lazyrestore.workingset import Fault, Profile

PAGE = 4096
CID = bytes(range(16))
HEAP, STACK = 0x10000, 0x7FFF_F000_0000  # sparse, as in a real tree: heap low, stack near the top
HEAP_PAGES, STACK_PAGES = 256, 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_index() -> LazyIndex:
    def entry(start: int, pages: int, flags: int, offset: int) -> IndexEntry:
        blocks = lazyindex.block_count(start, pages * PAGE, lazyindex.DEFAULT_BLOCK_SIZE)
        return IndexEntry(1, flags, start, pages, 1, offset, tuple(range(blocks)))
    return LazyIndex(PAGE, lazyindex.DEFAULT_BLOCK_SIZE, 1, CID, (
        entry(HEAP, HEAP_PAGES, lazyindex.RANGE_LAZY, 0),
        entry(0x7FFF_0000_0000, 4, 0, HEAP_PAGES * PAGE),  # eager: not on the heatmap's axis
        entry(STACK, STACK_PAGES, lazyindex.RANGE_LAZY, (HEAP_PAGES + 4) * PAGE)))


def make_profile(n: int = 200, restores: int = 1) -> Profile:
    faults = [Fault(50_000 + i * 1000, 0, HEAP + (i % HEAP_PAGES) * PAGE, 1, 1) for i in range(n - 8)]
    faults += [Fault(50_000 + (n - 8 + i) * 1000, 2, STACK + i * PAGE, restores, restores) for i in range(8)]
    return Profile(PAGE, CID, n, 65536, 30000, tuple(faults), restores)


def line(t: float, event: str = "progress", finished: bool = True, placed: float = 1.0, **extra: Any) -> str:
    total = (HEAP_PAGES + STACK_PAGES) * PAGE
    rec = {"event": event, "daemon_pid": extra.pop("daemon_pid", 4242), "t": t, "restore_finished": finished,
           "faults": int(200 * placed), "fault_bytes": int(total * placed * 0.6),
           "drain_bytes": int(total * placed * 0.4), "left_bytes": int(total * (1 - placed)),
           "total_bytes": total if finished else 0, "lat_p50_us": 30.7, "lat_p99_us": 196.6, "lat_max_us": 3955.2,
           "resident_s": 0.0, **extra}
    return json.dumps(rec)


def progress_lines(daemon_pid: int = 4242) -> list[str]:
    out = [line(0.001, finished=False, placed=0.0, daemon_pid=daemon_pid)]
    out += [line(0.1 * i, placed=i / 5, daemon_pid=daemon_pid) for i in range(1, 5)]
    hist = [[0.768, 20], [1.024, 39], [16.384, 157], [32.768, 446], [196.608, 15], [4194.304, 1]]
    out.append(line(0.5, "done", placed=1.0, daemon_pid=daemon_pid, resident_s=0.45, hist_us=hist))
    return out


def write_run(run: Path, lines: list[str] | None = None, profile: Profile | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    if lines is not None:
        (run / "progress.jsonl").write_text("".join(f"{ln}\n" for ln in lines))
    if profile is not None:
        (run / workingset.FILE_NAME).write_bytes(workingset.encode(profile))
    return run


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A checkpoint dir with a lazy index (no image files: the report reads only the index)."""
    d = tmp_path / "images"
    (d / "lazyrestore").mkdir(parents=True)
    lazyindex.write(d / "lazyrestore" / "index.bin", make_index())
    return d


@pytest.fixture
def run_dir(images: Path) -> Path:
    """A run dir where a local lazy restore puts it: DIR/lazyrestore/runs/restore-..."""
    return write_run(images / "lazyrestore" / "runs" / "restore-1", progress_lines(), make_profile())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR, the first chunk
    return width, height


def run_main(argv: list[str]) -> int | str | None:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse
        return exc.code


# ---------------------------------------------------------------- drawing


def test_a_run_dir_gives_three_panels_with_faults_placed_by_the_index(run_dir: Path, images: Path) -> None:
    s = report.report(run_dir, None, run_dir / "report.png")
    assert png_size(run_dir / "report.png") == (1100, 1200) == (s.width_px, s.height_px)
    assert s.images_dir == str(images), "the checkpoint of DIR/lazyrestore/runs/RUN is found by its place"
    assert (s.faults, s.progress_lines, s.empty_panels) == (200, 6, {})
    assert not (run_dir / "report.png.part").exists()


def test_the_command_writes_run_dir_report_png_and_says_so_in_json(run_dir: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["report", str(run_dir), "--json"]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "report" and last["png"] == str(run_dir / "report.png")
    assert png_size(run_dir / "report.png") == (1100, 1200)


def test_text_output_names_the_png(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "elsewhere.png"
    assert run_main(["report", str(run_dir), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"report: {out} (1100x1200 px)" in text and "200 faults" in text
    assert out.exists() and not (run_dir / "report.png").exists()


def test_without_an_index_faults_are_ranked_by_address(tmp_path: Path) -> None:
    run = write_run(tmp_path / "w", progress_lines(), make_profile())
    s = report.report(run, None, run / "report.png")
    assert s.images_dir is None and s.faults == 200
    assert "ranked by address" in report.summary_text(s)
    assert png_size(run / "report.png") == (1100, 1200)


def test_images_alone_draws_the_stored_working_set(images: Path) -> None:
    (images / workingset.STORED).write_bytes(workingset.encode(make_profile(restores=3)))
    s = report.report(None, images, report.default_output(None, images))
    assert s.png == str(images / "lazyrestore" / "report.png")
    assert png_size(Path(s.png)) == (1100, 550), "the heatmap alone"
    assert s.progress_lines == 0 and s.faults == 200


@pytest.mark.parametrize("lines, profile, panels", [
    (None, make_profile(), {"drain": "no progress.jsonl", "latency": "no progress.jsonl"}),
    (progress_lines(), None, {"heatmap": "predates working sets"}),
    (progress_lines()[:-1], None, {"heatmap": "once every page is placed", "latency": "no \"done\" line"}),
    (progress_lines()[:-1], make_profile(), {"latency": "no \"done\" line"}),
    (progress_lines()[:1], make_profile(), {"drain": "1 line(s)", "latency": "no \"done\" line"}),
    ([], make_profile(), {"drain": "0 line(s)", "latency": "no \"done\" line"}),
    (progress_lines(), make_profile(n=8), {}),
], ids=["no-progress", "no-workingset", "not-done-no-workingset", "not-done", "one-line", "empty-progress", "few-faults"])
def test_an_empty_panel_says_why(tmp_path: Path, lines: list[str] | None, profile: Profile | None,
                                 panels: dict[str, str]) -> None:
    run = write_run(tmp_path / "run", lines, profile)
    s = report.report(run, None, run / "report.png")
    assert set(s.empty_panels) == set(panels)
    for panel, why in panels.items():
        assert why in s.empty_panels[panel]
    assert png_size(run / "report.png") == (1100, 1200)


def test_no_faults_at_all_is_said(tmp_path: Path) -> None:
    done = json.loads(progress_lines()[-1]) | {"hist_us": []}
    run = write_run(tmp_path / "run", [*progress_lines()[:-1], json.dumps(done)],
                    Profile(PAGE, CID, 0, 65536, 30000, ()))
    s = report.report(run, None, run / "report.png")
    assert "before the tree touched it" in s.empty_panels["heatmap"]
    assert "no faults were timed" in s.empty_panels["latency"]


def test_a_reused_work_dir_draws_its_latest_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", progress_lines(1) + progress_lines(2)[:3], make_profile())
    progress = report.read_progress(run / "progress.jsonl")
    assert progress.runs == 2 and len(progress.lines) == 3 and progress.lines[0]["daemon_pid"] == 2
    assert report.report(run, None, run / "report.png").progress_lines == 3


def test_lr_lazyd_errors_and_prefetch_are_drawn(tmp_path: Path) -> None:
    lines = progress_lines()[:3] + [line(0.3, "error", placed=0.4, message="page server gone", prefetch_bytes=4096)]
    run = write_run(tmp_path / "run", lines, make_profile())
    s = report.report(run, None, run / "report.png")
    assert "no \"done\" line" in s.empty_panels["latency"] and "failed" in report.headline(
        report.load_run(run, None), report.read_progress(run / "progress.jsonl").lines)


def test_restore_finished_prefers_the_daemons_own_time() -> None:
    lines = tuple(json.loads(ln) for ln in progress_lines())
    assert report.finished_at(lines) == (pytest.approx(0.05), "0.050 s")  # done t 0.5 less resident_s 0.45
    assert report.finished_at(lines[:-1]) == (0.1, "first reported at 0.10 s")
    newer = tuple(r | {"finished_t": 0.042} for r in lines)
    assert report.finished_at(newer) == (0.042, "0.042 s")
    assert report.finished_at(lines[:1]) is None


def bucket_upper_ns(idx: int) -> int:
    """native/lazyd/stats.c: bucket_upper, as C computes it."""
    if idx < 16:
        return idx + 1
    e, m = (idx - 16) // 8 + 4, (idx - 16) % 8
    return (8 + m + 1) << (e - 3)


def test_latency_bucket_bounds_match_lr_lazyd() -> None:
    for idx in range(1, 400):
        upper_us = round(bucket_upper_ns(idx) / 1000, 3)  # as "%.3f" prints it
        if bucket_upper_ns(idx) < 1 << 40:
            assert report.bucket_lower_us(upper_us) == bucket_upper_ns(idx - 1) / 1000, idx


def test_importing_the_cli_does_not_load_matplotlib() -> None:
    code = "import sys, lazyrestore.cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---------------------------------------------------------------- refusals


def changed(**fields: Any) -> str:
    """A good progress line with fields replaced (None: removed)."""
    rec = {k: v for k, v in (json.loads(line(0.2)) | fields).items() if v is not None}
    return json.dumps(rec)


DAMAGED = [
    ("not-json", "{\"event\": \"progress\", \"t\": 0.1", "not JSON"),
    ("not-an-object", "[1, 2]", "not an lr-lazyd progress object"),
    ("no-event", json.dumps({"t": 1}), "not an lr-lazyd progress object"),
    ("no-t", changed(t=None), "'t' is None"),
    ("negative-bytes", changed(drain_bytes=-5), "'drain_bytes' is -5, expected a number >= 0"),
    ("text-bytes", changed(fault_bytes="x"), "'fault_bytes' is 'x'"),
    ("bool-bytes", changed(total_bytes=True), "'total_bytes' is True"),
    ("nan", changed(t=float("nan")), "'t' is nan"),
    ("finished-not-bool", changed(restore_finished=1), "'restore_finished' is 1, expected true/false"),
    ("bad-histogram", changed(event="done", hist_us=[[1.0, -1]]), "'hist_us' is not a list"),
    ("histogram-not-pairs", changed(event="done", hist_us=[1, 2]), "'hist_us' is not a list"),
    ("bad-prefetch", changed(prefetch_bytes=-1), "'prefetch_bytes' is -1"),
]


@pytest.mark.parametrize("bad", [pytest.param(b, id=b[0]) for b in DAMAGED])
def test_a_damaged_progress_line_is_refused_naming_file_and_line(bad: tuple[str, str, str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, text, expected = bad
    run = write_run(tmp_path / "run", [progress_lines()[0], text], make_profile())
    assert run_main(["report", str(run)]) == report.DamagedRunRecord.exit_code == 7
    err = capsys.readouterr().err
    assert f"{run / 'progress.jsonl'} line 2: {expected}" in err and "Traceback" not in err, err
    assert not (run / "report.png").exists()


def test_a_progress_log_that_is_not_text_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run", None, make_profile())
    (run / "progress.jsonl").write_bytes(b"\xff\xfe\x00binary")
    assert run_main(["report", str(run)]) == 7
    assert f"{run / 'progress.jsonl'}: cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("data, expected", [
    (lambda good: good[:-1], "4863 bytes for 200 entries"),
    (lambda good: good[:20], "20 bytes, shorter than its 64-byte header"),
    (lambda good: b"XXXXXXXX" + good[8:], "not a version 2 working set"),
], ids=["truncated", "short", "magic"])
def test_a_damaged_working_set_is_refused_naming_it(data: Any, expected: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run", progress_lines())
    (run / "workingset").write_bytes(data(workingset.encode(make_profile())))
    assert run_main(["report", str(run)]) == 7
    err = capsys.readouterr().err
    assert f"working set {run / 'workingset'}: {expected}" in err and "Traceback" not in err, err


def test_a_working_set_of_another_checkpoint_is_refused(run_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    (other / "lazyrestore").mkdir(parents=True)
    lazyindex.write(other / "lazyrestore" / "index.bin",
                    LazyIndex(PAGE, lazyindex.DEFAULT_BLOCK_SIZE, 1, b"\x09" * 16, make_index().entries))
    assert run_main(["report", str(run_dir), "--images", str(other)]) == 7
    err = capsys.readouterr().err
    assert "belongs to another checkpoint" in err and f"is {other} the checkpoint this run restored?" in err, err


def test_a_damaged_index_is_refused(run_dir: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = images / "lazyrestore" / "index.bin"
    index.write_bytes(index.read_bytes()[:-1])
    assert run_main(["report", str(run_dir)]) == 7
    assert f"{index}: size" in capsys.readouterr().err


@pytest.mark.parametrize("argv, code, expected", [
    (["report"], 2, "report needs RUN_DIR"),
    (["report", "{empty}"], 6, "has neither progress.jsonl nor workingset; expected a lazy restore's run dir"),
    (["report", "--images", "{empty}"], 6, "no lazy index at"),
    (["report", "--images", "{images}"], 6, "no working set at"),
    (["report", "{run}", "-o", "{run}/report.jpg"], 2, "-o/--output"),
])
def test_inputs_that_cannot_give_a_report_are_refused(argv: list[str], code: int, expected: str, images: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    run = write_run(tmp_path / "run", progress_lines(), make_profile())
    where = {"empty": str(tmp_path / "empty"), "images": str(images), "run": str(run)}
    assert run_main([a.format(**where) for a in argv]) == code
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert not list(tmp_path.rglob("*.png"))


def test_a_png_that_cannot_be_written_is_a_named_error(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "report.png.part").mkdir()  # savefig cannot write there
    assert run_main(["report", str(run_dir)]) == report.ReportNotWritten.exit_code
    err = capsys.readouterr().err
    assert f"cannot write the report {run_dir / 'report.png'}" in err and "Traceback" not in err, err
