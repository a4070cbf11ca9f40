"""`lazyrestore migrate` (live post-copy): the destination runs before the source's memory is copied anywhere.

CRIU dumps only the tree's metadata (`criu dump --lazy-pages --ps-socket`, livedump.py) and holds the tree
stopped; lr-pageserver --live serves the lazy pages from the stopped tasks' memory, each block checksummed as
read. Only the small metadata checkpoint is written to disk. How it ends (livefate.py):
  - a destination has every page (DONE): CRIU kills the source tree;
  - a destination fails before its tree ran (ABORT, a wrong secret), or the operator stops `migrate` while
    no destination holds the tree: the source resumes where it stopped (a rollback);
  - once a destination holds the tree (it committed) the source never runs again: if that destination dies,
    the page server goes on serving the stopped tree for a new `restore --from`; Ctrl-C only says so, and
    `lazyrestore abort --images DIR --kill-source` ends the migration and kills the source;
  - lr-pageserver dying is restarted on the same address (the destination reconnects within its
    --source-timeout); this process dying closes CRIU's socket, and CRIU kills the tree;
  - CRIU dying leaves the tree stopped all the same (livehold.py: a SIGSTOP pending while CRIU holds it):
    with no destination holding it, a rollback; else it is served on and killed here at the end.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint, criu, criuopts, dumpdir, fatekeeper, livedump, livetree, procs, serve
from .criuopts import CriuOptions
from .errors import CriuFailed, DaemonFailed, LazyRestoreError, ProcessError, UsageError
from .images import read_pstree
from .livefate import DONE, ROLLBACK, LiveFate
from .manifest import META_DIR
from .output import Reporter
from .address import join, parse_address
from .layout import PID_FILE

KILL = "kill"
RESTARTS = 5          # lr-pageserver restarts within one migration
POLL_S = 0.2


@dataclass
class Asked:
    """What the operator asked by signal: stop (SIGINT, SIGTERM) or kill the source (SIGUSR1: `abort`)."""

    stop: bool = False
    kill: bool = False


@contextmanager
def operator_signals() -> Iterator[Asked]:
    asked = Asked()
    owner = os.getpid()

    def on_stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        asked.stop = True

    def on_kill(signum: int, frame: object) -> None:
        asked.kill = True

    old = {sig: signal.signal(sig, handler) for sig, handler in
           ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop), (signal.SIGUSR1, on_kill))}
    try:
        yield asked
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def migrate_live(pid: int, images_dir: Path, listen: str, reporter: Reporter, sanitized: bool = False,
                 options: CriuOptions = CriuOptions(),
                 secret_from: Path | None = None) -> tuple[checkpoint.CheckpointSummary, serve.ServeSummary]:
    parse_address(listen)
    with operator_signals() as asked:  # from the start: a Ctrl-C must never just drop CRIU's socket
        dump, cp = live_checkpoint(pid, images_dir, reporter, options, secret_from)
        return cp, serve_live(dump, listen, reporter, sanitized, asked)


def serve_live(dump: livedump.LiveDump, listen: str, reporter: Reporter, sanitized: bool, asked: Asked,
               kit: Path | None = None, on_listening: Callable[[], None] | None = None) -> serve.ServeSummary:
    """Serve the stopped, indexed tree of dump on listen (kit: write a destination kit there, serve.write_kit;
    on_listening: called once the server listens) until a destination has every page: CRIU then kills the tree.
    Else the migration ends as end_without_delivery says, and its error is raised."""
    images_dir, pid = dump.images_dir, dump.pid
    pid_file = images_dir / META_DIR / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    fate = LiveFate()
    try:
        s, outcome = serve_stopped_tree(images_dir, listen, reporter, sanitized, Watch(fate, asked, dump), kit,
                                        on_listening)
    except (LazyRestoreError, OSError) as exc:
        s, outcome = None, exc
    finally:
        pid_file.unlink(missing_ok=True)
    if outcome == DONE and s is not None:
        dump.finish()
        reporter.event("source_ended", pid=pid, reason="delivered")
        reporter.progress(f"the destination has every page: source tree {pid} ended")
        return s
    raise end_without_delivery(dump, fate, outcome, pid, images_dir, reporter)


def live_checkpoint(pid: int, images_dir: Path, reporter: Reporter, options: CriuOptions,
                    secret_from: Path | None = None) -> tuple[livedump.LiveDump, checkpoint.CheckpointSummary]:
    """`criu dump --lazy-pages` of the tree (held stopped), its index (lazy ranges LIVE) and pid map."""
    procs.require_root()
    binary = criu.find_criu()
    procs.check_checkpointable(pid, False)
    recorded = checkpoint.recorded_options(pid, options, reporter)
    checkpoint.prepare_dir(images_dir)
    reporter.event("dumping", pid=pid, images_dir=str(images_dir), criu=binary.path, live=True,
                   criu_options=criuopts.to_json(recorded))
    reporter.progress(f"dumping the metadata of process tree {pid} into {images_dir} with criu {binary.version} "
                      f"(live: its memory stays in the tree, held stopped)")
    t0 = time.monotonic()
    dump = livedump.LiveDump(binary, pid, images_dir, options)
    keep_fate(dump)
    try:
        dump.wait_ready()
    except CriuFailed as exc:
        raise dumpdir.after_failed_dump(images_dir, livedump.DUMP_LOG, pid, exc)
    return dump, index_live(dump, binary, reporter, time.monotonic() - t0, recorded, secret_from)


def keep_fate(dump: livedump.LiveDump) -> None:
    """A fate keeper for the dump (fatekeeper.py) from its start: if this process dies before it ends the dump, the
    tree is rolled back unless a destination may run it (lr-pageserver's held file, none yet for a fresh dump)."""
    fatekeeper.held_path(dump.images_dir).unlink(missing_ok=True)
    dump.keep_fate()


def index_live(dump: livedump.LiveDump, binary: criu.CriuBinary, reporter: Reporter, dump_s: float,
               options: CriuOptions = CriuOptions(), secret_from: Path | None = None) -> checkpoint.CheckpointSummary:
    """The index of a live dump CRIU holds ready (its lazy ranges LIVE) and its pid map; when that fails, the tree
    is rolled back and the error raised."""
    images_dir, pid, t1 = dump.images_dir, dump.pid, time.monotonic()
    try:
        m = checkpoint.write_metadata(images_dir, binary, pid, options=options, live=True, secret_from=secret_from)
        livetree.write_pid_map(images_dir, livetree.host_pids(pid, [p.pid for p in read_pstree(images_dir)]))
    except (LazyRestoreError, OSError) as exc:
        dump.rollback()
        if dump.own:
            raise dumpdir.after_failed_index(images_dir, livedump.DUMP_LOG, pid, True, exc) from exc
        raise
    cp = checkpoint.summary(images_dir, m, pid, dump_s, time.monotonic() - t1, leave_running=False, live=True)
    reporter.event("checkpointed", **cp.__dict__)
    reporter.progress(checkpoint.summary_text(cp))
    return cp


@dataclass
class Watch:
    """What the serving loop watches besides lr-pageserver: the sessions' fate, the operator, CRIU."""

    fate: LiveFate
    asked: Asked
    dump: livedump.LiveDump
    criu_lost: bool = False


def serve_stopped_tree(images_dir: Path, listen: str, reporter: Reporter, sanitized: bool,
                       watch: Watch, kit: Path | None = None,
                       on_listening: Callable[[], None] | None = None) -> tuple[serve.ServeSummary, str]:
    """lr-pageserver --live until an outcome: DONE, ROLLBACK or KILL; restarted on the same address if it dies
    while the tree is held. kit: a destination kit written there once it listens (serve.write_kit), then
    on_listening called."""
    server, s = serve.start(images_dir, listen, True, reporter, sanitized, kit=kit,
                            live_pids=livetree.pid_map_path(images_dir))
    if on_listening is not None:
        on_listening()
    host = s.address
    for restart in range(RESTARTS + 1):
        outcome = follow(server, s, watch, reporter)
        if outcome is not None:
            break
        if restart == RESTARTS:
            raise DaemonFailed(f"lr-pageserver exited {server.wait()} {RESTARTS + 1} times: {server.log_tail()}; "
                               f"log {s.log}")
        reporter.event("server_restart", code=server.wait())
        reporter.progress(f"lr-pageserver exited ({server.log_tail(1)}): serving again on {host}:{s.port}")
        server, _ = serve.start(images_dir, join(host, s.port), True,
                                reporter, sanitized, live_pids=livetree.pid_map_path(images_dir))
    if outcome == DONE:
        server.wait()
    else:
        server.stop()
    return s, outcome


def follow(server: serve.PageServer, s: serve.ServeSummary, watch: Watch, reporter: Reporter) -> str | None:
    """Events until an outcome (DONE, ROLLBACK, KILL), or None when lr-pageserver exited without one."""
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_pump, args=(server, events), daemon=True).start()
    fate, asked = watch.fate, watch.asked
    while True:
        if not watch.criu_lost and watch.dump.criu_gone() is not None:
            watch.criu_lost = True
            if criu_lost(watch, reporter):
                return ROLLBACK
        if asked.kill:
            return KILL
        if asked.stop:
            asked.stop = False
            if fate.can_roll_back():
                return ROLLBACK
            reporter.progress("a destination holds the tree (it committed, or may have run it): the source will not "
                              "resume. Serving on for a new `restore --from`; to end the migration and kill the source "
                              f"run `lazyrestore abort --images {s.images_dir} --kill-source`")
        try:
            ev = events.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if ev is None:
            return None
        serve.record_event(ev, s, reporter)
        outcome = fate.on_event(ev)
        if outcome is not None:
            return outcome


