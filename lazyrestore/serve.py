"""`lazyrestore serve` and `migrate`: a checkpoint served to remote restores by lr-pageserver.

lr-pageserver (C, epoll) serves the checkpoint read only to any number of
authenticated sessions at once: metadata files, the page ranges faults ask for, and
a bulk stream of the rest. It reports JSON lines (--events-fd): listening (with the
port), session, rejected, session_lost, delivered. `migrate` checkpoints a tree,
then serves it until one destination has every page (--once).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint, fatekeeper, procs, secret, sourcefile
from .errors import DaemonFailed, ImagesDirError, LazyRestoreError, UsageError
from .manifest import META_DIR
from .criuopts import CriuOptions
from .output import Reporter
from .paths import native_binary
from .procs import ready_byte
from .address import join, parse_address
from .restore import RUNS_DIR
from .verify import verify_for_lazy

START_TIMEOUT_S = 30.0


class PageServer:
    """One lr-pageserver serving images_dir on listen; its events arrive as dicts."""

    def __init__(self, images_dir: Path, listen: str, once: bool, log: Path, sanitized: bool = False,
                 preexec: Callable[[], None] | None = None, live_pids: Path | None = None) -> None:
        """live_pids: serve a live checkpoint (its pid map); lr-pageserver then keeps IMAGES/lazyrestore/held while
        a destination may run the tree (fatekeeper.py)."""
        self.log = log
        binary = native_binary("san/lr-pageserver" if sanitized else "lr-pageserver")
        status_r, status_w = os.pipe()
        self.events_r, events_w = os.pipe()
        args = [str(binary), "-D", str(images_dir), "--listen", listen, "-o", str(log),
                "--status-fd", str(status_w), "--events-fd", str(events_w)] + (["--once"] if once else []) + \
            (["--live", str(live_pids), "--held-file", str(fatekeeper.held_path(images_dir))] if live_pids else [])
        self.proc = subprocess.Popen(args, pass_fds=(status_w, events_w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(log, "ab"), start_new_session=True,
                                     preexec_fn=preexec)
        os.close(status_w)
        os.close(events_w)
        self._lines = self._read_lines()
        self.port = self._wait_listening(status_r)

    def _wait_listening(self, status_r: int) -> int:
        if not ready_byte(status_r, START_TIMEOUT_S):
            self.stop()
            raise DaemonFailed(f"lr-pageserver did not start: {self.log_tail()}; log {self.log}")
        self.early: list[dict[str, Any]] = []  # e.g. a warning about the stored working set
        for ev in self._lines:
            if ev.get("event") == "listening":
                return int(ev["port"])
            self.early.append(ev)
        raise DaemonFailed(f"lr-pageserver reported no port: {self.log_tail()}; log {self.log}")

    def _read_lines(self) -> Iterator[dict[str, Any]]:
        with os.fdopen(self.events_r, "r", buffering=1) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def events(self) -> Iterator[dict[str, Any]]:
        """Events but "listening" (those before it first), until lr-pageserver exits."""
        yield from self.early
        yield from self._lines

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:]) or "(empty log)"


@dataclass
class ServeSummary:
    """What `serve` reports when it stops: sessions that got every page, and the rest."""

    images_dir: str
    checkpoint_id: str
    address: str
    port: int
    delivered: int = 0
    sessions: int = 0
    rejected: int = 0
    lost: int = 0
    log: str = ""
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def destination_command(host: str, port: int, images_dir: Path) -> str:
    shown = host if host not in ("0.0.0.0", "::", "") else "THIS_HOST"
    addr = join(shown, port)
    return (f"lazyrestore restore --from {addr} --secret-file {secret.secret_path(images_dir)} "
            f"--workdir /var/lib/lazyrestore/{images_dir.name}")


# Read before any plugin runs: CRIU's inventory.img (check_img_inventory), pstree.img and every task's ids-PID.img
# (CRIU 4.2 calls prepare_pstree() before cr_plugin_init; without pstree.img it crashes), runc's descriptors.json.
KIT_FILES = ("inventory.img", "pstree.img", "descriptors.json")
KIT_PATTERNS = ("ids-*.img",)


def write_kit(kit: Path, images_dir: Path, host: str, port: int) -> Path:
    """A destination kit: what a runtime's `restore --lazy-pages` needs in its images dir before the plugin
    fetches the rest: KIT_FILES (read before any plugin runs), the source description and a
    copy of the secret (mode 0600). Copy it to the destination over a trusted channel (it holds the secret)."""
    if host in ("0.0.0.0", "::", ""):
        raise UsageError(f"--kit needs the address destinations connect to: --listen {host}:PORT is a wildcard; "
                         "give this host's address, e.g. --listen 10.231.0.1:7411")
    if kit.exists() and (not kit.is_dir() or any(kit.iterdir())):
        raise UsageError(f"--kit {kit}: give a new or empty directory")
    (kit / META_DIR).mkdir(parents=True, exist_ok=True)
    names = [*KIT_FILES, *(p.name for pattern in KIT_PATTERNS for p in sorted(images_dir.glob(pattern)))]
    for name in names:
        if (images_dir / name).is_file():
            shutil.copyfile(images_dir / name, kit / name)
    fd = os.open(kit / META_DIR / secret.SECRET_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret.secret_path(images_dir).read_bytes())
    addr = join(host, port)
    return sourcefile.write(kit, "lazyrestore", addr, secret.SECRET_NAME)


def serve(images_dir: Path, listen: str, once: bool, reporter: Reporter, sanitized: bool = False,
          kit: Path | None = None, pack_kit: Callable[[Path], Path] | None = None,
          dest_command: str = "") -> ServeSummary:
    """pack_kit: turns the kit directory into what the destination takes (archives.py: a runtime's archive), which
    dest_command restores."""
    server, s = start(images_dir, listen, once, reporter, sanitized, kit, pack_kit=pack_kit,
                      dest_command=dest_command)
    try:
        with procs.sigterm_interrupts():  # a runtime stops us with SIGTERM: stop lr-pageserver too
            _follow(server, s, reporter)
    except KeyboardInterrupt:
        server.stop()
    code = server.wait()
    if code not in (0, -signal.SIGTERM):
        raise DaemonFailed(f"lr-pageserver failed (exit {code}): {server.log_tail()}; log {s.log}")
    return s


def start(images_dir: Path, listen: str, once: bool, reporter: Reporter, sanitized: bool = False,
          kit: Path | None = None, live_pids: Path | None = None,
          pack_kit: Callable[[Path], Path] | None = None,
          dest_command: str = "") -> tuple[PageServer, ServeSummary]:
    """lr-pageserver serving the checkpoint in images_dir (verified first) on listen, once it listens."""
    host, _ = parse_address(listen)
    if kit is not None and host in ("0.0.0.0", "::", ""):
        write_kit(kit, images_dir, host, 0)  # raises: says what --listen needs
    m = verify_for_lazy(images_dir)
    if not secret.secret_path(images_dir).is_file():
        raise ImagesDirError(f"{images_dir} has no {META_DIR}/{secret.SECRET_NAME}: it was not checkpointed by "
                             "lazyrestore, or the secret was removed; clients could not authenticate")
    runs = images_dir / META_DIR / RUNS_DIR
    runs.mkdir(exist_ok=True)
    log = runs / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    server = PageServer(images_dir, listen, once, log, sanitized, live_pids=live_pids,
                        preexec=procs.die_with_parent if live_pids else None)
    s = ServeSummary(str(images_dir), m.checkpoint_id, host, server.port, log=str(log))
    cmd = destination_command(host, server.port, images_dir)
    if kit is not None:
        try:
            desc = write_kit(kit, images_dir, host, server.port)
            shown = pack_kit(kit) if pack_kit is not None else kit
        except (LazyRestoreError, OSError):
            server.stop()
            raise
        reporter.event("kit", kit=str(shown), source_file=str(desc))
        if pack_kit is not None:
            reporter.progress(f"destination archive {shown}: copy it to the destination (it holds the secret) and "
                              f"run there `{dest_command}` (the CRIU plugin does the rest)")
        else:
            reporter.progress(f"destination kit in {kit}: copy it to the destination as the images dir of "
                              f"`runc restore --image-path DIR ...` (the CRIU plugin does the rest)")
    reporter.event("listening", address=host, port=server.port, server_pid=server.proc.pid, checkpoint_id=m.checkpoint_id,
                   lazy_pages=m.lazy_pages, command=cmd, log=str(log), live=live_pids is not None)
    reporter.progress(f"serving checkpoint {m.checkpoint_id} on {host}:{server.port} "
                      f"({'until one destination has every page' if once else 'until Ctrl-C'}); log {log}\n"
                      f"  copy {secret.secret_path(images_dir)} to the destination (keep it mode 0600), then run "
                      f"there:\n    {cmd}")
    return server, s


def _follow(server: PageServer, s: ServeSummary, reporter: Reporter) -> None:
    for ev in server.events():
        record_event(ev, s, reporter)


def record_event(ev: dict[str, Any], s: ServeSummary, reporter: Reporter) -> None:
    """One of lr-pageserver's events: passed on (server_KIND), counted in s, and said in a line when it matters."""
    kind = ev.get("event")
    reporter.event(f"server_{kind}", **{k: v for k, v in ev.items() if k != "event"})
    if kind == "session":
        s.sessions += 1
        reporter.progress(f"session {ev.get('session')} from {ev.get('peer')}")
    elif kind == "delivered":
        s.delivered += 1
        s.deliveries.append(ev)
        reporter.progress(f"session {ev.get('session')} from {ev.get('peer')} has every page "
                          f"({ev.get('seconds', 0):.3f} s)")
    elif kind == "rejected":
        s.rejected += 1
        reporter.progress(f"rejected connection from {ev.get('peer')}: {ev.get('code')}")
    elif kind == "session_lost":
        s.lost += 1
        reporter.progress(f"session {ev.get('session')} lost before DONE: {ev.get('message')}")
    elif kind == "error":
        reporter.progress(f"lr-pageserver error: {ev.get('message')}")
    elif kind == "warning":
        reporter.progress(f"warning: {ev.get('message')}")
    elif kind == "committed":
        reporter.progress(f"session {ev.get('session')} committed: its restore starts, the source will not run again "
                          "unless it aborts")
    elif kind == "aborted":
        reporter.progress(f"session {ev.get('session')} aborted: its tree never ran")
    elif kind == "workingset":
        reporter.progress(f"session {ev.get('session')}: working set stored ({ev.get('pages')} pages from "
                          f"{ev.get('restores')} restore(s)); later restores place it first")


def summary_text(s: ServeSummary) -> str:
    return (f"served checkpoint {s.checkpoint_id} on {s.address}:{s.port}: {s.delivered} delivered, "
            f"{s.sessions} session(s), {s.rejected} rejected, {s.lost} lost; log {s.log}")


def migrate(pid: int, images_dir: Path, listen: str, reporter: Reporter, sanitized: bool = False,
            options: CriuOptions = CriuOptions(),
            secret_from: Path | None = None) -> tuple[checkpoint.CheckpointSummary, ServeSummary]:
    """Checkpoint the tree rooted at pid into images_dir, then serve it until one destination has every page."""
    parse_address(listen)
    cp = checkpoint.checkpoint(pid, images_dir, False, False, reporter, options, secret_from)
    reporter.event("checkpointed", **cp.__dict__)
    reporter.progress(checkpoint.summary_text(cp))
    try:
        served = serve(images_dir, listen, True, reporter, sanitized)
    except (LazyRestoreError, KeyboardInterrupt):
        reporter.progress(f"the checkpoint in {images_dir} is intact: serve it again with `lazyrestore serve "
                          f"--images {images_dir} --listen {listen}`, or restore it here with `lazyrestore restore "
                          f"--images {images_dir}`")
        raise
    return cp, served
