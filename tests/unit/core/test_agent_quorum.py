"""The isolation rule on its own: quorum over the last known membership, the two-node rule
with carrier, ties, the base moving on, the isolation limit."""

from __future__ import annotations

import itertools

import pytest

from clusterip.core.quorum import Quorum, has_quorum

F = frozenset


@pytest.mark.parametrize("size", range(1, 8))
def test_a_strict_majority_of_the_base_has_quorum_and_halves_never_both(size: int) -> None:
    base = F(range(1, size + 1))
    for k in range(size + 1):
        for side in map(F, itertools.combinations(sorted(base), k)):
            ok = has_quorum(side | {99}, base, carrier=True)  # a node outside the base: no vote
            other = has_quorum((base - side) | {98}, base, carrier=True)
            if 2 * k > size:
                assert ok and not other
            assert not (ok and other) or size == 2, (side, base)  # two nodes: see below


def test_ties_go_to_the_half_with_the_lowest_node_id_except_in_a_two_node_base() -> None:
    base = F({2, 5, 7, 9})
    assert has_quorum(F({2, 9}), base, carrier=True)
    assert not has_quorum(F({5, 7}), base, carrier=True)
    # Two nodes: the one with carrier keeps quorum, unless it lost its carrier meanwhile.
    assert has_quorum(F({1}), F({1, 2}), carrier=True)
    assert has_quorum(F({2}), F({1, 2}), carrier=True)
    assert not has_quorum(F({2}), F({1, 2}), carrier=True, was_cut=True)
    assert has_quorum(F({1, 2}), F({1, 2}), carrier=True, was_cut=True)


def test_no_carrier_no_quorum() -> None:
    assert not has_quorum(F({1, 2, 3}), F({1, 2, 3}), carrier=False)
    assert has_quorum(F({1}), F(), carrier=True)  # no base yet: alone is fine


def test_the_base_grows_at_once_and_shrinks_after_the_membership_settled() -> None:
    q = Quorum(1, settle=0.25)
    assert q.base == {1}
    assert q.judge(F({1, 2, 3}), 0.0) and q.base == {1, 2, 3}  # all reached: no wait
    assert q.judge(F({1, 2}), 1.0) and q.deadline() == 1.25  # two of three
    assert q.judge(F({1, 2}), 1.2) and q.base == {1, 2, 3}
    assert q.judge(F({1, 2}), 1.25) and q.base == {1, 2}  # exactly at its deadline
    assert q.judge(F({1, 2, 4}), 2.0) and q.base == {1, 2, 4}  # a newcomer counts at once
    q = Quorum(1, settle=0.25, base=F({1, 2, 3}))
    assert not q.judge(F({1}), 2.0) and q.base == {1, 2, 3}  # silence does not shrink it
    assert not q.judge(F({1}), 9.0) and q.base == {1, 2, 3}
    q.left(3)  # a LEAVE does
    assert q.base == {1, 2} and q.judge(F({1}), 9.0)


def test_a_link_flap_in_a_two_node_base_leaves_the_flapping_node_without_quorum() -> None:
    q = Quorum(2, settle=0.25, base=F({1, 2}))
    q.set_carrier(False)
    assert not q.judge(F({1, 2}), 0.0)  # the peer not timed out yet: still no carrier
    q.set_carrier(True)
    assert not q.judge(F({2}), 1.0)  # the peer timed out meanwhile: this node was the cut one
    assert q.judge(F({1, 2}), 1.1)  # it hears its peer again
    assert q.judge(F({2}), 2.0)  # and now it is the survivor of a clean two-node failure


def test_the_isolation_limit_counts_time_with_carrier_only() -> None:
    q = Quorum(1, settle=0.25, base=F({1, 2, 3}))
    assert not q.give_up_waiting(F({1}), 0.1, limit=1.0)  # starts counting
    assert q.isolated_since == 0.1
    assert not q.give_up_waiting(F({1}), 0.1 + 0.999, limit=1.0)
    assert q.give_up_waiting(F({1}), 0.1 + 1.0, limit=1.0)  # the deadline itself counts
    assert q.base == {1} and q.isolated_since is None
    q = Quorum(1, settle=0.25, base=F({1, 2, 3}))
    q.set_carrier(False)
    for t in (0.0, 5.0, 50.0):
        assert not q.give_up_waiting(F({1}), t, limit=1.0)
    q.set_carrier(True)
    assert not q.give_up_waiting(F({1}), 60.0, limit=1.0)  # back: the count starts now
    assert not q.give_up_waiting(F({1}), 60.5, limit=1.0)
    assert q.give_up_waiting(F({1}), 61.0, limit=1.0)


@pytest.mark.parametrize("since", [0.1, 0.3, 1 / 3, 0.6106177507340905, 1e6 + 0.7])
def test_deadlines_are_met_exactly_when_reached(since: float) -> None:
    """A timer set to `since + limit` must find the limit reached when it fires, whatever the
    float rounding of `now - since`."""
    q = Quorum(1, settle=0.25, base=F({1, 2, 3}))
    q.give_up_waiting(F({1}), since, limit=1.0)
    assert q.give_up_waiting(F({1}), since + 1.0, limit=1.0)
    r = Quorum(1, settle=0.25, base=F({1, 2, 3}))
    r.judge(F({1, 2}), since)
    deadline = r.deadline()
    assert deadline is not None
    r.judge(F({1, 2}), deadline)
    assert r.base == {1, 2}


def test_must_wait_while_losing_the_suspects_would_cost_quorum() -> None:
    q = Quorum(1, settle=0.25, base=F({1, 2, 3, 4, 5}))
    assert q.must_wait(F({1, 2, 3}), suspects=[2])  # 3 of 5, but 2 may go too: 2 of 5
    assert not q.must_wait(F({1, 2, 3, 4}), suspects=[2])  # 3 of 5 even without it
    assert not q.must_wait(F({1, 2, 3}), suspects=[])


def test_force_takes_what_is_reachable_as_the_base() -> None:
    q = Quorum(1, settle=0.25, base=F({1, 2, 3}))
    q.set_carrier(False)
    q.set_carrier(True)
    q.force(F({1}))
    assert q.base == {1} and not q.was_cut and q.judge(F({1}), 0.0)
