"""Replay protection: the sliding window (late, duplicate, too old), old incarnations, restarts,
forgetting a silent sender."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterip.core.replay import WINDOW, Freshness, ReplayGuard
from clusterip.core.wire import Replay


def test_first_message_then_increasing_sequence() -> None:
    g = ReplayGuard()
    assert g.admit(5, 100, 1, 0.0) is Freshness.NEW_SENDER
    assert g.admit(5, 100, 2, 0.1) is Freshness.NEXT
    assert g.admit(5, 100, 10, 0.2) is Freshness.NEXT  # gaps are fine (lost datagrams)
    assert g.current(5) == (100, 10)


def test_same_seq_is_a_replay() -> None:
    g = ReplayGuard()
    g.admit(5, 100, 7, 0.0)
    with pytest.raises(Replay, match="seq 7 already seen") as info:
        g.admit(5, 100, 7, 0.1)
    assert info.value.cause == "replay"


def test_late_but_unseen_is_accepted_once_and_changes_nothing_else() -> None:
    """Every message type shares one sequence: a KEPT sent just before a heartbeat may arrive
    after it, and must still be taken (once)."""
    g = ReplayGuard()
    g.admit(5, 100, 7, 0.0)
    assert g.admit(5, 100, 3, 0.1) is Freshness.LATE
    assert g.current(5) == (100, 7)  # the highest stays
    with pytest.raises(Replay):
        g.admit(5, 100, 3, 0.2)  # a duplicate of the late one
    assert g.admit(5, 100, 8, 0.3) is Freshness.NEXT


def test_duplicates_are_refused_anywhere_in_the_window() -> None:
    g = ReplayGuard()
    accepted = [1, 2, 4, 9, 30, 31, 60]
    for seq in accepted:
        g.admit(5, 100, seq, 0.0)
    for seq in accepted:
        with pytest.raises(Replay):
            g.check(5, 100, seq, 0.0)
    for seq in set(range(1, 61)) - set(accepted):
        assert g.check(5, 100, seq, 0.0) is Freshness.LATE


def test_older_than_the_window_is_refused_even_if_never_seen() -> None:
    g = ReplayGuard()
    g.admit(5, 100, 1, 0.0)
    g.admit(5, 100, 1 + WINDOW, 0.0)
    assert g.check(5, 100, 2, 0.0) is Freshness.LATE  # WINDOW - 1 behind: still in it
    with pytest.raises(Replay, match="too old"):
        g.admit(5, 100, 1, 0.1)  # seen, and out of the window anyway
    g.admit(5, 100, 2 + WINDOW, 0.0)
    with pytest.raises(Replay):
        g.admit(5, 100, 2, 0.1)  # never seen, but WINDOW behind: too old to tell
    # A jump of more than the window forgets the old bits: nothing behind it is "seen" twice.
    g.admit(5, 100, 1000, 0.2)
    assert g.check(5, 100, 1000 - WINDOW + 1, 0.2) is Freshness.LATE
    with pytest.raises(Replay):
        g.check(5, 100, 1000 - WINDOW, 0.2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 200), max_size=120))
def test_window_accepts_each_sequence_number_at_most_once(seqs: list[int]) -> None:
    """Any order of arrival: nothing is accepted twice, the highest is tracked, and an unseen
    number within the window of the highest is accepted."""
    g = ReplayGuard()
    taken: set[int] = set()
    for seq in seqs:
        highest = max(taken, default=0)
        try:
            g.admit(5, 100, seq, 0.0)
        except Replay:
            assert seq in taken or (taken and highest - seq >= WINDOW)
            continue
        assert seq not in taken
        assert not taken or seq > highest or highest - seq < WINDOW
        taken.add(seq)
        assert g.current(5) == (100, max(taken))


def test_old_seq_is_a_replay_and_changes_nothing() -> None:
    g = ReplayGuard()
    for seq in (3, 7):
        g.admit(5, 100, seq, 0.0)
    with pytest.raises(Replay):
        g.admit(5, 100, 3, 0.1)
    assert g.current(5) == (100, 7)
    assert g.admit(5, 100, 8, 0.2) is Freshness.NEXT


def test_new_incarnation_resets_the_window() -> None:
    g = ReplayGuard()
    for seq in range(1, 11):
        g.admit(5, 100, seq, 0.0)
    assert g.admit(5, 200, 5, 0.5) is Freshness.NEW_INCARNATION
    assert g.check(5, 200, 3, 0.5) is Freshness.LATE  # nothing of the old run counts as seen
    with pytest.raises(Replay):
        g.check(5, 200, 5, 0.5)
    with pytest.raises(Replay, match="old incarnation"):
        g.check(5, 100, 11, 0.5)


def test_restart_with_newer_incarnation_is_accepted_and_seq_starts_over() -> None:
    g = ReplayGuard()
    g.admit(5, 100, 900, 0.0)
    assert g.admit(5, 200, 1, 0.5) is Freshness.NEW_INCARNATION
    assert g.current(5) == (200, 1)


def test_old_incarnation_is_a_replay_even_with_a_high_seq() -> None:
    g = ReplayGuard()
    g.admit(5, 100, 1, 0.0)
    g.admit(5, 200, 1, 1.0)
    with pytest.raises(Replay, match="old incarnation 100"):
        g.admit(5, 100, 10**9, 2.0)


def test_incarnation_window_forgets_a_silent_sender() -> None:
    g = ReplayGuard(forget_after=60.0)
    g.admit(5, 200, 50, 10.0)
    with pytest.raises(Replay):
        g.admit(5, 100, 1, 69.9)  # still within the window after its last message
    assert g.admit(5, 100, 1, 70.0) is Freshness.NEW_INCARNATION  # clock stepped back
    assert g.current(5) == (100, 1)


def test_senders_are_independent() -> None:
    g = ReplayGuard()
    g.admit(5, 100, 9, 0.0)
    assert g.admit(6, 100, 1, 0.0) is Freshness.NEW_SENDER
    assert g.check(7, 1, 1, 0.0) is Freshness.NEW_SENDER
    assert g.current(7) is None  # check() records nothing


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(forget_after=0)
