"""Where lazyrestore finds its native programs."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LazyRestoreError

REPO_ROOT = Path(__file__).resolve().parent.parent


def native_dir() -> Path:
    """$LAZYRESTORE_NATIVE_DIR, else build/native of the checkout (built by `make build`)."""
    return Path(os.environ.get("LAZYRESTORE_NATIVE_DIR", REPO_ROOT / "build" / "native"))


def native_binary(name: str) -> Path:
    path = native_dir() / name
    if not os.access(path, os.X_OK):
        raise LazyRestoreError(f"{name} not found at {path}: run `make build` (or set LAZYRESTORE_NATIVE_DIR)")
    return path
