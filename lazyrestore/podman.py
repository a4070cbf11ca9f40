"""Podman's checkpoint archive (`podman container checkpoint --export`, also what CRI-O writes for Kubernetes'
kubelet checkpoint API): unpacked to be served, and a kit in the same layout without the pages.

The archive is a tar, compressed with zstd (Podman's default), gzip or nothing (`--compress`):

  config.dump, spec.dump, network.status, stats-dump, rootfs-diff.tar, devshm-checkpoint.tar, ...  (Podman's)
  checkpoint/            CRIU's images as runc dumped them; checkpoint/lazyrestore/ when the plugin indexed them

unpack() writes it into a directory (DIR/checkpoint is then served like any images dir) and indexes the
checkpoint if the plugin did not. pack_kit() writes the destination's archive: every member outside checkpoint/
as it was, and under checkpoint/ only the kit (`serve --kit`: the files CRIU and runc read before the plugin runs,
lazyrestore/source.json and the secret). `podman container restore --import KIT.tar` on the destination imports it
(Podman detects the compression, none here), runc restores from the container's checkpoint/ dir, and the plugin
makes that restore lazy and fetches everything else from the source.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import ImagesDirError, UsageError

CHECKPOINT_DIR = "checkpoint"
# What makes an archive Podman's (or CRI-O's) checkpoint: Podman reads both before it calls the runtime.
REQUIRED = ("config.dump", "spec.dump", f"{CHECKPOINT_DIR}/inventory.img")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def compression(path: Path) -> str:
    """"zstd", "gzip" or "none" (a plain tar: "ustar" at offset 257); anything else is not a checkpoint archive."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise UsageError(f"--podman-archive {path}: cannot read it: {exc.strerror}") from None
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head[257:262] == b"ustar":
        return "none"
    raise UsageError(f"--podman-archive {path}: not a tar archive (plain, gzip or zstd), as `podman container "
                     "checkpoint --export` writes")


@contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """The archive as a tar stream, read once from start to end (zstd through the zstandard library)."""
    kind = compression(path)
    with open(path, "rb") as raw:
        stream: IO[bytes] = raw
        if kind == "zstd":
            import zstandard
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            with tarfile.open(fileobj=stream, mode="r|gz" if kind == "gzip" else "r|") as tar:
                yield tar
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise ImagesDirError(f"--podman-archive {path}: damaged or truncated archive ({kind}): {exc}") from None


def unpack(archive: Path, dest: Path) -> Path:
    """Every member of archive into dest (new or empty), nothing outside it (tarfile's "data" filter: no absolute
    paths, no links leading out, no devices). The images dir, dest/checkpoint."""
    names: set[str] = set()
    with open_archive(archive) as tar:
        for m in tar:
            names.add(os.path.normpath(m.name))
            try:
                tar.extract(m, dest, filter="data")
            except tarfile.FilterError as exc:
                raise ImagesDirError(f"--podman-archive {archive}: refused member {m.name!r}: {exc}") from None
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise ImagesDirError(f"--podman-archive {archive}: no {', '.join(missing)}: not a checkpoint archive of "
                             "`podman container checkpoint --export` (or CRI-O's)")
    return dest / CHECKPOINT_DIR


def pack_kit(unpacked: Path, kit: Path, out: Path) -> Path:
    """The destination's archive at out (plain tar, mode 0600: it holds the secret): every file of unpacked outside
    checkpoint/, then the kit directory's files as checkpoint/. Written to out.tmp first, then renamed."""
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(unpacked.iterdir()):
                if entry.name != CHECKPOINT_DIR and entry != kit:
                    tar.add(entry, arcname=entry.name)
            tar.add(kit, arcname=CHECKPOINT_DIR)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out

