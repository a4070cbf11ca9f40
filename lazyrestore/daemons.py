"""Running lr-lazyd (with its guardian) and reading what it reports.

lr-lazyd forks a guardian: the process started here is the guardian, whose exit
status is the outcome (0 every page placed; 1 error, 3 daemon died: in both
the guardian killed the restored tree). Progress arrives as JSON lines on a
pipe (--stats-fd) and, for `status`, in a file rewritten atomically.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import workingset
from .errors import DaemonFailed
from .procs import ready_byte
from .paths import native_binary
from .layout import LAZYD_LOG, STATS_LOG, STATUS_FILE

EXIT_TREE_KILLED = 3


@dataclass(frozen=True)
class LazydOptions:
    """Tuning passed to lr-lazyd (sizes in bytes; 0 drain_rate = uncapped)."""

    fault_around: int = 64 * 1024
    chunk: int = 1 << 20
    drain_rate: int = 0
    prefetch: str = "auto"  # auto | off | a working-set file
    compress: str = "auto"  # auto | on | off (remote page data)
    sanitized: bool = False  # run the ASan/UBSan build (tests)


@dataclass(frozen=True)
class RemoteSource:
    """An lr-pageserver to fetch the checkpoint from and stream its pages (remote mode)."""

    address: str  # HOST:PORT
    secret_file: Path
    timeout_s: int = 30  # how long a lost page server may stay away before the tree is stopped


class Lazyd:
    """One lr-lazyd serving one restore from `images` with CRIU work dir `workdir`."""

    def __init__(self, images: Path, workdir: Path, options: LazydOptions, detach: bool,
                 source: RemoteSource | None = None, criu_page_server: str | None = None,
                 leave_cgroup: bool = False) -> None:
        self.workdir = workdir
        self.detached = detach
        self.log = workdir / LAZYD_LOG
        self.status_file = workdir / STATUS_FILE
        binary = native_binary("san/lr-lazyd" if options.sanitized else "lr-lazyd")
        status_r, status_w = os.pipe()
        args = [str(binary), "-D", str(images), "-W", str(workdir), "-o", LAZYD_LOG,
                "--status-fd", str(status_w), "--status-file", str(self.status_file),
                "--stats-log", str(workdir / STATS_LOG), "--profile", str(workdir / workingset.FILE_NAME),
                "--fault-around", str(options.fault_around), "--chunk", str(options.chunk),
                "--drain-rate", str(options.drain_rate), "--prefetch", options.prefetch,
                "--compress", options.compress]
        if source is not None:
            args += ["--source", source.address, "--secret-file", str(source.secret_file),
                     "--source-timeout", str(source.timeout_s)]
        if criu_page_server is not None:
            args += ["--criu-page-server", criu_page_server]
        # Extra lr-lazyd options for tests and debugging only (e.g. --no-guard to show what the guardian prevents).
        args += os.environ.get("LAZYRESTORE_LAZYD_ARGS", "").split()
        fds = [status_w]
        self.stats_r = -1
        if not detach:
            self.stats_r, stats_w = os.pipe()
            args += ["--stats-fd", str(stats_w)]
            fds.append(stats_w)
        self.proc = subprocess.Popen(args, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), start_new_session=True,
                                     preexec_fn=leave_cgroups if leave_cgroup else None)
        for fd in fds:
            os.close(fd)
        # A remote source is fetched (metadata and eager pages) before lr-lazyd listens.
        self.source = source
        self._wait_listening(status_r, 30.0 if source is None else 30.0 + 4 * source.timeout_s)

    def _wait_listening(self, status_r: int, timeout: float) -> None:
        if not ready_byte(status_r, timeout):
            self.stop()
            what = "did not start listening" if self.source is None else \
                f"could not fetch the checkpoint from {self.source.address}"
            raise DaemonFailed(f"lr-lazyd {what}: {self.first_error()}; log {self.log}")

    def events(self) -> Iterator[dict[str, Any]]:
        """JSON objects from --stats-fd until the daemon closes it."""
        with os.fdopen(self.stats_r, "r", buffering=1) as f:
            self.stats_r = -1
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def wait(self) -> int:
        return self.proc.wait()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if still running after timeout seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGTERM the guardian: it stops the daemon and, before DONE, kills the restored tree."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def first_error(self) -> str:
        """The first "error:" line of the log (the cause), else its last lines."""
        return first_error(self.log)

    def last_log_lines(self, n: int = 3) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:]) or "(empty log)"


def leave_cgroups() -> None:
    """In the child, before exec: move into the root cgroups. A runtime puts CRIU (and so its plugin's children)
    into the container's cgroups; a detached lr-lazyd must not be frozen, limited or killed with the container
    it serves (its guardian kills the tree if the daemon dies). Best effort: a cgroup that refuses stays."""
    pid = str(os.getpid()).encode()
    for procs in [Path("/sys/fs/cgroup/cgroup.procs"), *Path("/sys/fs/cgroup").glob("*/cgroup.procs")]:
        try:
            fd = os.open(procs, os.O_WRONLY)
        except OSError:
            continue
        try:
            os.write(fd, pid)
        except OSError:
            pass  # e.g. a controller that does not take processes at its root; the others still apply
        finally:
            os.close(fd)


def fetch_only(images: Path, source: RemoteSource, log: Path, sanitized: bool = False) -> None:
    """lr-lazyd --fetch-only: the checkpoint's metadata and eager pages into images; DaemonFailed on failure."""
    binary = native_binary("san/lr-lazyd" if sanitized else "lr-lazyd")
    args = [str(binary), "-D", str(images), "-o", str(log), "--fetch-only", "--source", source.address,
            "--secret-file", str(source.secret_file), "--source-timeout", str(source.timeout_s)]
    code = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=60 + 4 * source.timeout_s).returncode
    if code != 0:
        raise DaemonFailed(f"could not fetch the checkpoint from {source.address}: {first_error(log)}; log {log}")


def first_error(log: Path) -> str:
    """The first "error:" line of a log (the cause), else its last lines."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in lines:
        if "error: " in line:
            return line.split("error: ", 1)[1]
    return " | ".join(lines[-3:]) or "(empty log)"


def read_status(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((workdir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
