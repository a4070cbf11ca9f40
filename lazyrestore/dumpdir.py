"""The images directory of a checkpoint being taken: what a non-empty one holds, and undoing a failed dump.

`checkpoint` writes only into a directory it created or found empty. When the dump fails (CRIU resumes the
tree), what it wrote is removed so that the same command can simply run again; CRIU's log is kept next to the
directory (DIR.dump-failed.log) and the error names it. Images are kept whenever they may be all that is left of
the tree: the tree is no longer running (a dump that stopped it, then indexing failed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import procs
from .errors import CriuFailed, ImagesDirError, LazyRestoreError
from .manifest import MANIFEST_NAME, META_DIR

FAILED_LOG_SUFFIX = ".dump-failed.log"
NEW_OR_EMPTY = "remove it or pick another directory; expected a new or empty directory"


def failed_log_path(images_dir: Path) -> Path:
    """Where CRIU's log of a failed dump into images_dir is kept: beside it, DIR.dump-failed.log."""
    return images_dir.parent / f"{images_dir.name}{FAILED_LOG_SUFFIX}"


def describe(images_dir: Path) -> str:
    """What a non-empty images directory holds, in a few words ("a complete checkpoint ...", ...)."""
    names = sorted(os.listdir(images_dir))
    manifest = images_dir / META_DIR / MANIFEST_NAME
    if manifest.is_file():
        return f"a complete checkpoint {_checkpoint_id(manifest)} ({META_DIR}/{MANIFEST_NAME})"
    images = [n for n in names if n.endswith(".img")]
    parts = [n for n in ("dump.log", META_DIR) if n in names]
    parts += [f"{len(images)} CRIU image file(s)"] if images else []
    if "dump.log" in names:
        return f"a failed or interrupted checkpoint ({', '.join(parts)}, no {META_DIR}/{MANIFEST_NAME})"
    if images:
        return (f"CRIU images without {META_DIR}/{MANIFEST_NAME} ({', '.join(parts)}): a dump CRIU wrote itself "
                f"(`lazyrestore index` makes it a checkpoint) or a failed one")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} other entr{'y' if len(names) == 1 else 'ies'} ({shown})"


def not_empty(option: str, images_dir: Path) -> ImagesDirError:
    """The refusal of a non-empty images directory, saying what is in it."""
    return ImagesDirError(f"{option} {images_dir} is not empty: it holds {describe(images_dir)}; {NEW_OR_EMPTY}")


def _checkpoint_id(manifest: Path) -> str:
    try:
        cid = json.loads(manifest.read_text()).get("checkpoint_id")
    except (OSError, ValueError, AttributeError):
        return "(its manifest cannot be read)"
    return str(cid) if isinstance(cid, str) else "(its manifest has no checkpoint id)"


def _keep_log(log: Path, images_dir: Path) -> Path:
    """Move CRIU's log out of images_dir, beside it; where it is now (left in place if it cannot move)."""
    dest = failed_log_path(images_dir)
    try:
        os.replace(log, dest)
    except OSError:
        try:  # e.g. images_dir is a mount point of its own
            shutil.copyfile(log, dest)
            log.unlink()
        except OSError:
            return log
    return dest


def clear(images_dir: Path, log_name: str) -> tuple[Path | None, list[str]]:
    """Empty images_dir, which a failed dump wrote into (the caller knows it was empty before): CRIU's log
    moved beside it. Returns where the log is now (None if there was none) and the entries that stayed."""
    log = images_dir / log_name
    kept = _keep_log(log, images_dir) if log.is_file() else None
    stayed = []
    for entry in sorted(images_dir.iterdir()):
        if entry == kept:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            stayed.append(entry.name)
    return kept, stayed


def _cleared_note(images_dir: Path, stayed: list[str]) -> str:
    if stayed:
        return f"the partial images were removed from {images_dir} except {', '.join(stayed)}"
    return f"the partial images were removed: {images_dir} is empty again, the same command can run again"


def after_failed_dump(images_dir: Path, log_name: str, pid: int, exc: CriuFailed) -> CriuFailed:
    """exc, once what the failed dump wrote into images_dir (created or found empty) is removed, naming where
    CRIU's log went; the images are kept if the tree is gone (they may be all that is left of it)."""
    if not procs.is_running(pid):
        exc.add_note(f"process {pid} is no longer running: the images in {images_dir} are kept")
        return exc
    kept, stayed = clear(images_dir, log_name)
    moved = exc.relocated(str(kept)) if kept is not None else exc
    moved.add_note(f"process {pid} runs on as before; {_cleared_note(images_dir, stayed)}")
    return moved


def after_failed_index(images_dir: Path, log_name: str, pid: int, leave_running: bool,
                       exc: Exception) -> LazyRestoreError:
    """The error for a dump CRIU completed but lazyrestore could not index. With --leave-running and the tree
    still running, the images are removed as after a failed dump; else the dump stopped the tree and its images
    are kept."""
    error = exc if isinstance(exc, LazyRestoreError) else \
        ImagesDirError(f"indexing the dump in {images_dir} failed: {exc}")
    if leave_running and procs.is_running(pid):
        kept, stayed = clear(images_dir, log_name)
        log = f"; CRIU's log: {kept}" if kept is not None else ""
        error.add_note(f"process {pid} runs on (--leave-running); {_cleared_note(images_dir, stayed)}{log}")
    else:
        error.add_note(f"CRIU's dump in {images_dir} is complete and process {pid} was stopped by it, so the images "
                       f"are kept: index them with `lazyrestore index --images {images_dir}` once the cause is "
                       f"fixed, or restore them with `criu restore`")
    return error

