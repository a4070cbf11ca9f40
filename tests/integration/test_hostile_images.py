"""Hostile checkpoints: refused before anything runs from them, with the file named.

test_corruption.py flips bytes; here files are truncated, replaced by another
checkpoint's, or the manifest is rewritten to agree with the damage (sizes and
SHA-256 "fixed up", as a careless tool would), so that the deeper checks must
catch it. A refusal must come before any process runs: no event after "started"
but the error, no restore work dir, and no process holding the workload's log.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pycriu import images as criu_images

from lazyrestore import lazyindex
from lazyrestore.daemons import LAZYD_LOG
from lazyrestore.manifest import sha256_file

from .helpers import run_cli, small_checkpoint
from .test_corruption import damaged_copy, flip_byte

INDEX = "lazyrestore/index.bin"
MANIFEST = "lazyrestore/manifest.json"
MODES = [pytest.param((), id="eager"), pytest.param(("--lazy",), id="lazy")]


@pytest.fixture(scope="module")
def pristine() -> Iterator[Path]:
    with small_checkpoint("lazyrestore-hostile-images-", children=1) as images:
        yield images


@pytest.fixture(scope="module")
def other() -> Iterator[Path]:
    """Another checkpoint of the same workload: its files look right, its bytes are not this one's."""
    with small_checkpoint("lazyrestore-hostile-other-", children=1) as images:
        yield images


@dataclass(frozen=True)
class Copy:
    """A copy of the pristine checkpoint, to damage; log: the workload's log, held open by a restored tree."""

    images: Path
    log: Path


@pytest.fixture
def copy(pristine: Path, workdir: Path) -> Copy:
    return Copy(damaged_copy(pristine, workdir), pristine.parent / "app.log")


