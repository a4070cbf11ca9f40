"""`lazyrestore report`: one PNG of a lazy restore, drawn from what its run dir recorded.

Three panels (matplotlib's Agg backend: no display needed):

1. faults over time and address space, a heatmap of the run's working set (`workingset`: each first fault's
   time and checkpoint address). Addresses are sparse (heap low, stacks near 0x7ff...), so each fault is
   placed at its page's position in the checkpoint's lazy memory (the lazy index's lazy records in index
   order, concatenated, gaps removed) when the index is at hand, else at the rank of its address among the
   faulted pages;
2. memory placed over time, by faults and by the background drain (`progress.jsonl`, every JSON line
   lr-lazyd reported, about 10 a second), with the moment CRIU's restore was first reported finished;
3. the fault latency histogram of lr-lazyd's "done" line.

A panel with nothing to show says why. With a checkpoint's images dir alone, the heatmap shows the working
set stored beside it (the merge of its lazy restores); no progress is kept there.

matplotlib is imported only when a picture is drawn, so other commands do not pay for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lazyindex, manifest, workingset
from .daemons import STATS_LOG
from .errors import ImagesDirError, LazyRestoreError, UsageError
from .lazyindex import LazyIndex
from .layout import IMAGES_SUBDIR, RUN_SUBDIR
from .restore import RUNS_DIR
from .workingset import Profile

REPORT_NAME = "report.png"
DPI = 100
FULL_SIZE_IN = (11.0, 12.0)     # three panels: 1100 x 1200 pixels
STORED_SIZE_IN = (11.0, 5.5)    # the heatmap alone (--images only): 1100 x 550 pixels
HEATMAP_BINS = (200, 128)       # cells along time and along the address axis
SPARSE_FAULTS = 200             # up to this many, each fault is also ringed (single cells are hard to see)
MIB = 1 << 20
PROGRESS_FIELDS = ("t", "fault_bytes", "drain_bytes", "total_bytes")  # numbers every line must have
OPTIONAL_FIELDS = ("prefetch_bytes", "finished_t", "resident_s")       # numbers when there (newer lr-lazyd)


class DamagedRunRecord(LazyRestoreError):
    """A run's progress.jsonl or working set cannot be read or is damaged (the message names the file and line).
    Exit 7, as for any other corrupt record of a checkpoint."""

    exit_code = 7


class ReportNotWritten(LazyRestoreError):
    """The PNG could not be written where asked (exit 6: a directory problem)."""

    exit_code = 6


@dataclass(frozen=True)
class Progress:
    """The lines of progress.jsonl that belong to the run's latest lr-lazyd (a reused work dir holds several)."""

    lines: tuple[dict[str, Any], ...]
    runs: int = 1  # lr-lazyd runs found in the file


@dataclass(frozen=True)
class ReportData:
    """Everything one picture is drawn from; None: that input is not there."""

    title: str
    progress: Progress | None
    profile: Profile | None
    index: LazyIndex | None
    stored: bool = False       # a checkpoint's stored working set alone: the heatmap only
    missing_profile: str = ""  # why there is no working set, when there is none


@dataclass(frozen=True)
class ReportSummary:
    """What `report` drew: the PNG, its size, and each empty panel with the reason it is empty."""

    png: str
    run_dir: str | None
    images_dir: str | None  # the checkpoint whose index placed the faults (None: ranked by address)
    width_px: int
    height_px: int
    faults: int             # faults in the heatmap
    progress_lines: int     # progress.jsonl lines drawn
    empty_panels: dict[str, str] = field(default_factory=dict)


def default_output(run_dir: Path | None, images: Path | None) -> Path:
    """RUN_DIR/report.png, or DIR/lazyrestore/report.png for a checkpoint alone."""
    if run_dir is not None:
        return run_dir / REPORT_NAME
    assert images is not None
    return images / manifest.META_DIR / REPORT_NAME


def check_output(path: Path) -> None:
    """A .png file path in an existing directory (UsageError otherwise)."""
    if path.suffix.lower() != ".png":
        raise UsageError(f"{path}: does not end in .png")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: {path.parent} is not an existing directory")


def find_images(run_dir: Path) -> Path | None:
    """The checkpoint a run dir belongs to, by its place: DIR/lazyrestore/runs/RUN (a local restore) or
    W/run beside W/images (`restore --from`); None when it is elsewhere (e.g. `restore --lazy --workdir`)."""
    candidates = []
    if run_dir.parent.name == RUNS_DIR and run_dir.parent.parent.name == manifest.META_DIR:
        candidates.append(run_dir.parent.parent.parent)
    if run_dir.name == RUN_SUBDIR:
        candidates.append(run_dir.parent / IMAGES_SUBDIR)
    return next((c for c in candidates if index_path(c).is_file()), None)


