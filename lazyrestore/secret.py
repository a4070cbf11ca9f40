"""The checkpoint's secret: 32 random bytes a client must prove it knows to be served pages.

Created with the checkpoint at ``lazyrestore/secret``, readable by its owner only (mode
0600). It is not part of the manifest and never sent over the wire: a destination gets
a copy out of band (``--secret-file``) and proves knowledge of it with an HMAC.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UsageError
from .manifest import META_DIR
from .layout import SECRET_NAME

SECRET_SIZE = 32


def secret_path(images_dir: Path) -> Path:
    return images_dir / META_DIR / SECRET_NAME


def create(images_dir: Path) -> Path:
    """A fresh secret for the checkpoint in images_dir (replacing an older one)."""
    return _write(images_dir, os.urandom(SECRET_SIZE))


def install(images_dir: Path, given: Path) -> Path:
    """The secret file given (a pre-shared one, checked by check_file) as the checkpoint's secret: a destination
    holding a copy can be started before the checkpoint exists."""
    return _write(images_dir, check_file(given).read_bytes())


def _write(images_dir: Path, key: bytes) -> Path:
    path = secret_path(images_dir)
    tmp = path.with_name(SECRET_NAME + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    tmp.rename(path)
    return path


def check_file(path: Path) -> Path:
    """path is a usable secret file: regular, owner-only, 32 bytes; raises UsageError naming what is wrong."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UsageError(f"secret file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"secret file {path}: not a regular file")
    if st.st_mode & 0o077:
        raise UsageError(f"secret file {path}: mode {stat.S_IMODE(st.st_mode):03o} lets others read it; "
                         f"expected 0600 (chmod 600 {path})")
    if st.st_size != SECRET_SIZE:
        raise UsageError(f"secret file {path}: {st.st_size} bytes, expected {SECRET_SIZE}")
    return path
