"""Replay protection: same seq, old seq, old incarnation, restart, forgetting window."""

from __future__ import annotations

import pytest

from clusterip.core.replay import Freshness, ReplayGuard
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
    with pytest.raises(Replay, match="seq 7 not above 7") as info:
        g.admit(5, 100, 7, 0.1)
    assert info.value.cause == "replay"


def test_old_seq_is_a_replay_and_changes_nothing() -> None:
    g = ReplayGuard()
    g.admit(5, 100, 7, 0.0)
    with pytest.raises(Replay):
        g.admit(5, 100, 3, 0.1)
    assert g.current(5) == (100, 7)
    assert g.admit(5, 100, 8, 0.2) is Freshness.NEXT


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
