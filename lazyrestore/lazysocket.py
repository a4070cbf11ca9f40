"""Whether a lazy-pages daemon already listens on a work dir's lazy-pages.socket, found in /proc without
connecting (a daemon would take a probe for CRIU's restore)."""

from __future__ import annotations

import os
from pathlib import Path

from .layout import SOCKET_NAME


def listening(work_dir: Path) -> bool:
    """Does some process listen on WORK_DIR/lazy-pages.socket? Without connecting: a daemon would take a
    probe for CRIU's restore. Listening unix sockets named so, held by a process whose cwd is work_dir
    (CRIU and lr-lazyd bind the relative name) or bound to the absolute path."""
    want = str(work_dir / SOCKET_NAME)
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                cols = line.split()
                if len(cols) >= 8 and cols[5] == "01" and cols[7] in (SOCKET_NAME, want):
                    inodes.add((cols[6], cols[7]))
    except OSError:
        return False
    return any(_held_in(inode, work_dir, name == want) for inode, name in inodes)


def _held_in(inode: str, work_dir: Path, absolute: bool) -> bool:
    link = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") == link for fd in os.listdir(f"/proc/{pid}/fd")):
                continue
            return absolute or os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(work_dir)
        except OSError:
            continue
    return False
