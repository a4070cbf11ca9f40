"""`inspect` on real checkpoints: page accounting checked against pycriu directly."""

from __future__ import annotations

from pathlib import Path

import google.protobuf
import pycriu.images

from lazyrestore.images import PE_LAZY

from .helpers import checkpoint, run_cli

MIB = 256
HOLE_EVERY = 16  # lr-workload leaves every 16th page of its region untouched


def pagemap_lazy_pages(images: Path) -> dict[int, int]:
    """PE_LAZY pages per pid, read straight from the pagemap images with pycriu."""
    counts = {}
    for path in images.glob("pagemap-*.img"):
        with open(path, "rb") as f:
            entries = pycriu.images.load(f)["entries"]
        pid = int(path.stem.split("-")[1])
        counts[pid] = sum(e["nr_pages"] for e in entries[1:] if e["flags"] & PE_LAZY)
    return counts


def test_pinned_protobuf_decodes_real_images(start_workload, workdir: Path) -> None:
    assert int(google.protobuf.__version__.split(".")[0]) == 7, "pyproject.toml pins the protobuf 7 runtime"
    w = start_workload(mib=16)
    checkpoint(w, workdir / "images")
    for name in ("pstree.img", "pagemap-1.img", "mm-1.img", "core-1.img", "inventory.img"):
        with open(workdir / "images" / name, "rb") as f:
            image = pycriu.images.load(f, pretty=True)
        assert image["entries"], name
    assert pagemap_lazy_pages(workdir / "images")[1] > 0


def test_inspect_reports_lazy_pages_of_the_workload(start_workload, workdir: Path) -> None:
    w = start_workload(mib=MIB, children=1)
    checkpoint(w, workdir / "images")
    res = run_cli("inspect", "--images", str(workdir / "images"))
    assert res.code == 0, res.stderr
    report = res.last("report")
    assert report["consistent"] is True
    from_pycriu = pagemap_lazy_pages(workdir / "images")
    by_pid = {p["pid"]: p for p in report["processes"]}
    for pid, lazy in from_pycriu.items():
        assert by_pid[pid]["pages_lazy"] == lazy
    assert report["index"]["lazy_pages"] == sum(from_pycriu.values()) == report["totals"]["pages_lazy"]
    # The workload's region is one anonymous private VMA whose touched pages are all lazy.
    page = report["page_size"]
    want = (MIB << 20) // page * (HOLE_EVERY - 1) // HOLE_EVERY
    region = [v for v in by_pid[1]["vmas"] if v["size"] == MIB << 20]
    assert len(region) == 1 and "VMA_ANON_PRIVATE" in region[0]["kinds"]
    assert region[0]["pages_lazy"] == want and region[0]["pages_eager"] == 0
    assert report["index"]["task_count"] == 2


def test_inspect_text_names_processes(start_workload, workdir: Path) -> None:
    import subprocess
    import sys
    w = start_workload(mib=16)
    checkpoint(w, workdir / "images")
    out = subprocess.run([sys.executable, "-m", "lazyrestore.cli", "inspect", "-D", str(workdir / "images")],
                         capture_output=True, text=True, check=True).stdout
    assert "consistent" in out and "pid 1 " in out and "anon_private" in out
