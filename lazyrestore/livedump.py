"""A live migration's CRIU: `criu dump --lazy-pages --ps-socket FD`, which dumps the tree's metadata and then
holds the tree stopped (ptrace-stop) while its memory is read, until told how it ends.

CRIU's page server gets one end of a socket pair instead of a TCP port: nobody else can reach it, and no
pipe-max-size change is needed because nothing asks it for pages (lr-pageserver reads the stopped tasks'
memory itself). The other end is the handle on the tree's fate (CRIU 4.2.1, criu/page-xfer.c and cr-dump.c):
  - PS_IOV_CLOSE: CRIU answers a 4-byte status, kills the tasks and exits 0 (the migration is done);
  - any unknown command: "Lazy pages transfer FAILED", CRIU resumes the tasks where they stopped and exits 1
    (a rollback); CRIU skips undoing its network lock and TCP repair mode on that path: after a
    --tcp-established rollback netrelease.py does it;
  - EOF (every holder of the end closed it, e.g. this process killed): CRIU kills the tasks and exits 0.
If CRIU itself dies, the tree stays stopped all the same (livehold.py): each ending then does without it.

LiveDump.adopt takes over such a dump started by someone else: the CRIU plugin makes a runtime's dump live
(LAZYRESTORE_LIVE, livehook.py) and hands this process the other end of the socket, the status pipe and CRIU's
pid. That CRIU is not our child: it is watched by pidfd, and its exit code (the runtime reads it) is unknown
here, so the endings are checked by what CRIU answers and by the tree instead.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
from pathlib import Path
from typing import Protocol

from . import criu, criuopts, fatekeeper, livehold, netrelease
from .criuopts import CriuOptions
from .errors import CriuFailed, DaemonFailed
from .procs import ready_byte
from .layout import DUMP_LOG

# criu 4.2's struct page_server_iov: u32 cmd, 4 bytes of padding, u64 nr_pages, u64 vaddr, u64 dst_id.
PS_IOV = struct.Struct("<I4xQQQ")
PS_IOV_CLOSE = 0x1023
PS_ROLLBACK = 0xDEAD  # no command of CRIU's: it fails the transfer and resumes the tasks
READY_TIMEOUT_S = 600.0
EXIT_TIMEOUT_S = 60.0


class CriuExit(Exception):
    """CRIU's dump ended other than asked (exit code, log excerpt)."""


def dump_args(binary: criu.CriuBinary, pid: int, images_dir: Path, ps_fd: int, status_fd: int,
              options: CriuOptions) -> list[str]:
    return [binary.path, "dump", "-t", str(pid), "-D", str(images_dir), "-o", DUMP_LOG, f"-v{binary.log_level}",
            "--lazy-pages", "--ps-socket", str(ps_fd), "--status-fd", str(status_fd), *criuopts.to_cli(options)]


class CriuProcess(Protocol):
    """What LiveDump needs of its CRIU: subprocess.Popen's pid, poll, wait and kill."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


EXIT_UNKNOWN = -1000  # an adopted CRIU's exit code: not ours to read (its parent, the runtime, reads it)


class AdoptedCriu:
    """A CRIU this process did not start, watched by pidfd (a reused pid is never signalled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0) if self.returncode is None and _readable(self.pidfd, 0) else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not _readable(self.pidfd, timeout):
                raise subprocess.TimeoutExpired(f"criu (pid {self.pid})", timeout or 0)
            self.returncode = EXIT_UNKNOWN
            os.close(self.pidfd)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _readable(fd: int, timeout: float | None) -> bool:
    """A pidfd reads as ready once its process has exited."""
    return bool(select.select([fd], [], [], timeout)[0])


