"""What CRIU tells `lazyrestore hook` through its environment, as it tells its action scripts (and the plugin does
the same): the images dir, the dumped tree's root pid, and whether the plugin made a restore lazy."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ImagesDirError, UsageError


def images_dir_from_env(env: dict[str, str]) -> Path:
    """CRTOOLS_IMAGE_DIR (CRIU gives /proc/PID/fd/N): the real directory it names."""
    raw = env.get("CRTOOLS_IMAGE_DIR")
    if not raw:
        raise UsageError("CRTOOLS_IMAGE_DIR is not set: `lazyrestore hook` runs from CRIU (plugin or "
                         "action-script), which sets it to the images directory")
    path = Path(os.path.realpath(raw))
    if not path.is_dir():
        raise ImagesDirError(f"CRTOOLS_IMAGE_DIR={raw}: {path} is not a directory")
    return path


def made_lazy_from_env(env: dict[str, str]) -> bool:
    """LAZYRESTORE_MADE_LAZY=1: the plugin set CRIU's --lazy-pages itself for this restore."""
    return env.get("LAZYRESTORE_MADE_LAZY") == "1"


def pid_from_env(env: dict[str, str]) -> int | None:
    raw = env.get("CRTOOLS_INIT_PID", "")
    return int(raw) if re.fullmatch(r"[0-9]+", raw) else None
