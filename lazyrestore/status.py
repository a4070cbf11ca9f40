"""`lazyrestore status` and `lazyrestore lazy-pages`: around a running lr-lazyd."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import manifest
from .daemons import STATUS_FILE, read_status
from .errors import ImagesDirError, UsageError
from .output import human_bytes
from .paths import native_binary
from .restore import RUNS_DIR


def newest_run(images_dir: Path) -> Path:
    runs = images_dir / manifest.META_DIR / RUNS_DIR
    found = sorted(runs.glob(f"*/{STATUS_FILE}"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    if not found:
        raise ImagesDirError(f"no lazy restore of {images_dir} has reported progress (nothing in {runs})")
    return found[-1].parent


def status(images_dir: Path | None, workdir: Path | None) -> dict[str, Any]:
    if workdir is None and images_dir is None:
        raise UsageError("give --images DIR (its newest restore) or --workdir DIR")
    run = workdir or newest_run(images_dir)  # type: ignore[arg-type]
    found = read_status(run)
    if found is None:
        raise ImagesDirError(f"no progress file {run / STATUS_FILE} (not a lazy restore's work dir?)")
    daemon_event = found.pop("event", None)
    running = daemon_event == "progress" and _alive(found.get("daemon_pid", 0))
    state = "done" if daemon_event == "done" else "running" if running else "failed"
    return {"workdir": str(run), "state": state, "daemon_event": daemon_event, **found}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return pid > 0


def status_text(s: dict[str, Any]) -> str:
    total, left = s.get("total_bytes", 0), s.get("left_bytes", 0)
    pct = 100.0 * (total - left) / total if total else 100.0
    line = (f"{s['state']}: {human_bytes(total - left)} of {human_bytes(total)} placed ({pct:.1f}%), "
            f"{s.get('faults', 0)} faults (p99 {s.get('lat_p99_us', 0):.1f} us); work dir {s['workdir']}")
    return line + (f"\n  {s['message']}" if s.get("message") else "")


def exec_lazyd(args: list[str]) -> None:
    """Become lr-lazyd with the given (CRIU lazy-pages style) options."""
    binary = str(native_binary("lr-lazyd"))
    os.execv(binary, [binary, *args])
