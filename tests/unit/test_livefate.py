"""livefate.LiveFate: when a live migration's stopped source may be resumed, from the page server's events."""

from __future__ import annotations

from lazyrestore.livefate import DONE, ROLLBACK, LiveFate


def run(*events: dict) -> list[str | None]:
    fate = LiveFate()
    return [fate.on_event(ev) for ev in events]


def test_an_abort_before_any_commit_rolls_back() -> None:
    assert run({"event": "session", "session": 1}, {"event": "aborted", "session": 1}) == [None, ROLLBACK]


def test_a_destination_that_committed_and_aborted_never_ran_so_the_source_resumes() -> None:
    assert run({"event": "committed", "session": 1}, {"event": "aborted", "session": 1}) == [None, ROLLBACK]


def test_a_committed_destination_lost_may_have_run_the_tree_so_nothing_rolls_back_after_it() -> None:
    fate = LiveFate()
    for ev in ({"event": "committed", "session": 1}, {"event": "session_lost", "session": 1},
               {"event": "committed", "session": 2}):
        assert fate.on_event(ev) is None
    assert fate.on_event({"event": "aborted", "session": 2}) is None, "session 1 may have run the tree"
    assert fate.on_event({"event": "rejected", "code": "auth"}) is None
    assert not fate.can_roll_back()


def test_a_wrong_secret_rolls_back_only_while_nothing_is_committed() -> None:
    assert run({"event": "rejected", "code": "auth"}) == [ROLLBACK]
    assert run({"event": "rejected", "code": "protocol"}) == [None], "a stray connection is no destination"
    assert run({"event": "committed", "session": 1}, {"event": "rejected", "code": "auth"}) == [None, None]


def test_an_uncommitted_session_lost_keeps_the_source_stopped_and_resumable() -> None:
    fate = LiveFate()
    assert fate.on_event({"event": "session_lost", "session": 3}) is None
    assert fate.can_roll_back()


def test_delivered_is_done_and_never_rolls_back() -> None:
    fate = LiveFate()
    assert fate.on_event({"event": "committed", "session": 1}) is None
    assert fate.on_event({"event": "delivered", "session": 1}) == DONE
    assert not fate.can_roll_back()
