"""A runtime's checkpoint archive served as it is: Podman's (or CRI-O's) export, or containerd's checkpoint image.

`serve --podman-archive FILE` / `--containerd-image FILE` unpack CRIU's images out of the archive (podman.py,
containerd.py), index them if the plugin did not, and serve them; `--kit OUT` is then the same kind of archive with
the kit in place of CRIU's images, which the runtime on the destination imports and restores as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import containerd, dumpindex, manifest, podman
from .output import Reporter

KINDS = {"podman": "--podman-archive", "containerd": "--containerd-image"}
DEST_COMMAND = {"podman": "podman container restore --import {kit}",
                "containerd": "ctr images import --no-unpack {kit}; ctr containers restore --rw --live ID REF"}


@dataclass(frozen=True)
class Unpacked:
    """CRIU's images out of an archive, and how to write the destination's archive from a kit directory."""

    kind: str
    images: Path
    pack_kit: Callable[[Path, Path], Path]  # (kit directory, new archive) -> the new archive


def check(kind: str, archive: Path) -> None:
    """A readable archive of that kind (its format checked; UsageError/ImagesDirError naming the option)."""
    if kind == "podman":
        podman.compression(archive)
    else:
        containerd.read(archive)


def unpack(kind: str, archive: Path, dest: Path, reporter: Reporter) -> Unpacked:
    """The archive's CRIU images into dest (new or empty), indexed."""
    reporter.progress(f"unpacking {archive} into {dest}")
    if kind == "podman":
        images = podman.unpack(archive, dest)
        pack = lambda kit, out: podman.pack_kit(dest, kit, out)  # noqa: E731
    else:
        img = containerd.read(archive)
        images = containerd.unpack(img, dest)
        pack = lambda kit, out: containerd.pack_kit(img, kit, out)  # noqa: E731
    if not (images / manifest.META_DIR / manifest.MANIFEST_NAME).exists():
        cid, lazy_pages, _ = dumpindex.index_existing(images)
        reporter.progress(f"indexed checkpoint {cid} ({lazy_pages} lazy pages): the plugin was not installed when "
                          "it was made")
    return Unpacked(kind, images, pack)


def default_unpack_dir(archive: Path) -> Path:
    """Beside the archive: NAME.tar[.gz|.zst] -> NAME.unpacked."""
    name = archive.name
    for suffix in (".tar.zst", ".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return archive.with_name(name + ".unpacked")
