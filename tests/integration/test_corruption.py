"""Damaged checkpoints are refused before anything runs, with the file named."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import run_cli, small_checkpoint


@pytest.fixture(scope="module")
def pristine() -> Iterator[Path]:
    """One small checkpoint shared by the tests; each damages its own copy."""
    with small_checkpoint("lazyrestore-corrupt-", children=1) as images:
        yield images


def damaged_copy(pristine: Path, workdir: Path) -> Path:
    copy = workdir / "images"
    shutil.copytree(pristine, copy)
    return copy


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x5A
    path.write_bytes(bytes(data))


def expect_refused(images: Path, code: int, name: str) -> str:
    res = run_cli("restore", "--images", str(images))
    assert res.code == code, f"exit {res.code}, stderr: {res.stderr}"
    err = res.last("error")
    assert name in err["message"], err["message"]
    assert not any(e.get("event") == "summary" for e in res.events)
    return err["message"]


@pytest.mark.parametrize("name", ["core-1.img", "mm-1.img", "pagemap-2.img", "pstree.img", "fdinfo-2.img"])
def test_flipped_byte_in_metadata_image(pristine: Path, workdir: Path, name: str) -> None:
    images = damaged_copy(pristine, workdir)
    flip_byte(images / name, 17)
    expect_refused(images, 7, name)


def test_flipped_byte_in_page_data(pristine: Path, workdir: Path) -> None:
    images = damaged_copy(pristine, workdir)
    size = (images / "pages-1.img").stat().st_size
    flip_byte(images / "pages-1.img", size // 2)
    assert "checksum" in expect_refused(images, 7, "pages-1.img")


def test_truncated_pages_file(pristine: Path, workdir: Path) -> None:
    images = damaged_copy(pristine, workdir)
    path = images / "pages-2.img"
    os.truncate(path, path.stat().st_size - 4096)
    expect_refused(images, 7, "pages-2.img")


def test_flipped_byte_in_index(pristine: Path, workdir: Path) -> None:
    images = damaged_copy(pristine, workdir)
    flip_byte(images / "lazyrestore" / "index.bin", 100)
    expect_refused(images, 7, "index.bin")


def test_image_from_another_checkpoint_mixed_in(pristine: Path, workdir: Path) -> None:
    images = damaged_copy(pristine, workdir)
    shutil.copy(images / "core-2.img", images / "core-7.img")
    expect_refused(images, 7, "core-7.img")


def test_missing_manifest_is_not_a_checkpoint(pristine: Path, workdir: Path) -> None:
    images = damaged_copy(pristine, workdir)
    (images / "lazyrestore" / "manifest.json").unlink()
    expect_refused(images, 7, "manifest.json")


def test_inspect_reports_the_damage(pristine: Path, workdir: Path) -> None:
    images = damaged_copy(pristine, workdir)
    flip_byte(images / "mm-2.img", 9)
    res = run_cli("inspect", "--images", str(images))
    assert res.code == 7
    report = res.last("report") if any(e["event"] == "report" for e in res.events) else res.last("error")
    text = report.get("problem") or report.get("message")
    assert "mm-2.img" in text


@pytest.mark.parametrize("name", ["lazyrestore/view-pagemap-2.img", "lazyrestore/view-pages-1.img"])
def test_flipped_byte_in_the_lazy_view(pristine: Path, workdir: Path, name: str) -> None:
    images = damaged_copy(pristine, workdir)
    flip_byte(images / name, 5)
    res = run_cli("restore", "--images", str(images), "--lazy")
    assert res.code == 7, f"exit {res.code}, stderr: {res.stderr}"
    assert name in res.last("error")["message"]
    assert not any(e.get("event") == "resumed" for e in res.events)
