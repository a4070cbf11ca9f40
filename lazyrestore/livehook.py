"""A runtime's checkpoint made live: `lazyrestore hook` with CRTOOLS_SCRIPT_ACTION=live-dump.

With LAZYRESTORE_LIVE=HOST:PORT in CRIU's environment (`LAZYRESTORE_LIVE=10.0.0.1:7411 runc checkpoint ...`) the
CRIU plugin makes the dump live, as `lazyrestore migrate` makes its own (migratelive.py): CRIU dumps only the
tree's metadata and holds it stopped, its page server on one end of a socket pair. The plugin starts this
process, detached, with the other end, the read end of CRIU's status pipe, CRIU's pid and the tree's root pid
(environment, below). Here, once CRIU says it is ready:
  - the dump is indexed (lazy ranges LIVE) with its pid map, as `migrate` indexes its own;
  - lr-pageserver --live serves the stopped tree on HOST:PORT until one destination has every page, and a
    destination kit is written into IMAGES/lazyrestore/kit: a copy of it is the images dir of a plain
    `runc restore` on the destination (the plugin there makes the restore lazy);
  - the tree's fate is migrate's (livefate.py): a destination with every page ends it (PS_IOV_CLOSE: CRIU kills
    the tree, the runtime's checkpoint succeeds); no destination, a failed one, the operator's stop (SIGTERM or
    SIGINT to this process, whose pid is in IMAGES/lazyrestore/migrate.pid) or LAZYRESTORE_LIVE_TIMEOUT seconds
    without a destination holding the tree roll it back (CRIU resumes it, the runtime's checkpoint fails).
Its JSON events go to IMAGES/lazyrestore/live.jsonl, its lines for people to live.log (the plugin opens both).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from . import criu, livedump, migratelive, serve
from .daemons import leave_cgroups
from .errors import CriuFailed, UsageError
from .manifest import META_DIR
from .output import Reporter
from .layout import KIT_NAME

ACTION = "live-dump"
ADDRESS_ENV = "LAZYRESTORE_LIVE"
TIMEOUT_ENV = "LAZYRESTORE_LIVE_TIMEOUT"
# Set by the plugin for this process only.
PS_FD_ENV = "LAZYRESTORE_LIVE_PS_FD"
STATUS_FD_ENV = "LAZYRESTORE_LIVE_STATUS_FD"
STATUS_OUT_ENV = "LAZYRESTORE_LIVE_STATUS_OUT"
CRIU_PID_ENV = "LAZYRESTORE_LIVE_CRIU_PID"
CRIU_LOG_ENV = "LAZYRESTORE_LIVE_CRIU_LOG"
ROOT_PID_ENV = "CRTOOLS_INIT_PID"


def _int_env(env: dict[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise UsageError(f"{name}={env.get(name)!r}: the CRIU plugin sets it for a live dump (LAZYRESTORE_LIVE); "
                         "`lazyrestore hook` with action live-dump runs only from the plugin") from None


def kit_dir(images_dir: Path) -> Path:
    return images_dir / META_DIR / KIT_NAME


def adopt(env: dict[str, str], images_dir: Path, work_dir: Path) -> livedump.LiveDump:
    """The live dump the plugin hands over, from the environment it set."""
    ctl = socket.socket(fileno=_int_env(env, PS_FD_ENV))
    log = Path(env.get(CRIU_LOG_ENV) or "dump.log")
    return livedump.LiveDump.adopt(ctl, _int_env(env, STATUS_FD_ENV), _int_env(env, CRIU_PID_ENV),
                                   _int_env(env, ROOT_PID_ENV), images_dir, work_dir / log)


def timeout_from_env(env: dict[str, str]) -> float | None:
    raw = env.get(TIMEOUT_ENV, "")
    if not raw:
        return None
    try:
        t = float(raw)
    except ValueError:
        t = -1.0
    if t <= 0:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: give seconds (> 0) a destination has to take the tree")
    return t


def live_dump(env: dict[str, str], images_dir: Path, work_dir: Path, reporter: Reporter,
              sanitized: bool = False) -> serve.ServeSummary:
    """Serve the runtime's live dump until a destination has every page (returned), else roll it back (raised)."""
    leave_cgroups()  # CRIU's cgroups may be the container's: this process must outlive them, unfrozen
    dump = adopt(env, images_dir, work_dir)
    migratelive.keep_fate(dump)  # from here, this process dying rolls the tree back (no destination holds it)
    listen = env.get(ADDRESS_ENV, "")
    with migratelive.operator_signals() as asked:  # a stop must never just drop CRIU's socket (it kills the tree)
        reporter.event("dumping", pid=dump.pid, images_dir=str(images_dir), criu_pid=dump.proc.pid, live=True,
                       listen=listen)
        reporter.progress(f"live dump of process tree {dump.pid} by CRIU {dump.proc.pid} into {images_dir}: "
                          f"waiting for its metadata")
        t0 = time.monotonic() - seconds_since_start(dump.proc.pid)  # the dump's time counts from CRIU's start
        try:
            dump.wait_ready()
        except CriuFailed as exc:
            exc.add_note(f"process tree {dump.pid} runs on: CRIU resumes it after a failed dump")
            raise
        try:
            timeout = timeout_from_env(env)
            binary = criu.find_criu()
        except UsageError:
            dump.rollback()
            raise
        migratelive.index_live(dump, binary, reporter, time.monotonic() - t0)
        if timeout is not None:  # the operator's stop, if no destination holds the tree by then
            timer = threading.Timer(timeout, _stop_after, (reporter, timeout))
            timer.daemon = True
            timer.start()
        status_out = int(env.get(STATUS_OUT_ENV) or -1)
        return migratelive.serve_live(dump, listen, reporter, sanitized, asked, kit_dir(images_dir),
                                      on_listening=lambda: _say_ready(status_out))


def seconds_since_start(pid: int) -> float:
    """How long process pid has run (its start time in /proc/PID/stat against /proc/uptime); 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime; fields[0] is field 3
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started)


def _stop_after(reporter: Reporter, timeout: float) -> None:
    reporter.event("timeout", seconds=timeout)
    reporter.progress(f"{TIMEOUT_ENV}={timeout:g}: stopping (a rollback unless a destination holds the tree)")
    os.kill(os.getpid(), signal.SIGTERM)


def _say_ready(fd: int) -> None:
    """The runtime's own status fd (if it gave one): a byte once the kit is written and the tree served."""
    if fd < 0:
        return
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)
