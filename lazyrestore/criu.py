"""Finding CRIU and driving it through its RPC interface (pycriu, `criu swrk`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import CriuFailed, CriuUnavailable, UsageError

MIN_VERSION = (4, 1)
DEFAULT_BINARY = "/usr/local/sbin/criu"
BOOTSTRAP_HINT = "run `make bootstrap` in the lazyrestore checkout to build CRIU 4.1.1"
# CRIU's log level (0-4). At 4 CRIU writes a line per pagemap entry, about 1 us each: 60 ms of
# downtime for a 4 GiB process with 65k entries. 3 keeps errors, warnings and CRIU's own progress.
LOG_LEVEL_ENV = "LAZYRESTORE_CRIU_LOG_LEVEL"
DEFAULT_LOG_LEVEL = 3
# Lines of CRIU's log worth quoting when it fails.
_ERROR_LINE = re.compile(r"\b(Error|error|Failed|failed|can't|Can't|Unable|bad size)\b")
# Every CRIU run on a host without CAP_SYS_RESOURCE logs this; it is harmless.
_HARMLESS = ("Can't setup RLIMIT_NOFILE",)


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
    """Locate CRIU and check that it is at least 4.1, or raise CriuUnavailable."""
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
        raise CriuUnavailable(
            f"criu {text} at {path} is too old: lazyrestore needs CRIU >= 4.1 "
            f"(Debian 12's 3.17 cannot run on kernels >= 6.13: 'vdso: Unexpected rt vDSO area bounds'); "
            f"{BOOTSTRAP_HINT}"
        )
    return CriuBinary(path=path, version=text, log_level=log_level())


def log_excerpt(log_path: Path, limit: int = 12) -> list[str]:
    """The last error lines of a CRIU log (or its last lines when none look like errors)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return [f"(log {log_path} could not be read)"]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln) and not any(h in ln for h in _HARMLESS)]
    return (errors or lines)[-limit:]


def failure(action: str, exc: Exception, log_path: Path) -> CriuFailed:
    """A CriuFailed for an exception raised by pycriu, quoting the log."""
    reason = str(exc) or type(exc).__name__
    return CriuFailed(action, reason, str(log_path), log_excerpt(log_path))
