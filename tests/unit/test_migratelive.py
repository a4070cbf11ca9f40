"""migratelive: how a live migration that ended without a delivery treats its stopped source, and `abort`."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pytest

from lazyrestore import migratelive
from lazyrestore.errors import DaemonFailed, ProcessError, UsageError
from lazyrestore.livefate import ROLLBACK, LiveFate
from lazyrestore.output import Reporter


class FakeDump:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.released = ["TCP repair mode off: pid 42 fd 3"]

    def rollback(self) -> None:
        self.calls.append("rollback")

    def abandon(self) -> None:
        self.calls.append("abandon")


def end(fate: LiveFate, outcome: object) -> tuple[FakeDump, str, list[dict]]:
    dump, out = FakeDump(), io.StringIO()
    error = migratelive.end_without_delivery(dump, fate, outcome, 42, Path("/img"), Reporter(True, out, io.StringIO()))
    return dump, str(error) + " ".join(getattr(error, "__notes__", [])), [json.loads(x) for x in out.getvalue().split("\n") if x]


def test_nothing_committed_rolls_back() -> None:
    dump, text, events = end(LiveFate(), ROLLBACK)
    assert dump.calls == ["rollback"] and "rolled back" in text and events[-1]["event"] == "rolled_back"
    assert events[-1]["released"] == ["TCP repair mode off: pid 42 fd 3"]


def test_a_failure_while_a_destination_holds_the_tree_ends_the_source() -> None:
    fate = LiveFate()
    fate.on_event({"event": "committed", "session": 7})
    dump, text, events = end(fate, DaemonFailed("lr-pageserver could not start"))
    assert dump.calls == ["abandon"] and "not resumed" in text and "lr-pageserver could not start" in text
    assert events[-1] == {**events[-1], "event": "source_ended", "reason": "a destination may run it"}


def test_the_operators_abort_kills_the_source_even_if_it_could_resume() -> None:
    dump, _, events = end(LiveFate(), migratelive.KILL)
    assert dump.calls == ["abandon"] and events[-1]["reason"] == "aborted"


def test_abort_signals_the_migrating_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazyrestore").mkdir()
    (tmp_path / "lazyrestore" / migratelive.PID_FILE).write_text("4242\n")
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert migratelive.abort(tmp_path, True) == 4242 and sent == [(4242, signal.SIGUSR1)]
    with pytest.raises(UsageError, match="--kill-source"):
        migratelive.abort(tmp_path, False)
    with pytest.raises(ProcessError, match="no live migration serves"):
        migratelive.abort(tmp_path / "other", True)
