"""Tar archives built in memory for the archive tests (test_podman_archive.py, test_containerd_image.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def tar_bytes(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A plain tar of files (name -> content), then the extra members (links, ...) as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def small_kit(kit: Path) -> Path:
    """A kit directory as `serve --kit` writes one, in miniature: inventory.img and lazyrestore/source.json."""
    (kit / "lazyrestore").mkdir(parents=True)
    (kit / "inventory.img").write_bytes(b"inv")
    (kit / "lazyrestore" / "source.json").write_text("{}")
    return kit