def index_path(images: Path) -> Path:
    return images / manifest.META_DIR / manifest.INDEX_NAME


def report(run_dir: Path | None, images: Path | None, out: Path) -> ReportSummary:
    """Read the inputs (every check before anything is written), draw, write out atomically."""
    if run_dir is not None:
        images = images or find_images(run_dir)
        data = load_run(run_dir, images)
    else:
        assert images is not None
        data = load_stored(images)
    width, height, empty = draw(data, out)
    return ReportSummary(str(out), str(run_dir) if run_dir else None, str(images) if data.index else None,
                         width, height, len(data.profile.faults) if data.profile else 0,
                         len(data.progress.lines) if data.progress else 0, empty)


def load_run(run_dir: Path, images: Path | None) -> ReportData:
    stats, wset = run_dir / STATS_LOG, run_dir / workingset.FILE_NAME
    if not stats.exists() and not wset.exists():
        raise ImagesDirError(f"RUN_DIR {run_dir}: has neither {STATS_LOG} nor {workingset.FILE_NAME}; expected "
                             "a lazy restore's run dir (the work dir `restore --lazy` prints)")
    index = read_index(images) if images is not None else None
    progress = read_progress(stats) if stats.exists() else None
    profile = read_profile(wset, index, images) if wset.exists() else None
    return ReportData(f"lazy restore {run_dir}", progress, profile, index,
                      missing_profile="" if profile else no_profile_reason(run_dir, progress))


def no_profile_reason(run_dir: Path, progress: Progress | None) -> str:
    if progress is not None and last_done(progress.lines) is None:
        return f"no {workingset.FILE_NAME} in {run_dir}: lr-lazyd writes it once every page is placed, and this " \
            "restore did not get there (failed, or still running)"
    return f"no {workingset.FILE_NAME} in {run_dir}: its lr-lazyd predates working sets"


def load_stored(images: Path) -> ReportData:
    wset = images / workingset.STORED
    index = read_index(images)
    if not wset.exists():
        raise ImagesDirError(f"--images {images}: no working set at {wset}; expected a checkpoint restored lazily "
                             "at least once (or give a restore's RUN_DIR)")
    return ReportData(f"checkpoint {images}", None, read_profile(wset, index, images), index, stored=True)


def read_index(images: Path) -> LazyIndex:
    path = index_path(images)
    if not path.is_file():
        raise ImagesDirError(f"--images {images}: no lazy index at {path}; expected a checkpoint directory "
                             "(`lazyrestore checkpoint` or `index` writes it)")
    return lazyindex.read(path)


def read_profile(path: Path, index: LazyIndex | None, images: Path | None) -> Profile:
    try:
        return workingset.read(path, index)
    except workingset.BadProfile as exc:
        hint = f" (is {images} the checkpoint this run restored?)" if "another checkpoint" in str(exc) else ""
        raise DamagedRunRecord(f"{exc}{hint}") from None