def edit_manifest(images: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = images / MANIFEST
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def relist(images: Path, name: str) -> None:
    """The manifest made to agree with the file as it is now (size, and SHA-256 where it keeps one)."""
    path = images / name

    def update(raw: dict[str, Any]) -> None:
        for entry in [*raw["files"], *raw["pages_files"], *raw.get("lazy_view", []), raw["index"]]:
            if entry["name"] == name:
                entry["size"] = path.stat().st_size
                entry["sha256"] = sha256_file(path) if entry["sha256"] is not None else None
    edit_manifest(images, update)


def holders(path: Path) -> list[int]:
    """Pids of the processes with path open (a restored workload keeps its log open)."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                found.append(int(fd_dir.parent.name))
        except OSError:
            continue  # exited meanwhile, or a kernel thread
    return found


def expect_refused(copy: Copy, reaper, name: str, mode: tuple[str, ...] = ()) -> str:
    """`restore` refuses the copy with exit 7 and an error naming `name`, before anything ran."""
    res = run_cli("restore", "--images", str(copy.images), *mode)
    for e in res.events:  # should a restore get through, its tree is killed at teardown
        if e.get("event") in ("summary", "resumed"):
            reaper.add(e["pid"])
    assert res.code == 7, f"exit {res.code}, stderr: {res.stderr}"
    message = res.last("error")["message"]
    assert name in message, message
    assert [e["event"] for e in res.events] == ["started", "error"], res.events
    runs = copy.images / "lazyrestore" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a refused restore must not start CRIU or lr-lazyd"
    assert holders(copy.log) == [], "a process of the checkpoint runs"
    return message


def restored(copy: Copy, reaper) -> int:
    """The copy restores (eagerly): its root pid, killed at teardown."""
    res = run_cli("restore", "--images", str(copy.images))
    pid = reaper.add(res.last("summary")["pid"]) if res.code == 0 else None
    assert res.code == 0, res.stderr
    assert pid in holders(copy.log)
    return pid


# ---------------------------------------------------------------- the index

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("relisted", [False, True], ids=["manifest-as-is", "manifest-relisted"])
@pytest.mark.parametrize("size", ["zero", "half", "header-only"])
def test_truncated_index(copy: Copy, reaper, size: str, relisted: bool,
                         mode: tuple[str, ...]) -> None:
    images = copy.images
    path = images / INDEX
    os.truncate(path, {"zero": 0, "half": path.stat().st_size // 2, "header-only": lazyindex.HEADER.size}[size])
    if relisted:
        relist(images, INDEX)
    message = expect_refused(copy, reaper, "index.bin", mode)
    assert ("truncated" if relisted and size != "half" else "bytes") in message


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("relisted", [False, True], ids=["manifest-as-is", "manifest-relisted"])
def test_index_from_another_checkpoint(copy: Copy, other: Path, reaper, relisted: bool,
                                       mode: tuple[str, ...]) -> None:
    images = copy.images
    shutil.copy(other / INDEX, images / INDEX)
    if relisted:
        relist(images, INDEX)
    message = expect_refused(copy, reaper, "index.bin", mode)
    if relisted:
        assert "belongs to checkpoint" in message


# ---------------------------------------------------------------- the manifest

def set_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw.__setitem__(key, value)


def set_file_field(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        next(f for f in raw["files"] if f["name"] == name)[key] = value
    return change


def move_to_pages_files(name: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        entry = next(f for f in raw["files"] if f["name"] == name)
        raw["files"].remove(entry)
        raw["pages_files"].append({**entry, "sha256": None})
    return change


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("content", [
    pytest.param(lambda text: text[: len(text) // 2], id="truncated-half"),
    pytest.param(lambda text: "", id="empty"),
    pytest.param(lambda text: "lazyrestore manifest, trust me\n", id="not-json"),
    pytest.param(lambda text: "\udcff\udcfe{}", id="not-utf8"),
    pytest.param(lambda text: "[]", id="json-list"),
])
def test_manifest_that_is_not_a_manifest(copy: Copy, reaper, content: Callable[[str], str],
                                         mode: tuple[str, ...]) -> None:
    images = copy.images
    path = images / MANIFEST
    path.write_bytes(content(path.read_text()).encode("utf-8", "surrogateescape"))
    expect_refused(copy, reaper, "manifest.json", mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("change, damaged", [
    pytest.param(set_field("processes", "2"), None, id="processes-a-string"),
    pytest.param(set_field("files", {}), None, id="files-an-object"),
    pytest.param(set_field("index", None), None, id="index-null"),
    pytest.param(set_field("checkpoint_id", 123), None, id="checkpoint-id-a-number"),
    pytest.param(set_field("criu_version", 4.1), None, id="criu-version-a-number"),
    pytest.param(set_field("created", None), None, id="created-null"),
    pytest.param(set_file_field("fdinfo-2.img", "size", "44"), None, id="size-a-string"),
    pytest.param(set_file_field("pstree.img", "name", "../pstree.img"), None, id="name-outside-the-dir"),
    # Without a SHA-256 to compare, a changed metadata image would reach CRIU: the manifest is refused.
    pytest.param(set_file_field("fdinfo-2.img", "sha256", None), "fdinfo-2.img", id="sha256-null"),
    pytest.param(move_to_pages_files("core-1.img"), "core-1.img", id="image-listed-as-pages"),
])
def test_manifest_with_a_wrong_field(copy: Copy, reaper, change: Callable[[dict[str, Any]], None],
                                     damaged: str | None, mode: tuple[str, ...]) -> None:
    images = copy.images
    edit_manifest(images, change)
    if damaged is not None:
        flip_byte(images / damaged, 9)
    expect_refused(copy, reaper, "manifest.json", mode)


def add_entry(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["files"].append({"name": name, "size": 44, "sha256": "0" * 64})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, damage", [
    pytest.param("core-9.img", lambda images: edit_manifest(images, add_entry("core-9.img")), id="listed-never-there"),
    pytest.param("fs-2.img", lambda images: (images / "fs-2.img").unlink(), id="listed-image-removed"),
    pytest.param("pages-2.img", lambda images: (images / "pages-2.img").unlink(), id="listed-pages-removed"),
    pytest.param("view-pagemap-2.img", lambda images: (images / "lazyrestore/view-pagemap-2.img").unlink(),
                 id="listed-view-removed"),
])
def test_manifest_lists_a_file_that_is_not_there(copy: Copy, reaper, name: str,
                                                 damage: Callable[[Path], None], mode: tuple[str, ...]) -> None:
    images = copy.images
    damage(images)
    assert "missing" in expect_refused(copy, reaper, name, mode)


@pytest.mark.parametrize("mode", MODES)
def test_unlisted_file_beside_the_images_is_refused(copy: Copy, reaper,
                                                    mode: tuple[str, ...]) -> None:
    """CRIU opens images by name, so any unlisted file there might be read: refused (logs aside)."""
    images = copy.images
    (images / "notes.txt").write_text("left here by someone\n")
    assert "not listed" in expect_refused(copy, reaper, "notes.txt", mode)


def test_unlisted_file_in_the_metadata_dir_is_ignored(copy: Copy, reaper) -> None:
    """lazyrestore/ holds restore runs and more; only the files the manifest lists are read from it."""
    images = copy.images
    (images / "lazyrestore" / "view-pagemap-9.img").write_bytes(b"not read by anyone")
    restored(copy, reaper)


# ---------------------------------------------------------------- the CRIU that made it

def set_image_version(images: Path, version: int) -> None:
    """inventory.img rewritten (through pycriu) with another image format version; the manifest agrees."""
    path = images / "inventory.img"
    with open(path, "rb") as f:
        image = criu_images.load(f)
    image["entries"][0]["img_version"] = version
    with open(path, "wb") as f:
        criu_images.dump(image, f)
    relist(images, "inventory.img")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("version", [1, 3])
def test_other_criu_image_format(copy: Copy, reaper, version: int, mode: tuple[str, ...]) -> None:
    images = copy.images
    set_image_version(images, version)
    message = expect_refused(copy, reaper, "inventory.img", mode)
    made_by = json.loads((images / "lazyrestore" / "manifest.json").read_text())["criu_version"]
    assert f"format version {version}" in message and f"made by CRIU {made_by}" in message


def test_other_criu_release_with_the_same_format_restores(copy: Copy, reaper) -> None:
    """The release that dumped is recorded, not required: CRIU reads any image of its format."""
    images = copy.images
    edit_manifest(images, set_field("criu_version", "4.0"))
    restored(copy, reaper)


# ---------------------------------------------------------------- page data

def swap_pages(images: Path, other: Path, name: str) -> None:
    """images/name replaced by other's file of that name, cut or padded to the same size."""
    size = (images / name).stat().st_size
    shutil.copy(other / name, images / name)
    os.truncate(images / name, size)


def test_pages_file_from_another_checkpoint_of_the_same_size(pristine: Path, copy: Copy, other: Path,
                                                             reaper) -> None:
    swap_pages(copy.images, other, "pages-1.img")
    assert sha256_file(copy.images / "pages-1.img") != sha256_file(pristine / "pages-1.img"), "the swap changed nothing"
    assert "checksum" in expect_refused(copy, reaper, "pages-1.img")



def test_lazy_restore_stops_at_the_first_block_of_a_swapped_pages_file(copy: Copy, other: Path, reaper) -> None:
    """A lazy restore checks page data block by block as lr-lazyd places it, not before the tree resumes
    (that would read every page): the swap shows at the first block placed, and the tree is killed
    before it reads a wrong byte. Whether that happens during CRIU's restore or after it depends on
    which page is touched first; either way lr-lazyd's error is the one reported (exit 10)."""
    swap_pages(copy.images, other, "pages-1.img")
    res = run_cli("restore", "--images", str(copy.images), "--lazy")
    for e in res.events:
        if e.get("event") == "resumed":
            reaper.add(e["pid"])
    assert res.code == 10, f"exit {res.code}, stderr: {res.stderr}"
    assert "pages-1.img" in res.last("error")["message"], res.last("error")
    assert not any(e["event"] == "summary" for e in res.events)
    deadline = time.monotonic() + 10  # the guardian's SIGKILL may land just after lazyrestore returns
    while holders(copy.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holders(copy.log) == [], "the restored tree must not outlive the failed restore"
    (lazyd_log,) = (copy.images / "lazyrestore" / "runs").glob(f"*/{LAZYD_LOG}")
    text = lazyd_log.read_text(errors="replace")
    assert "pages-1.img" in text and "fails its checksum" in text, text[-2000:]
