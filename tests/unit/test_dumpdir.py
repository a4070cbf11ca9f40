"""The images directory of a checkpoint: a refused non-empty one says what it holds; a failed dump is undone
(CRIU's log kept beside the directory), unless the images may be all that is left of the tree."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lazyrestore import dumpdir
from lazyrestore.errors import CorruptCheckpoint, CriuFailed, CriuRefused, ImagesDirError


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def failed_dump(images: Path) -> None:
    """What a failed CRIU dump leaves: its log and some images."""
    images.mkdir(exist_ok=True)
    (images / "dump.log").write_text("(00.1) Error (criu/sk-inet.c:200): inet: Connected TCP socket\n")
    for name in ("inventory.img", "pstree.img", "core-1.img"):
        (images / name).write_bytes(b"\0" * 16)


def test_describe_a_complete_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "lazyrestore").mkdir()
    (tmp_path / "lazyrestore" / "manifest.json").write_text(json.dumps({"checkpoint_id": "ab" * 16}))
    (tmp_path / "pstree.img").write_bytes(b"x")
    assert dumpdir.describe(tmp_path) == f"a complete checkpoint {'ab' * 16} (lazyrestore/manifest.json)"


def test_describe_a_failed_checkpoint(tmp_path: Path) -> None:
    failed_dump(tmp_path)
    text = dumpdir.describe(tmp_path)
    assert text == "a failed or interrupted checkpoint (dump.log, 3 CRIU image file(s), no lazyrestore/manifest.json)"


def test_describe_criu_images_without_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "pstree.img").write_bytes(b"x")
    assert "`lazyrestore index` makes it a checkpoint" in dumpdir.describe(tmp_path)


def test_describe_other_files(tmp_path: Path) -> None:
    for i in range(7):
        (tmp_path / f"f{i}").write_text("x")
    assert dumpdir.describe(tmp_path) == "7 other entries (f0, f1, f2, f3, f4 and 2 more)"
    assert "1 other entry (only)" == dumpdir.describe(_only(tmp_path / "one"))


def _only(path: Path) -> Path:
    path.mkdir()
    (path / "only").write_text("x")
    return path


def test_not_empty_is_an_images_dir_error_saying_what_to_do(tmp_path: Path) -> None:
    failed_dump(tmp_path)
    exc = dumpdir.not_empty("--images", tmp_path)
    assert isinstance(exc, ImagesDirError) and exc.exit_code == 6
    assert f"--images {tmp_path} is not empty: it holds a failed or interrupted checkpoint" in str(exc)
    assert "remove it or pick another directory" in str(exc)


def test_after_failed_dump_empties_the_dir_and_keeps_the_log_beside_it(tmp_path: Path) -> None:
    images = tmp_path / "images"
    failed_dump(images)
    (images / "lazyrestore").mkdir()
    exc = CriuRefused("dump", "the tree has an open TCP connection", str(images / "dump.log"), ["| x"],
                      resource="tcp-established")
    out = dumpdir.after_failed_dump(images, "dump.log", os.getpid(), exc)
    assert list(images.iterdir()) == [], "the images dir must be empty again, so that a retry works"
    log = tmp_path / "images.dump-failed.log"
    assert "Connected TCP socket" in log.read_text()
    assert isinstance(out, CriuRefused) and out.resource == "tcp-established" and out.exit_code == 8
    message = out.full_message()
    assert f"log: {log}" in message and str(images / "dump.log") not in message
    assert "empty again" in message.splitlines()[-1]


def test_after_failed_dump_keeps_the_images_of_a_tree_that_is_gone(tmp_path: Path) -> None:
    failed_dump(tmp_path)
    before = sorted(os.listdir(tmp_path))
    pid = dead_pid()
    exc = CriuFailed("dump", "x", str(tmp_path / "dump.log"), [])
    out = dumpdir.after_failed_dump(tmp_path, "dump.log", pid, exc)
    assert sorted(os.listdir(tmp_path)) == before
    assert f"process {pid} is no longer running" in out.full_message()


def test_after_failed_index_of_a_stopped_tree_keeps_the_images(tmp_path: Path) -> None:
    failed_dump(tmp_path)
    before = sorted(os.listdir(tmp_path))
    exc = CorruptCheckpoint(str(tmp_path / "pstree.img"), "truncated")
    out = dumpdir.after_failed_index(tmp_path, "dump.log", dead_pid(), False, exc)
    assert out is exc and out.exit_code == 7
    assert sorted(os.listdir(tmp_path)) == before
    assert "lazyrestore index --images" in out.full_message()


def test_after_failed_index_with_leave_running_clears(tmp_path: Path) -> None:
    images = tmp_path / "images"
    failed_dump(images)
    out = dumpdir.after_failed_index(images, "dump.log", os.getpid(), True, OSError(28, "No space left on device"))
    assert isinstance(out, ImagesDirError) and "No space left on device" in str(out)
    assert list(images.iterdir()) == []
    assert str(tmp_path / "images.dump-failed.log") in out.full_message()


def test_clear_leaves_the_log_when_it_cannot_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed_dump(tmp_path / "images")

    def no_move(*args: object) -> None:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(dumpdir.os, "replace", no_move)
    monkeypatch.setattr(dumpdir.shutil, "copyfile", no_move)
    kept, stayed = dumpdir.clear(tmp_path / "images", "dump.log")
    assert kept == tmp_path / "images" / "dump.log" and stayed == []
    assert os.listdir(tmp_path / "images") == ["dump.log"]