def read_progress(path: Path) -> Progress:
    """Every line checked; the lines of the latest lr-lazyd run (its pid changes, or t goes back, between runs)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedRunRecord(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    runs: list[list[dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rec = parse_line(line, f"{path} line {number}")
        prev = runs[-1][-1] if runs else None
        if prev is None or rec.get("daemon_pid") != prev.get("daemon_pid") or rec["t"] < prev["t"]:
            runs.append([])
        runs[-1].append(rec)
    return Progress(tuple(runs[-1]) if runs else (), len(runs))


def parse_line(line: str, where: str) -> dict[str, Any]:
    """One JSON line lr-lazyd wrote (native/lazyd/stats.c: lr_stats_json), its fields checked."""
    try:
        rec = json.loads(line)
    except ValueError as exc:
        raise DamagedRunRecord(f"{where}: not JSON ({exc})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("event"), str):
        raise DamagedRunRecord(f"{where}: not an lr-lazyd progress object (no \"event\")")
    for name in (*PROGRESS_FIELDS, *(f for f in OPTIONAL_FIELDS if f in rec)):
        if not is_number(rec.get(name)) or rec[name] < 0:
            raise DamagedRunRecord(f"{where}: {name!r} is {rec.get(name)!r}, expected a number >= 0")
    if not isinstance(rec.get("restore_finished"), bool):
        raise DamagedRunRecord(f"{where}: 'restore_finished' is {rec.get('restore_finished')!r}, expected true/false")
    if "hist_us" in rec:
        check_histogram(rec["hist_us"], where)
    return rec


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_histogram(hist: object, where: str) -> None:
    ok = isinstance(hist, list) and all(
        isinstance(b, list) and len(b) == 2 and is_number(b[0]) and b[0] > 0 and isinstance(b[1], int)
        and not isinstance(b[1], bool) and b[1] >= 0 for b in hist)
    if not ok:
        raise DamagedRunRecord(f"{where}: 'hist_us' is not a list of [upper bound in us, count] pairs")


def bucket_lower_us(upper_us: float) -> float:
    """The lower bound of an lr-lazyd latency bucket, from its upper bound (native/lazyd/stats.c: bucket_upper):
    1 ns wide below 16 ns, then 8 buckets per power of two."""
    upper_ns = round(upper_us * 1000)
    if upper_ns <= 16:
        return (upper_ns - 1) / 1000
    width = 1 << ((upper_ns - 1).bit_length() - 1 - 3)
    return (upper_ns - width) / 1000


def fault_positions(profile: Profile, index: LazyIndex | None) -> tuple[list[float], float, str]:
    """Each fault's place on the address axis, the axis' length, and its label."""
    if index is not None:
        before, at = [], 0
        for e in index.entries:
            before.append(at)
            at += e.nr_pages if e.lazy else 0
        pages = [before[f.record] + (f.addr - index.entries[f.record].start) // profile.page_size
                 for f in profile.faults]
        return [p * profile.page_size / MIB for p in pages], at * index.page_size / MIB, \
            "offset in the checkpoint's lazy memory (MiB;\nlazy index records in order, gaps removed)"
    rank = {a: i for i, a in enumerate(sorted({f.addr for f in profile.faults}))}
    return [float(rank[f.addr]) for f in profile.faults], float(max(len(rank), 1)), \
        "faulted pages ranked by address\n(no lazy index: gaps removed)"


def draw(data: ReportData, out: Path) -> tuple[int, int, dict[str, str]]:
    """The picture, written to out through out.part; (width, height, empty panels and why)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stored = data.stored  # a checkpoint's working set alone: the heatmap only
    fig = Figure(figsize=STORED_SIZE_IN if stored else FULL_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    empty: dict[str, str] = {}
    axes = fig.subplots(1 if stored else 3, 1, squeeze=False)[:, 0]
    lines = data.progress.lines if data.progress else ()
    heatmap(fig, axes[0], data, finished_at(lines), empty)
    if not stored:
        drain(axes[1], data.progress, empty)
        latency(axes[2], lines, data.progress is not None, empty)
        if lines and data.profile and data.profile.faults:
            axes[1].set_xlim(axes[0].get_xlim())
    fig.suptitle(f"lazyrestore report: {data.title}\n{headline(data, lines)}", fontsize=11)
    save(fig, out)
    width, height = fig.canvas.get_width_height()
    return width, height, empty


def save(fig: Any, out: Path) -> None:
    part = out.with_name(out.name + ".part")
    try:
        fig.savefig(part, format="png", dpi=DPI)
        os.replace(part, out)
    except OSError as exc:
        with contextlib.suppress(OSError):  # nothing there, or not a file: leave it
            part.unlink()
        raise ReportNotWritten(f"cannot write the report {out}: {exc.strerror or exc}") from None


def headline(data: ReportData, lines: tuple[dict[str, Any], ...]) -> str:
    done = last_done(lines)
    if data.progress is None:
        p = data.profile
        return "" if p is None else f"working set of {p.restores} lazy restore(s): {len(p.faults)} pages; " \
            "no progress is recorded beside a checkpoint (give a restore's RUN_DIR for the drain and latency)"
    if done is None:
        state = "failed" if any(r["event"] == "error" for r in lines) else "not done (running, or stopped)"
        return f"{len(lines)} progress lines; lr-lazyd {state}"
    return (f"{done.get('faults', 0)} faults; {done['total_bytes'] / MIB:.1f} MiB placed "
            f"({done['fault_bytes'] / MIB:.1f} by faults, {done['drain_bytes'] / MIB:.1f} by the drain); every page "
            f"placed {done.get('resident_s', 0):.3f} s after CRIU's restore finished")


def last_done(lines: tuple[dict[str, Any], ...]) -> dict[str, Any] | None:
    return next((r for r in reversed(lines) if r["event"] == "done"), None)


def finished_at(lines: tuple[dict[str, Any], ...]) -> tuple[float, str] | None:
    """When CRIU's restore finished (seconds since lr-lazyd started), and how that is known: lr-lazyd's own
    finished_t; else the "done" line's t less resident_s (done_ns is taken right before that line); else the
    first line reporting it (lr-lazyd reports about every 0.1 s, so up to that much late)."""
    ended = [r for r in lines if r["restore_finished"]]
    if not ended:
        return None
    exact = ended[-1].get("finished_t")
    if is_number(exact) and exact > 0:
        return float(exact), f"{exact:.3f} s"
    done = last_done(lines)
    if done is not None and is_number(done.get("resident_s")) and 0 < done["resident_s"] <= done["t"]:
        return done["t"] - done["resident_s"], f"{done['t'] - done['resident_s']:.3f} s"
    return float(ended[0]["t"]), f"first reported at {ended[0]['t']:.2f} s"


def say_empty(ax: Any, panel: str, why: str, empty: dict[str, str]) -> None:
    empty[panel] = why
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=10,
            color="0.3")


