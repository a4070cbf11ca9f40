"""containerd's checkpoint image (`ctr containers checkpoint --task --image`, exported with `ctr images export
--skip-manifest-json`): the CRIU images inside it unpacked to be served, and the same image with a kit in their place.

The export is an OCI image archive: index.json names the checkpoint's index (media type
application/vnd.oci.image.index.v1+json), whose entries are blobs: the runtime options, the container's image
manifest, its rw layer, the checkpoint config and options, and CRIU's images as one tar
(application/vnd.containerd.container.criu.checkpoint.criu.tar). containerd restores (`ctr containers restore`) by
unpacking that tar into a temporary directory and running runc restore there, without --lazy-pages; so
pack_kit() puts `serve --kit`'s kit in the tar's place (new digest and size in the checkpoint index, a new index
digest in index.json), and the plugin finds lazyrestore/source.json in that directory and makes the restore lazy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImagesDirError, UsageError

CRIU_TAR = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class CheckpointImage:
    """An exported checkpoint image: its path, index.json, the checkpoint index and where its blobs are."""

    path: Path
    top: dict[str, Any]  # index.json
    index: dict[str, Any]  # the checkpoint's index
    index_blob: str  # member names in the archive
    criu_blob: str


def blob_name(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"digest {digest!r} is not sha256:<64 hex digits>")
    return f"blobs/sha256/{hexdigest}"


def _json_member(tar: tarfile.TarFile, name: str, what: str, path: Path) -> dict[str, Any]:
    try:
        f = tar.extractfile(name)
        data = json.loads(f.read()) if f is not None else None
    except KeyError:
        data = None
    except ValueError as exc:
        raise ImagesDirError(f"--containerd-image {path}: {what} ({name}) is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ImagesDirError(f"--containerd-image {path}: no {what} ({name}); expected the archive of `ctr images "
                             "export --skip-manifest-json FILE REF` of a `ctr containers checkpoint --task` image")
    return data


def read(path: Path) -> CheckpointImage:
    """The archive's checkpoint index and CRIU tar, or an error saying what is missing."""
    try:
        with tarfile.open(path) as tar:
            top = _json_member(tar, "index.json", "OCI index", path)
            manifests = top.get("manifests")
            if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict) \
                    or manifests[0].get("mediaType") != OCI_INDEX:
                raise ImagesDirError(f"--containerd-image {path}: index.json does not name one checkpoint index "
                                     f"({OCI_INDEX}); is it a checkpoint image of `ctr containers checkpoint`?")
            index_blob = blob_name(str(manifests[0].get("digest")))
            index = _json_member(tar, index_blob, "checkpoint index", path)
    except (tarfile.TarError, EOFError) as exc:
        raise UsageError(f"--containerd-image {path}: not a tar archive ({exc}); expected the file of `ctr images "
                         "export --skip-manifest-json`") from None
    except OSError as exc:
        raise UsageError(f"--containerd-image {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise ImagesDirError(f"--containerd-image {path}: {exc}") from None
    found = [m for m in index.get("manifests", []) if isinstance(m, dict) and m.get("mediaType") == CRIU_TAR]
    if len(found) != 1:
        raise ImagesDirError(f"--containerd-image {path}: the checkpoint holds no CRIU images ({CRIU_TAR}); "
                             "checkpoint with `ctr containers checkpoint --task`. containerd 1.6 leaves them out, "
                             "without an error, of a second checkpoint of a container (its spec is already in the "
                             "content store): checkpoint a container once")
    try:
        return CheckpointImage(path, top, index, index_blob, blob_name(str(found[0].get("digest"))))
    except ValueError as exc:
        raise ImagesDirError(f"--containerd-image {path}: {exc}") from None


def unpack(img: CheckpointImage, dest: Path) -> Path:
    """CRIU's images (the checkpoint's CRIU tar) into dest, nothing outside it (tarfile's "data" filter)."""
    with tarfile.open(img.path) as outer:
        try:
            blob = outer.extractfile(img.criu_blob)
        except KeyError:
            blob = None
        if blob is None:
            raise ImagesDirError(f"--containerd-image {img.path}: the CRIU tar {img.criu_blob} is not in the archive")
        with tarfile.open(fileobj=blob, mode="r|") as inner:
            for m in inner:
                try:
                    inner.extract(m, dest, filter="data")
                except tarfile.FilterError as exc:
                    raise ImagesDirError(f"--containerd-image {img.path}: refused member {m.name!r} of the CRIU "
                                         f"tar: {exc}") from None
    if not (dest / "inventory.img").is_file():
        raise ImagesDirError(f"--containerd-image {img.path}: its CRIU tar holds no inventory.img")
    return dest


def _tar_of(kit: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(kit.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(kit)), recursive=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _descriptor(data: bytes, media_type: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def pack_kit(img: CheckpointImage, kit: Path, out: Path) -> Path:
    """The checkpoint image at out (mode 0600: it holds the secret), its CRIU tar replaced by a tar of the kit
    directory; every other blob as it was. Written to out.tmp first, then renamed."""
    kit_tar = _tar_of(kit)
    kit_d = _descriptor(kit_tar, CRIU_TAR)
    index = {**img.index, "manifests": [{**m, "digest": kit_d["digest"], "size": kit_d["size"]}
                                        if m.get("mediaType") == CRIU_TAR else m for m in img.index["manifests"]]}
    index_data = json.dumps(index).encode()
    index_d = {**img.top["manifests"][0], **_descriptor(index_data, OCI_INDEX)}
    top = {**img.top, "manifests": [index_d]}
    replaced = {img.criu_blob, img.index_blob, "index.json"}
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as dst, tarfile.open(img.path) as src:
            for m in src:
                if m.name not in replaced:
                    dst.addfile(m, src.extractfile(m) if m.isfile() else None)
            _add(dst, blob_name(kit_d["digest"]), kit_tar)
            _add(dst, blob_name(index_d["digest"]), index_data)
            _add(dst, "index.json", json.dumps(top).encode())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
