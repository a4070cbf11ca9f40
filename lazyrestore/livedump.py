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
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from pathlib import Path

from . import criu, criuopts, livehold, netrelease
from .criuopts import CriuOptions
from .errors import CriuFailed, DaemonFailed
from .procs import ready_byte

DUMP_LOG = "dump.log"
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


class LiveDump:
    """One `criu dump --lazy-pages` of the tree rooted at pid into images_dir (metadata and eager pages only)."""

    def __init__(self, binary: criu.CriuBinary, pid: int, images_dir: Path,
                 options: CriuOptions = CriuOptions()) -> None:
        self.pid, self.images_dir, self.options = pid, images_dir, options
        self.released: list[str] = []  # what was undone after a rollback (netrelease)
        self.held: livehold.Hold | None = None  # once CRIU holds the tree: its SIGSTOP (livehold.py)
        self._stopped_before = livehold.stopped_now(pid)
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
        self.ended = False

    @property
    def log(self) -> Path:
        return self.images_dir / DUMP_LOG

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until CRIU has dumped the metadata and holds the tree stopped; CriuFailed when the dump failed (the tree
        then runs on: CRIU resumes it)."""
        if ready_byte(self._status_r, timeout):
            self.held = livehold.hold(self.pid, self._stopped_before)
            return
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.ended = True
        raise criu.failure("dump", CriuExit(f"criu dump --lazy-pages exited {code} before it was ready"), self.log,
                           self.pid)

    def criu_gone(self) -> int | None:
        """CRIU's exit code when it died without being told how the migration ends (the tree stays stopped)."""
        return None if self.ended else self.proc.poll()

    def finish(self, timeout: float = EXIT_TIMEOUT_S) -> None:
        """The migration is done: CRIU kills the source tree and exits 0 (without CRIU: the tree is killed here)."""
        if self.criu_gone() is not None:
            return self._end_without_criu()
        self._send(PS_IOV_CLOSE)
        try:
            self.ctl.settimeout(timeout)
            answer = self.ctl.recv(4)
        except OSError:
            answer = b""
        code = self._wait(timeout)
        if code != 0 or len(answer) != 4:
            raise CriuFailed("dump", f"criu dump --lazy-pages did not end as asked (exit {code}) after the migration "
                             f"completed: check that process {self.pid} is gone", str(self.log),
                             criu.log_excerpt(self.log))
        self._drop_hold()

    def rollback(self, timeout: float = EXIT_TIMEOUT_S) -> None:
        """No destination runs the tree: CRIU resumes the source tree where it stopped (and exits 1); with
        --tcp-established, what CRIU would leave holding on that path is released first, while the tree is still
        stopped (netrelease.py: a task resumed with its socket in repair mode gets EPERM from its pending recv)."""
        gone = self.criu_gone() is not None
        if self.options.tcp_established and (gone or not self.ended):
            self.released = netrelease.release(self.pid)
        if gone:
            self._wait(0)  # reaped, our end of its socket closed
        else:
            self._send(PS_ROLLBACK)
            code = self._wait(timeout)
            if code != 1:
                raise CriuFailed("dump", f"criu dump --lazy-pages exited {code} when asked to resume the source tree: "
                                 f"check whether process {self.pid} runs", str(self.log), criu.log_excerpt(self.log))
        if self.held is not None:  # CRIU let go of it, or is gone: the pending SIGSTOP stopped it
            livehold.release(self.held)
            self.held = None

    def abandon(self) -> None:
        """Our end closed without a word (CRIU reads EOF: it kills the tree; without CRIU it is killed here)."""
        if self.criu_gone() is not None:
            return self._end_without_criu()
        self.ctl.close()
        self._wait(EXIT_TIMEOUT_S)
        self._drop_hold()

    def _end_without_criu(self) -> None:
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
