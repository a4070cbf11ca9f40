"""The stopped source tree of a live migration: which host process each task of the checkpoint is.

A live migration serves the lazy pages from the source tree's memory while CRIU holds it stopped. The index
names tasks by their pid in the tree's own pid namespace (as CRIU's pstree.img does); lr-pageserver reads
memory by host pid. The pid map (IMAGES/lazyrestore/live-pids, mode 0600) gives one line per task,
`VPID HOSTPID`, for lr-pageserver --live.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from . import procs, treefacts
from .errors import ProcessError
from .manifest import META_DIR
from .layout import PID_MAP_NAME



def host_pids(root: int, vpids: Iterable[int]) -> dict[int, int]:
    """vpid -> host pid for each of vpids, found among root and its descendants: a task's vpid is its pid at
    the level of root's pid namespace (the last NSpid of root's own status line, root's level)."""
    level = len(procs.ns_pids(root)) - 1
    found: dict[int, int] = {}
    for host in treefacts.tree_pids(root):
        try:
            chain = procs.ns_pids(host)
        except ProcessError:
            continue  # gone since it was listed: reported below if the checkpoint names it
        if len(chain) > level:
            found.setdefault(chain[level], host)
    wanted = sorted(set(vpids))
    missing = [v for v in wanted if v not in found]
    if missing:
        raise ProcessError(f"task(s) {', '.join(map(str, missing[:8]))} of the checkpoint are not in the tree of "
                           f"process {root} any more: the source tree changed while CRIU held it")
    return {v: found[v] for v in wanted}


def pid_map_path(images_dir: Path) -> Path:
    return images_dir / META_DIR / PID_MAP_NAME


def write_pid_map(images_dir: Path, pids: dict[int, int]) -> Path:
    """IMAGES/lazyrestore/live-pids: `VPID HOSTPID` per line, sorted by vpid, mode 0600."""
    path = pid_map_path(images_dir)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{v} {h}\n" for v, h in sorted(pids.items()))
    return path