class LiveDump:
    """One `criu dump --lazy-pages` of the tree rooted at pid into images_dir (metadata and eager pages only)."""

    proc: CriuProcess
    ctl: socket.socket  # our end of CRIU's --ps-socket
    _status_r: int      # the read end of CRIU's --status-fd

    def __init__(self, binary: criu.CriuBinary | None, pid: int, images_dir: Path,
                 options: CriuOptions = CriuOptions()) -> None:
        """binary None: no CRIU started (adopt)."""
        self.pid, self.images_dir, self.options = pid, images_dir, options
        self.released: list[str] = []  # what was undone after a rollback (netrelease)
        self.held: livehold.Hold | None = None  # once CRIU holds the tree: its SIGSTOP (livehold.py)
        self.keeper: fatekeeper.Keeper | None = None  # once served: who ends the dump if this process dies
        self._stopped_before = livehold.stopped_now(pid)
        self.ended = False
        self.own = binary is not None  # our child: its exit codes are checked
        self.release_net = options.tcp_established  # undo CRIU's network lock after a rollback (netrelease.py)
        self.criu_log = self.images_dir / DUMP_LOG
        if binary is None:
            return
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status_r, status_w = os.pipe()
        env = {**os.environ, "LAZYRESTORE_PLUGIN": "off"}  # lazyrestore indexes this dump itself
        try:
            self.proc = subprocess.Popen(dump_args(binary, pid, images_dir, theirs.fileno(), status_w, options),
                                         pass_fds=(theirs.fileno(), status_w), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        finally:
            theirs.close()
            os.close(status_w)
        self._status_r = status_r

    @classmethod
    def adopt(cls, ctl: socket.socket, status_r: int, criu_pid: int, pid: int, images_dir: Path,
              criu_log: Path) -> LiveDump:
        """The live dump of the tree rooted at pid that CRIU criu_pid makes (started by a runtime, made live by the
        CRIU plugin): ctl, the other end of its --ps-socket; status_r, the read end of its --status-fd; criu_log,
        its log. A rollback also undoes CRIU's network lock: the runtime's options are not known here, and a
        container's own network namespace is locked whatever they are."""
        dump = cls(None, pid, images_dir)
        dump.ctl, dump._status_r, dump.proc, dump.criu_log = ctl, status_r, AdoptedCriu(criu_pid), criu_log
        dump.release_net = True
        return dump

    @property
    def log(self) -> Path:
        return self.criu_log

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until CRIU has dumped the metadata and holds the tree stopped; CriuFailed when the dump failed (the tree
        then runs on: CRIU resumes it)."""
        if ready_byte(self._status_r, timeout):
            self.held = livehold.hold(self.pid, self._stopped_before)
            return
        self._ending()
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.ended = True
        raise criu.failure("dump", CriuExit(f"criu dump --lazy-pages exited {code} before it was ready"), self.log,
                           self.pid)

    def keep_fate(self) -> None:
        """From now until this process ends the dump itself, a keeper ends it if this process dies first: a rollback
        while no destination may run the tree (fatekeeper.py)."""
        self.keeper = fatekeeper.Keeper(self.images_dir, self.pid, self.proc.pid, self._stopped_before,
                                        self.release_net, self.ctl.fileno(), self.criu_log)

    def _ending(self) -> None:
        """This process ends the dump: its keeper stands down (and closes its copy of our end)."""
        if self.keeper is not None:
            self.keeper.stand_down()
            self.keeper = None

    def criu_gone(self) -> int | None:
        """CRIU's exit code when it died without being told how the migration ends (the tree stays stopped)."""
        return None if self.ended else self.proc.poll()

    def finish(self, timeout: float = EXIT_TIMEOUT_S) -> None:
        """The migration is done: CRIU kills the source tree and exits 0 (without CRIU: the tree is killed here)."""
        self._ending()
        if self.criu_gone() is not None:
            return self._end_without_criu()
        self._send(PS_IOV_CLOSE)
        try:
            self.ctl.settimeout(timeout)
            answer = self.ctl.recv(4)
        except OSError:
            answer = b""
        code = self._wait(timeout)
        if len(answer) != 4 or (code != 0 if self.own else struct.unpack("<i", answer)[0] != 0):
            raise CriuFailed("dump", f"criu dump --lazy-pages did not end as asked (exit {code}) after the migration "
                             f"completed: check that process {self.pid} is gone", str(self.log),
                             criu.log_excerpt(self.log))
        self._drop_hold()

    def rollback(self, timeout: float = EXIT_TIMEOUT_S) -> None:
        """No destination runs the tree: CRIU resumes the source tree where it stopped (and exits 1); with
        --tcp-established, what CRIU would leave holding on that path is released first, while the tree is still
        stopped (netrelease.py: a task resumed with its socket in repair mode gets EPERM from its pending recv)."""
        self._ending()
        gone = self.criu_gone() is not None
        if self.release_net and (gone or not self.ended):
            self.released = netrelease.release(self.pid)
        if gone:
            self._wait(0)  # reaped, our end of its socket closed
        else:
            self._send(PS_ROLLBACK)
            code = self._wait(timeout)
            if code != 1 and self.own:
                raise CriuFailed("dump", f"criu dump --lazy-pages exited {code} when asked to resume the source tree: "
                                 f"check whether process {self.pid} runs", str(self.log), criu.log_excerpt(self.log))
        if self.held is not None:  # CRIU let go of it, or is gone: the pending SIGSTOP stopped it
            livehold.release(self.held)
            self.held = None

    def abandon(self) -> None:
        """Our end closed without a word (CRIU reads EOF: it kills the tree; without CRIU it is killed here)."""
        self._ending()
        if self.criu_gone() is not None:
            return self._end_without_criu()
        self.ctl.close()
        self._wait(EXIT_TIMEOUT_S)
        self._drop_hold()

    def _end_without_criu(self) -> None:
        self._ending()
        code = self._wait(0)
        if self.held is None or not livehold.end(self.held):
            raise CriuFailed("dump", f"criu dump --lazy-pages died (exit {code}) and source tree {self.pid} could not "
                             f"be ended: kill it (it is stopped; two copies must never run)", str(self.log),
                             criu.log_excerpt(self.log))
        self.held = None

    def _drop_hold(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None

    def _send(self, cmd: int) -> None:
        if self.ended:
            raise DaemonFailed(f"criu dump --lazy-pages already ended (exit {self.proc.returncode})")
        try:
            self.ctl.sendall(PS_IOV.pack(cmd, 0, 0, 0))
        except OSError as exc:
            raise DaemonFailed(f"criu dump --lazy-pages is gone ({exc.strerror}); its log: {self.log}") from exc

    def _wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.ended = True
        self.ctl.close()
        return code
