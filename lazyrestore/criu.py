"""Finding CRIU and driving it through its RPC interface (pycriu, `criu swrk`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import criu_refusals
from .errors import CriuFailed, CriuRefused, CriuUnavailable, UsageError

# 4.2: CRIU < 4.2 cannot dump any TCP, UDP or packet socket on kernels >= 6.16, and 4.2 changed the page
# server's header (criu/page-xfer.c), which lr-lazyd speaks: a 4.1 peer and a 4.2 peer cannot talk.
MIN_VERSION = (4, 2)
DEFAULT_BINARY = "/usr/local/sbin/criu"
BOOTSTRAP_HINT = criu_refusals.BOOTSTRAP
# CRIU's log level (0-4). At 4 CRIU writes a line per pagemap entry, about 1 us each: 60 ms of
# downtime for a 4 GiB process with 65k entries. 3 keeps errors, warnings and CRIU's own progress.
LOG_LEVEL_ENV = "LAZYRESTORE_CRIU_LOG_LEVEL"
DEFAULT_LOG_LEVEL = 3
# Lines of CRIU's log worth quoting when it fails.
_ERROR_LINE = re.compile(r"\b(Error|error|Failed|failed|can't|Can't|Unable|bad size)\b")
# Every CRIU run on a host without CAP_SYS_RESOURCE logs this; it is harmless.
_HARMLESS = ("Can't setup RLIMIT_NOFILE",)
# The prefix of a CRIU error line: "(00.035953)      1: Error (criu/sk-inet.c:200): " or "pie: 1: Error (...): ".
_ERROR_PREFIX = re.compile(r"^(?:\(\s*[0-9.]+\)\s*)?(?:pie:\s*)?(?:\d+:\s*)?Error\s*\([^)]*\):\s*")
# CRIU's closing lines, which say only that something before them failed.
_SUMMARY = re.compile(r"(Dumping|Restoring) FAILED|Dump files \(pid: \d+\) failed")
# pycriu's text for an RPC failure with no errno of its own ("DUMP failed: Error(0): Unknown").
_PYCRIU_UNKNOWN = re.compile(r"Error\(\d+\): Unknown$")


@dataclass(frozen=True)
class CriuBinary:
    """A CRIU executable known to be recent enough.

    path: absolute path of the binary.
    version: its version, e.g. "4.1.1".
    log_level: the level to run it at (see log_level()).
    """

    path: str
    version: str
    log_level: int = DEFAULT_LOG_LEVEL


def log_level() -> int:
    """CRIU's log level: $LAZYRESTORE_CRIU_LOG_LEVEL (0-4) or DEFAULT_LOG_LEVEL."""
    text = os.environ.get(LOG_LEVEL_ENV, "").strip()
    if not text:
        return DEFAULT_LOG_LEVEL
    if text not in ("0", "1", "2", "3", "4"):
        raise UsageError(f"{LOG_LEVEL_ENV}={text!r}: expected a CRIU log level from 0 to 4")
    return int(text)


def parse_version(text: str) -> tuple[int, ...] | None:
    """The version from `criu --version` output ("Version: 4.1.1"), or None."""
    match = re.search(r"^Version:\s*([0-9]+(?:\.[0-9]+)*)\.?(?:[-+~]\S*)?\s*$", text, re.MULTILINE)
    if not match:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def candidate_path() -> str | None:
    """The CRIU to use: $LAZYRESTORE_CRIU, else the bootstrap's, else PATH's."""
    explicit = os.environ.get("LAZYRESTORE_CRIU")
    if explicit:
        return explicit
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    return shutil.which("criu")


def find_criu() -> CriuBinary:
    """Locate CRIU and check that it is at least MIN_VERSION, or raise CriuUnavailable."""
    path = candidate_path()
    if path is None or not os.access(path, os.X_OK):
        raise CriuUnavailable(f"criu not found (looked at $LAZYRESTORE_CRIU, {DEFAULT_BINARY} and PATH); {BOOTSTRAP_HINT}")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        raise CriuUnavailable(f"cannot run {path}: {exc.strerror}; {BOOTSTRAP_HINT}") from exc
    version = parse_version(out.stdout)
    if version is None:
        raise CriuUnavailable(f"{path} --version printed no version; {BOOTSTRAP_HINT}")
    text = ".".join(map(str, version))
    if version < MIN_VERSION:
        raise CriuUnavailable(f"criu {text} at {path} is too old: lazyrestore needs CRIU >= "
                              f"{'.'.join(map(str, MIN_VERSION))} ({too_old_why(version)}); {BOOTSTRAP_HINT}")
    return CriuBinary(path=path, version=text, log_level=log_level())


def too_old_why(version: tuple[int, ...]) -> str:
    """Why a CRIU older than MIN_VERSION does not do here."""
    why = ("CRIU < 4.2 cannot dump TCP, UDP or packet sockets on kernels >= 6.16: 'sockets: Can't get 1:16 opt', "
           "as Linux 6.16 restricted SO_PASSCRED; and its page server speaks another protocol than lr-lazyd")
    if version < (4, 1):
        why += "; CRIU < 4.1, e.g. Debian 12's 3.17, cannot run on kernels >= 6.13: 'Unexpected rt vDSO area bounds'"
    return why


def read_log(log_path: Path) -> list[str] | None:
    """The lines of a CRIU log, or None if it cannot be read."""
    try:
        return log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None


def error_lines(lines: list[str]) -> list[str]:
    """The lines of a CRIU log that look like errors, without the harmless ones."""
    return [ln for ln in lines if _ERROR_LINE.search(ln) and not any(h in ln for h in _HARMLESS)]


def log_excerpt(log_path: Path, limit: int = 12) -> list[str]:
    """The last error lines of a CRIU log (or its last lines when none look like errors)."""
    lines = read_log(log_path)
    if lines is None:
        return [f"(log {log_path} could not be read)"]
    return (error_lines(lines) or lines)[-limit:]


def first_error(lines: list[str]) -> str | None:
    """The first CRIU error line that says what went wrong, without its prefix; None if there is none."""
    for line in error_lines(lines):
        text = _ERROR_PREFIX.sub("", line).strip()
        if _ERROR_PREFIX.match(line) and text and not _SUMMARY.search(text):
            return text
    return None


def reason(exc: Exception, lines: list[str]) -> str:
    """What to say first about a failed CRIU call: pycriu's text when it means something, else the first real
    error line of CRIU's log, else "CRIU failed (see log)"."""
    text = str(exc) or type(exc).__name__
    if not _PYCRIU_UNKNOWN.search(text):
        return text
    return first_error(lines) or "CRIU failed (see log)"


def failure(action: str, exc: Exception, log_path: Path, pid: int | None = None) -> CriuFailed:
    """A CriuFailed for an exception raised by pycriu, quoting the log: a CriuRefused when criu_refusals knows
    what CRIU refused. pid: the root of the tree being dumped (its live sockets make the message precise)."""
    lines = read_log(log_path) or []
    excerpt = log_excerpt(log_path)
    found = criu_refusals.find(lines, criu_refusals.Context(action, pid))
    if found is not None:
        if found.line not in excerpt:  # quote the line the explanation comes from, however early it was
            excerpt = [found.line, *excerpt]
        return CriuRefused(action, found.text, str(log_path), excerpt, resource=found.refusal.name)
    return CriuFailed(action, reason(exc, lines), str(log_path), excerpt)
