"""Errors of lazyrestore, each with a stable exit code.

Every failure the user can cause or meet is one subclass of LazyRestoreError.
``main`` in cli.py turns any of them into one line on stderr (and one JSON
error event with --json) and exits with the class's ``exit_code``.

Exit codes (stable, documented in README.md):
  0  success
  1  internal error (a bug: please report it)
  2  bad command line
  3  not permitted (not root)
  4  CRIU missing, too old or failing its self-check
  5  process problem (absent, not restorable as is)
  6  images directory problem (missing, not empty, not a checkpoint)
  7  corrupt or inconsistent checkpoint (image, index or manifest)
  8  CRIU failed (dump or restore)
  9  verification failed (memory checksum differs)
 10  lazy restore failed after the tree resumed: lr-lazyd stopped before every
     page was placed, so its guardian killed the tree (the checkpoint is intact)
"""

from __future__ import annotations


class LazyRestoreError(Exception):
    """Base class: a failure with a message for the user and an exit code."""

    exit_code = 1

    @property
    def kind(self) -> str:
        return type(self).__name__


class UsageError(LazyRestoreError):
    exit_code = 2


class NotPermitted(LazyRestoreError):
    exit_code = 3


class CriuUnavailable(LazyRestoreError):
    exit_code = 4


class ProcessError(LazyRestoreError):
    exit_code = 5


class ImagesDirError(LazyRestoreError):
    exit_code = 6


class CorruptCheckpoint(LazyRestoreError):
    """A file of the checkpoint is truncated, corrupt or does not match the rest."""

    exit_code = 7

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class CriuFailed(LazyRestoreError):
    """CRIU itself reported a failure; the message quotes its log."""

    exit_code = 8

    def __init__(self, action: str, reason: str, log_path: str, log_excerpt: list[str]) -> None:
        lines = [f"criu {action} failed: {reason}; log: {log_path}"]
        lines += [f"  | {line}" for line in log_excerpt]
        super().__init__("\n".join(lines))
        self.log_path = log_path
        self.log_excerpt = log_excerpt


class VerificationFailed(LazyRestoreError):
    exit_code = 9


class DaemonFailed(LazyRestoreError):
    """lr-lazyd stopped before every page was placed; its guardian killed the restored tree."""

    exit_code = 10
