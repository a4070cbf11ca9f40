"""procs.sigterm_interrupts: SIGTERM becomes KeyboardInterrupt in the process that asked, and only there."""

from __future__ import annotations

import os
import signal

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
            signal.pause()
            os._exit(0)  # not reached: SIGTERM ends the child
        os.close(w)
        os.read(r, 1)
        os.close(r)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM, "no KeyboardInterrupt unwound in the child"
    assert signal.getsignal(signal.SIGTERM) is not None