def heatmap(fig: Any, ax: Any, data: ReportData, finished: tuple[float, str] | None, empty: dict[str, str]) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import LogFormatter

    p = data.profile
    title = "Faults over time and address space (first fault on each page)"
    ax.set_title(title if p is None else f"{title}\n{recorded(p)}{holes(data)}", fontsize=10)
    ax.set_xlabel("time since lr-lazyd started (s)")
    if p is None or not p.faults:
        ax.set_ylabel("address")
        why = data.missing_profile or "no faults recorded: the drain placed every page before the tree touched it"
        say_empty(ax, "heatmap", why, empty)
        return
    y, y_len, label = fault_positions(p, data.index)
    x = [f.t_us / 1e6 for f in p.faults]
    t_len = max(x[-1], last_t(data), 1e-3) * 1.02  # room to see a mark at the end
    counts, xe, ye = np.histogram2d(x, y, bins=HEATMAP_BINS, range=[[0, t_len], [0, y_len]])
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_equal(counts.T, 0), cmap="viridis",
                         norm=LogNorm(vmin=1, vmax=max(2.0, float(counts.max()))))
    what = "pages" if p.restores > 1 else "faults"
    bar = fig.colorbar(mesh, ax=ax, label=f"{what} per cell ({(xe[1] - xe[0]) * 1000:.3g} ms x {cell(ye, data)})")
    bar.ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    bar.ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # plain numbers, not 2 x 10^0
    if len(x) <= SPARSE_FAULTS:  # a few faults are single cells: ring each one so that it can be seen
        ax.scatter(x, y, s=30, facecolors="none", edgecolors="tab:red", lw=0.8, label=f"each fault ({len(x)})")
    ax.set_ylabel(label)
    ax.set_xlim(0, t_len)
    ax.set_ylim(0, y_len)
    mark_finished(ax, finished)
    if finished is not None or len(x) <= SPARSE_FAULTS:
        ax.legend(loc="upper right", fontsize=8)


def recorded(p: Profile) -> str:
    if p.restores > 1:
        return f"{len(p.faults)} pages, merged from {p.restores} restores (each at its latest first fault)"
    cut = f" (of {p.faults_seen}: recording stops at {p.max_faults} faults or {p.max_ms} ms)" \
        if p.faults_seen > len(p.faults) else ""
    return f"{len(p.faults)} faults on lazy pages{cut}"


def holes(data: ReportData) -> str:
    """The faults the working set cannot hold: those answered with a zero page (no checkpoint page there)."""
    done = last_done(data.progress.lines) if data.progress else None
    zero = done.get("zero_pages") if done else None
    return f"; {zero} more hit holes (zero pages, not recorded)" if is_number(zero) and zero > 0 else ""


def cell(ye: Any, data: ReportData) -> str:
    size = float(ye[1] - ye[0])
    return f"{size:.3g} MiB" if data.index is not None else f"{size:.3g} pages"


def last_t(data: ReportData) -> float:
    return float(data.progress.lines[-1]["t"]) if data.progress and data.progress.lines else 0.0


def mark_finished(ax: Any, finished: tuple[float, str] | None) -> None:
    if finished is not None:
        ax.axvline(finished[0], color="tab:red", ls=":", lw=1.5, label=f"CRIU's restore finished ({finished[1]})")


