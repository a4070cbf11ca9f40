"""The fate keeper process (fatekeeper.py): `python -m lazyrestore.keeper_run IMAGES ROOT CRIU STOPPED NET CTL WATCH
CRIU_LOG`. It waits for the live dump's server to stand it down (one byte on WATCH); if WATCH reads EOF instead,
the server died, and the keeper ends the dump: a rollback when lr-pageserver's held file is absent (no destination
may run the tree), else our end of CRIU's socket closed (CRIU kills the tree, as it would have)."""

from __future__ import annotations

import os
import sys
import time

STAND_DOWN = b"x"  # fatekeeper.STAND_DOWN; nothing else is imported until the word arrives (a fast, light start)


def say(text: str) -> None:
    sys.stdout.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} fatekeeper[{os.getpid()}]: {text}\n")
    sys.stdout.flush()


def wait_for_word(watch: int) -> bytes:
    while True:
        try:
            return os.read(watch, 1)
        except InterruptedError:
            continue


def main(argv: list[str]) -> int:
    images, root, criu_pid, stopped, net, ctl_fd, watch, criu_log = argv
    if wait_for_word(int(watch)) == STAND_DOWN:
        return 0
    return end_dump(images, int(root), int(criu_pid), stopped, net == "1", int(ctl_fd), criu_log)


def end_dump(images: str, pid: int, criu_pid: int, stopped: str, release_net: bool, ctl_fd: int,
             criu_log: str) -> int:
    """The server died without a word: a rollback, or EOF to CRIU when a destination may run the tree."""
    import socket
    from pathlib import Path

    from . import livedump, livehold
    from .errors import LazyRestoreError
    from .fatekeeper import held_path
    images_dir = Path(images)
    stopped_before = {int(p) for p in stopped.split(",") if p}
    ctl = socket.socket(fileno=ctl_fd)
    try:
        dump = livedump.LiveDump.adopt(ctl, -1, criu_pid, pid, images_dir, Path(criu_log))
    except ProcessLookupError:
        say(f"the live dump's server died, and so did CRIU {criu_pid}: tree {pid} stays as CRIU left it")
        return 1
    dump.release_net = release_net
    dump.held = livehold.hold(pid, stopped_before)
    held = held_path(images_dir)
    try:
        if held.exists():
            say(f"the live dump's server died while a destination may run tree {pid} ({held} exists): ending the "
                "source (CRIU kills it)")
            dump.abandon()
        else:
            say(f"the live dump's server died before any destination held tree {pid}: rolling it back")
            dump.rollback()
            say(f"rolled back: tree {pid} runs again where it stopped" +
                (f"; released {', '.join(dump.released)}" if dump.released else ""))
    except LazyRestoreError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
