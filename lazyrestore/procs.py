"""Facts about live processes, read from /proc."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LazyRestoreError, NotPermitted, ProcessError

START_HINT = (
    "start the workload as the init of its own pid namespace, e.g. "
    "`unshare -p -f setsid sh -c 'exec CMD > app.log 2>&1' < /dev/null > unshare.log 2>&1 &`, "
    "and checkpoint the host pid whose NSpid line in /proc/PID/status ends in 1"
)


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotPermitted("lazyrestore must run as root (CRIU needs it); try sudo")


def status_fields(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status, or ProcessError when the process is absent."""
    path = Path(f"/proc/{pid}/status")
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ProcessError(f"no process with pid {pid}") from exc
    except OSError as exc:
        raise ProcessError(f"cannot read {path}: {exc.strerror}") from exc
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def ns_pids(pid: int) -> list[int]:
    """The process's pid in each nested pid namespace, outermost first."""
    return [int(x) for x in status_fields(pid).get("NSpid", str(pid)).split()]


def is_pidns_init(pid: int) -> bool:
    chain = ns_pids(pid)
    return len(chain) > 1 and chain[-1] == 1


def is_running(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        state = status_fields(pid).get("State", "")
    except ProcessError:
        return False
    return not state.startswith(("Z", "X"))


def check_checkpointable(pid: int, allow_host_pids: bool) -> None:
    """Refuse a pid that a same-host restore could not bring back as is."""
    if pid <= 0:
        raise ProcessError(f"pid must be a positive number, got {pid}")
    if pid == os.getpid() or pid == 1:
        raise ProcessError(f"refusing to checkpoint pid {pid} (lazyrestore itself or the host's init)")
    chain = ns_pids(pid)
    if allow_host_pids or (len(chain) > 1 and chain[-1] == 1):
        return
    raise ProcessError(
        f"process {pid} is not the init of its own pid namespace (NSpid: {' '.join(map(str, chain))}); "
        f"CRIU restores pids as they were, so a restore on this host would collide with pids in use. "
        f"{START_HINT}; or pass --allow-host-pids to checkpoint it anyway (for restore on another host)"
    )


def ready_byte(status_r: int, timeout: float) -> bool:
    """Wait up to timeout seconds for a daemon's "ready" byte (a NUL, as CRIU's --status-fd writes) on
    the read end of a pipe; closes it. False when the daemon exited or stayed silent."""
    try:
        ready, _, _ = select.select([status_r], [], [], timeout)
        return (os.read(status_r, 1) if ready else b"") == b"\0"
    finally:
        os.close(status_r)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (a runtime stops us with it: clean up as for Ctrl-C).
    Only in this process: a child forked meanwhile (pyroute2 forks helpers to enter network namespaces, and
    stops them with SIGTERM) exits as SIGTERM's default would, instead of unwinding a copy of our stack."""
    owner = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def wait_pidns_init(unshare: subprocess.Popen[bytes], deadline: float, what: str) -> int:
    """The child of `unshare -p -f` that is the init of its new pid namespace, once it exists."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    while time.monotonic() < deadline:
        try:
            kids = [int(x) for x in children.read_text().split()]
        except OSError:
            kids = []
        for kid in kids:
            if is_pidns_init(kid):
                return kid
        if unshare.poll() is not None:
            break
        time.sleep(0.02)
    unshare.kill()
    raise LazyRestoreError(f"unshare did not start {what} as a pid-namespace init")


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: SIGKILL when the process that started it dies (prctl PR_SET_PDEATHSIG). A live
    migration's page server has nothing to serve once `migrate` is gone (CRIU then kills the source tree)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(127)
