"""What may become of a live migration's stopped source tree, from the page server's events.

Two copies of a tree must never run. A destination commits before it starts CRIU's restore (lr-lazyd sends
COMMIT once the checkpoint is fetched; the server answers only when no other destination holds the tree) and
aborts when its restore failed before the tree resumed (ABORT: its tree never ran). So:
  - committed: the session may run the tree from now on;
  - aborted: it did not, and never will;
  - session_lost while committed: it may have run the tree (it died, or lost its link, after committing);
  - delivered: it has every page; the migration is done.
The source may be resumed (a rollback) only while no session is committed and none may have run the tree. A
wrong secret (rejected "auth") or an ABORT then rolls back at once: the destination failed before its tree ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLLBACK = "rollback"
DONE = "done"


@dataclass
class LiveFate:
    committed: set[int] = field(default_factory=set)
    may_have_run: bool = False
    delivered: bool = False

    def can_roll_back(self) -> bool:
        return not self.committed and not self.may_have_run and not self.delivered

    def on_event(self, ev: dict[str, Any]) -> str | None:
        """ROLLBACK when the source must resume now, DONE when a destination has every page, else None."""
        kind, session = ev.get("event"), ev.get("session")
        if kind == "committed":
            self.committed.add(session)
        elif kind == "aborted":
            self.committed.discard(session)
            return ROLLBACK if self.can_roll_back() else None
        elif kind == "session_lost" and session in self.committed:
            self.committed.discard(session)
            self.may_have_run = True
        elif kind == "rejected" and ev.get("code") == "auth":
            return ROLLBACK if self.can_roll_back() else None
        elif kind == "delivered":
            self.committed.discard(session)
            self.delivered = True
            return DONE
        return None