def criu_lost(watch: Watch, reporter: Reporter) -> bool:
    """CRIU's dump died: say so; True when the source may roll back (no destination holds it). Either way the tree
    stays stopped (livehold.py) until the migration ends."""
    code = watch.dump.criu_gone()
    reporter.event("criu_lost", code=code)
    if watch.fate.can_roll_back():
        reporter.progress(f"criu dump --lazy-pages ended (exit {code}) before a destination held the tree: rolling "
                          f"back")
        return True
    reporter.progress(f"criu dump --lazy-pages ended (exit {code}) while a destination holds the tree: the source "
                      f"tree stays stopped (held by lazyrestore) and is served on; it is killed once a destination "
                      f"has every page")
    return False


def _pump(server: serve.PageServer, events: queue.Queue[dict[str, Any] | None]) -> None:
    try:
        for ev in server.events():
            events.put(ev)
    finally:
        events.put(None)


def end_without_delivery(dump: livedump.LiveDump, fate: LiveFate, outcome: str | BaseException, pid: int,
                         images_dir: Path, reporter: Reporter) -> LazyRestoreError:
    """The migration ended before a destination had every page: roll back when no destination may run the
    tree, else end the source (the operator's abort). The error to raise, saying which."""
    error = outcome if isinstance(outcome, LazyRestoreError) else DaemonFailed(
        "the operator ended the migration" if outcome == KILL else "no destination has the tree")
    if outcome == KILL or not fate.can_roll_back():
        dump.abandon()
        reporter.event("source_ended", pid=pid, reason="aborted" if outcome == KILL else "a destination may run it")
        error.add_note(f"source tree {pid} was ended, not resumed: a destination held it (two copies must never run)")
        return error
    dump.rollback()
    for line in dump.released:
        reporter.progress(f"released after the rollback: {line}")
    reporter.event("rolled_back", pid=pid, released=dump.released)
    reporter.progress(f"rolled back: source tree {pid} resumed where it stopped")
    error.add_note(f"rolled back: source tree {pid} runs on where it stopped; {images_dir} holds only its metadata")
    return error


def abort(images_dir: Path, kill_source: bool) -> int:
    """`lazyrestore abort --images DIR --kill-source`: ask the live migration serving DIR to end and kill its
    source. The migrating process's pid, or ProcessError when none serves DIR."""
    if not kill_source:
        raise UsageError("abort ends a live migration whose source a destination may already run, so it kills the "
                         "source tree: say --kill-source (a migration no destination holds rolls back on Ctrl-C)")
    path = images_dir / META_DIR / PID_FILE
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise ProcessError(f"no live migration serves {images_dir} ({path}: "
                           f"{getattr(exc, 'strerror', None) or 'unreadable'})") from exc
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError as exc:
        raise ProcessError(f"the live migration of {images_dir} (pid {pid}) is gone") from exc
    return pid
