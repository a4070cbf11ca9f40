"""lazyrestore/podman.py: Podman's checkpoint archive read in each compression, unpacked safely, and the kit
archive written with Podman's files and only the kit under checkpoint/."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazyrestore import archives, podman
from lazyrestore.errors import ImagesDirError, UsageError

from .tarballs import small_kit, tar_bytes

FILES = {"config.dump": b"{}", "spec.dump": b"{}", "rootfs-diff.tar": b"x" * 10,
         "checkpoint/inventory.img": b"inv", "checkpoint/pages-1.img": b"p" * 8192,
         "checkpoint/lazyrestore/secret": b"s" * 32}


def write_archive(path: Path, data: bytes, kind: str) -> Path:
    if kind == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    elif kind == "gzip":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["zstd", "gzip", "none"])
def test_unpack_in_each_compression(tmp_path: Path, kind: str) -> None:
    archive = write_archive(tmp_path / "a.tar", tar_bytes(FILES), kind)
    assert podman.compression(archive) == kind
    images = podman.unpack(archive, tmp_path / "out")
    assert images == tmp_path / "out" / "checkpoint"
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"hello" * 200)
    with pytest.raises(UsageError, match="not a tar archive"):
        podman.compression(tmp_path / "x.tar")


def test_an_archive_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", tar_bytes({"config.dump": b"{}", "other": b""}), "none")
    with pytest.raises(ImagesDirError, match="no spec.dump, checkpoint/inventory.img: not a checkpoint archive"):
        podman.unpack(archive, tmp_path / "out")


def test_members_outside_the_directory_are_refused(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", tar_bytes({**FILES, "../evil": b"x"}), "none")
    with pytest.raises(ImagesDirError, match="refused member '../evil'"):
        podman.unpack(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_absolute_members_land_inside(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", tar_bytes({**FILES, str(tmp_path / "abs"): b"x"}), "none")
    podman.unpack(archive, tmp_path / "out")
    assert not (tmp_path / "abs").exists()
    assert (tmp_path / "out" / str(tmp_path / "abs").lstrip("/")).read_bytes() == b"x"


def test_a_link_leading_out_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("checkpoint/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = write_archive(tmp_path / "a.tar", tar_bytes(FILES, [link]), "none")
    with pytest.raises(ImagesDirError, match="refused member 'checkpoint/escape'"):
        podman.unpack(archive, tmp_path / "out")


def test_a_truncated_archive_is_named(tmp_path: Path) -> None:
    data = zstandard.ZstdCompressor().compress(tar_bytes(FILES))
    archive = tmp_path / "a.tar"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImagesDirError, match="damaged or truncated archive"):
        podman.unpack(archive, tmp_path / "out")


def test_the_kit_keeps_podmans_files_and_only_the_kit_as_checkpoint(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", tar_bytes(FILES), "zstd")
    unpacked = tmp_path / "out"
    podman.unpack(archive, unpacked)
    kit = small_kit(tmp_path / "kit")
    out = podman.pack_kit(unpacked, kit, tmp_path / "kit.tar")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(out) as tar:
        names = {os.path.normpath(m.name) for m in tar if m.isfile()}
    assert names == {"config.dump", "spec.dump", "rootfs-diff.tar", "checkpoint/inventory.img",
                     "checkpoint/lazyrestore/source.json"}
    assert not (tmp_path / "kit.tar.tmp").exists()


def test_default_unpack_dir() -> None:
    assert archives.default_unpack_dir(Path("/m/web.tar.zst")) == Path("/m/web.unpacked")
    assert archives.default_unpack_dir(Path("/m/web.tar")) == Path("/m/web.unpacked")
    assert archives.default_unpack_dir(Path("/m/web")) == Path("/m/web.unpacked")
