"""procs.sigterm_interrupts: SIGTERM becomes KeyboardInterrupt in the process that asked, and only there."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lazyrestore import procs


def test_sigterm_interrupts_this_process() -> None:
    with pytest.raises(KeyboardInterrupt), procs.sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.5)  # the handler runs before this returns


def test_a_forked_child_exits_as_sigterm_would_have_made_it() -> None:
    with procs.sigterm_interrupts():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a copy of this stack, as pyroute2's helpers are
            os.close(r)
            os.write(w, b"x")
            # Not signal.pause(): a SIGTERM that lands between the check for pending handlers and pause() itself
            # would be waited for forever (a CI run hung there). A short sleep runs the handler within 10 ms.
            for _ in range(1000):
                time.sleep(0.01)
            os._exit(0)  # not reached within 10 s: SIGTERM ends the child
        os.close(w)
        os.read(r, 1)
        os.close(r)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM, "no KeyboardInterrupt unwound in the child"
    assert signal.getsignal(signal.SIGTERM) is not None
