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
  8  CRIU failed or refused (dump or restore; the same for an eager and a lazy restore)
  9  verification failed (memory checksum differs)
 10  lazy restore failed because lr-lazyd stopped before every page was placed (while
     CRIU restored or after the tree resumed); its guardian killed the tree (the
     checkpoint is intact)
"""

from __future__ import annotations


class LazyRestoreError(Exception):
    """Base class: a failure with a message for the user and an exit code.

    Notes added with add_note() (what was done about the failure, e.g. partial images removed) are part of the
    message: full_message() gives both.
    """

    exit_code = 1

    @property
    def kind(self) -> str:
        return type(self).__name__

    def full_message(self) -> str:
        """The message, then each note on a line of its own, indented."""
        return "\n".join([str(self), *(f"  {note}" for note in getattr(self, "__notes__", ()))])


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
        lines = [self.headline(action, reason, log_path)] + [f"  | {line}" for line in log_excerpt]
        super().__init__("\n".join(lines))
        self.action = action
        self.reason = reason
        self.log_path = log_path
        self.log_excerpt = log_excerpt

    @staticmethod
    def headline(action: str, reason: str, log_path: str) -> str:
        return f"criu {action} failed: {reason}; log: {log_path}"

    def relocated(self, log_path: str) -> CriuFailed:
        """The same failure, its log now at log_path."""
        return CriuFailed(self.action, self.reason, log_path, self.log_excerpt)


class CriuRefused(CriuFailed):
    """CRIU refused a resource of the tree, or of the checkpoint on restore (criu_refusals.py): reason names
    the resource and the option or step that helps. resource: the refusal's short name, e.g. "tcp-established"."""

    def __init__(self, action: str, reason: str, log_path: str, log_excerpt: list[str], resource: str = "") -> None:
        super().__init__(action, reason, log_path, log_excerpt)
        self.resource = resource

    @staticmethod
    def headline(action: str, reason: str, log_path: str) -> str:
        return f"criu {action} refused: {reason}; log: {log_path}"

    def relocated(self, log_path: str) -> CriuRefused:
        return CriuRefused(self.action, self.reason, log_path, self.log_excerpt, self.resource)


class VerificationFailed(LazyRestoreError):
    exit_code = 9


class DaemonFailed(LazyRestoreError):
    """lr-lazyd stopped before every page was placed; its guardian killed the restored tree."""

    exit_code = 10
