"""Who ends a live dump whose server died without a word: the fate keeper's handle.

CRIU reads EOF on its --ps-socket once every holder of our end has closed it, and then kills the stopped tree.
That is right once a destination may run the tree, and a lost tree when none may: a SIGKILL (or the OOM killer) of
`migrate`, or of the plugin's live-dump process, before any destination committed would end the only copy. So once
CRIU holds the tree a keeper process (keeper_run.py) holds a copy of our end, in a session of its own. The server
stands it down when it ends the dump itself; if the server dies first, the keeper decides from the held file that
lr-pageserver keeps (--held-file: created before a COMMIT is answered, removed on an ABORT while no destination may
have run the tree): no file, a rollback (CRIU resumes the tree where it stopped); the file, EOF as before (a
destination may run the tree: the source must not). What it did goes to IMAGES/lazyrestore/fatekeeper.log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .manifest import META_DIR
from .layout import FATEKEEPER_LOG, HELD_NAME

STAND_DOWN = b"x"  # keeper_run.STAND_DOWN
STAND_DOWN_TIMEOUT_S = 10.0


def held_path(images_dir: Path) -> Path:
    return images_dir / META_DIR / HELD_NAME


class Keeper:
    """The keeper process of one live dump: started with a copy of ctl_fd, stood down by stand_down()."""

    def __init__(self, images_dir: Path, root: int, criu_pid: int, stopped_before: set[int], release_net: bool,
                 ctl_fd: int, criu_log: Path) -> None:
        ctl = os.dup(ctl_fd)
        watch_r, self._watch_w = os.pipe2(os.O_CLOEXEC)
        args = [sys.executable, "-m", "lazyrestore.keeper_run", str(images_dir), str(root), str(criu_pid),
                ",".join(map(str, sorted(stopped_before))), "1" if release_net else "0", str(ctl), str(watch_r),
                str(criu_log)]
        try:
            (images_dir / META_DIR).mkdir(exist_ok=True)
            with open(images_dir / META_DIR / FATEKEEPER_LOG, "ab") as log:
                self.proc = subprocess.Popen(args, pass_fds=(ctl, watch_r), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, start_new_session=True)
        finally:
            os.close(ctl)
            os.close(watch_r)

    def stand_down(self) -> None:
        """This process ends the dump itself: the keeper exits without a word (and closes its copy of the end)."""
        if self._watch_w < 0:
            return
        try:
            os.write(self._watch_w, STAND_DOWN)
        except OSError:
            pass  # the keeper is gone already
        os.close(self._watch_w)
        self._watch_w = -1
        try:
            self.proc.wait(STAND_DOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