def drain(ax: Any, progress: Progress | None, empty: dict[str, str]) -> None:
    ax.set_title("Memory placed over time (MiB): by faults and by the background drain", fontsize=10)
    ax.set_xlabel("time since lr-lazyd started (s)")
    ax.set_ylabel("MiB placed")
    if progress is None or len(progress.lines) < 2:
        why = f"no {STATS_LOG} in the run dir (lr-lazyd before --stats-log wrote none)" if progress is None else \
            f"{len(progress.lines)} line(s) in {STATS_LOG}: lr-lazyd stopped before its first progress tick"
        say_empty(ax, "drain", why, empty)
        return
    lines = progress.lines
    t = [r["t"] for r in lines]
    bands = [("fault_bytes", "placed on a fault", "tab:orange"), ("drain_bytes", "placed by the drain", "tab:blue")]
    if any(r.get("prefetch_bytes", 0) for r in lines):
        bands.append(("prefetch_bytes", "placed ahead from the stored working set", "tab:cyan"))
    ax.stackplot(t, *[[r.get(key, 0) / MIB for r in lines] for key, _, _ in bands],
                 labels=[label for _, label, _ in bands], colors=[color for _, _, color in bands], alpha=0.8)
    total = [r["total_bytes"] / MIB if r["total_bytes"] else math.nan for r in lines]  # 0: not known yet
    ax.plot(t, total, "k--", lw=1, drawstyle="steps-post", label="lazy memory to place (once known)")
    mark_events(ax, lines)
    if progress.runs > 1:
        ax.text(0.01, 0.97, f"{STATS_LOG} holds {progress.runs} lr-lazyd runs: the latest is drawn",
                transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xlim(0, max(t[-1], 1e-3) * 1.02)
    ax.set_ylim(bottom=0)


def mark_events(ax: Any, lines: tuple[dict[str, Any], ...]) -> None:
    done = last_done(lines)
    mark_finished(ax, finished_at(lines))
    if done is not None:
        ax.axvline(done["t"], color="tab:green", ls="-.", lw=1.2, label=f"every page placed ({done['t']:.2f} s)")
    for r in lines:
        if r["event"] == "error":
            ax.axvline(r["t"], color="red", lw=2, label=f"lr-lazyd error at {r['t']:.2f} s: "
                                                         f"{str(r.get('message', ''))[:70]}")
    ax.legend(loc="lower right", fontsize=8)


def latency(ax: Any, lines: tuple[dict[str, Any], ...], have_progress: bool, empty: dict[str, str]) -> None:
    ax.set_title("Fault latency (µs, log scale): time to serve one fault", fontsize=10)
    ax.set_xlabel("time to serve one fault (µs; lr-lazyd's histogram buckets)")
    ax.set_ylabel("faults per bucket")
    done = last_done(lines)
    hist = [b for b in done.get("hist_us", []) if b[1] > 0] if done else []
    if done is None or not hist:
        why = f"no {STATS_LOG} in the run dir" if not have_progress else \
            "no \"done\" line: lr-lazyd reports the histogram once every page is placed (it failed or is " \
            "still running)" if done is None else "no faults were timed: the drain placed every page first"
        say_empty(ax, "latency", why, empty)
        return
    lowers = [bucket_lower_us(u) for u, _ in hist]
    ax.bar(lowers, [n for _, n in hist], width=[u - lo for (u, _), lo in zip(hist, lowers)], align="edge",
           color="tab:purple", edgecolor="none")
    ax.set_xscale("log")
    for name, style in (("lat_p50_us", "--"), ("lat_p99_us", ":")):
        if is_number(done.get(name)) and done[name] > 0:
            ax.axvline(done[name], color="k", ls=style, lw=1, label=f"{name[4:7]} {done[name]:.1f} µs")
    max_us = done["lat_max_us"] if is_number(done.get("lat_max_us")) else max(u for u, _ in hist)
    ax.set_title(f"Fault latency (µs, log scale): {sum(n for _, n in hist)} faults timed, max {max_us:.1f} µs",
                 fontsize=10)
    ax.legend(loc="upper right", fontsize=8)


def summary_text(s: ReportSummary) -> str:
    where = f"faults placed by the lazy index of {s.images_dir}" if s.images_dir else \
        "faults ranked by address (no lazy index: give --images DIR to place them in the checkpoint)"
    text = (f"report: {s.png} ({s.width_px}x{s.height_px} px)\n"
            f"  {s.faults} faults in the heatmap, {s.progress_lines} progress lines; {where}")
    for panel, why in s.empty_panels.items():
        text += f"\n  {panel} panel empty: {why}"
    return text
