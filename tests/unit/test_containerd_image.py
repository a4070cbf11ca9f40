"""lazyrestore/containerd.py: a containerd checkpoint image (OCI archive) read, its CRIU tar unpacked, and the kit
image written with the kit in the CRIU tar's place, every other blob kept and every digest right."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from lazyrestore import containerd
from lazyrestore.errors import ImagesDirError, UsageError

from .tarballs import small_kit, tar_bytes


def blob(data: bytes, media_type: str) -> tuple[dict, str, bytes]:
    digest = hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}, f"blobs/sha256/{digest}", data


def checkpoint_image(path: Path, criu_files: dict[str, bytes] | None, index_blob: bytes | None = None) -> Path:
    """An archive like `ctr images export --skip-manifest-json` of a checkpoint image."""
    files: dict[str, bytes] = {}
    entries = []
    other_d, other_n, other = blob(b"rw layer", "application/vnd.oci.image.layer.v1.tar+gzip")
    files[other_n] = other
    entries.append(other_d)
    if criu_files is not None:
        criu_d, criu_n, criu = blob(tar_bytes(criu_files), containerd.CRIU_TAR)
        files[criu_n] = criu
        entries.append(criu_d)
    index = index_blob if index_blob is not None else json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    index_d, index_n, _ = blob(index, containerd.OCI_INDEX)
    files[index_n] = index
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
        {**index_d, "annotations": {"io.containerd.image.name": "x/ckpt:1"}}]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    path.write_bytes(tar_bytes(files))
    return path


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


CRIU = {"inventory.img": b"inv", "pages-1.img": b"p" * 4096, "lazyrestore/manifest.json": b"{}"}


def test_read_and_unpack(tmp_path: Path) -> None:
    img = containerd.read(checkpoint_image(tmp_path / "c.tar", CRIU))
    out = containerd.unpack(img, tmp_path / "images")
    for name, data in CRIU.items():
        assert (out / name).read_bytes() == data


def test_the_kit_image_replaces_only_the_criu_tar(tmp_path: Path) -> None:
    src = checkpoint_image(tmp_path / "c.tar", CRIU)
    img = containerd.read(src)
    kit = small_kit(tmp_path / "kit")
    out = containerd.pack_kit(img, kit, tmp_path / "kit.tar")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    files = members(out)
    for name, data in files.items():  # every blob is named by its digest
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    again = containerd.read(out)
    assert again.top["manifests"][0]["annotations"] == {"io.containerd.image.name": "x/ckpt:1"}
    kept = [m for m in again.index["manifests"] if m["mediaType"] != containerd.CRIU_TAR]
    assert kept == [m for m in img.index["manifests"] if m["mediaType"] != containerd.CRIU_TAR]
    assert containerd.unpack(again, tmp_path / "dest") == tmp_path / "dest"
    assert sorted(str(p.relative_to(tmp_path / "dest")) for p in (tmp_path / "dest").rglob("*") if p.is_file()) == \
        ["inventory.img", "lazyrestore/source.json"]
    assert img.criu_blob not in files  # the pages are gone


def test_a_checkpoint_without_criu_images_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImagesDirError, match="holds no CRIU images.*checkpoint a container once"):
        containerd.read(checkpoint_image(tmp_path / "c.tar", None))


def test_not_a_checkpoint_image(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(tar_bytes({"config.dump": b"{}"}))
    with pytest.raises(ImagesDirError, match="no OCI index"):
        containerd.read(tmp_path / "x.tar")
    (tmp_path / "y.tar").write_bytes(b"hello" * 200)
    with pytest.raises(UsageError, match="not a tar archive"):
        containerd.read(tmp_path / "y.tar")


def test_a_bad_digest_is_named(tmp_path: Path) -> None:
    index = json.dumps({"manifests": [{"mediaType": containerd.CRIU_TAR, "digest": "sha256:../../etc"}]}).encode()
    with pytest.raises(ImagesDirError, match="is not sha256:<64 hex digits>"):
        containerd.read(checkpoint_image(tmp_path / "c.tar", CRIU, index))


def test_a_criu_tar_leading_out_is_refused(tmp_path: Path) -> None:
    img = containerd.read(checkpoint_image(tmp_path / "c.tar", {**CRIU, "../evil": b"x"}))
    with pytest.raises(ImagesDirError, match="refused member '../evil'"):
        containerd.unpack(img, tmp_path / "images")
    assert not (tmp_path / "evil").exists()
