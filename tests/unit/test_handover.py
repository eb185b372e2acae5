"""Who may hold established flows: the pure bookkeeping behind drain and orphan RST."""

from __future__ import annotations

from clusterip.agent.events import OwnershipChanged
from clusterip.reactor.handover import ORPHAN_RESET_DELAY, Handover

B = 64


def handover(node: int = 1) -> Handover:
    h = Handover(node, B, drain_window=300.0)
    return h


def test_lost_to_a_live_node_drains_until_flows_are_gone() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({0}), lost={5: 2}), {1: 1, 2: 1}, {1, 2}, now=10.0)
    own = h.ownership(frozenset({0}), 10.0, None, timeout=300)
    assert own.draining == {6} and own.owned == {1}
    # A measurement from before the drain began proves nothing.
    assert h.ownership(frozenset({0}), 11.0, (9.0, {}), 300).draining == {6}
    assert h.ownership(frozenset({0}), 12.0, (11.5, {6: 3}), 300).draining == {6}
    assert h.ownership(frozenset({0}), 13.0, (12.5, {}), 300).draining == frozenset()


def test_drain_timeout_and_naive_mode() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset(), lost={5: 2}), {2: 1}, {1, 2}, now=10.0)
    assert h.ownership(frozenset(), 15.0, (14.0, {6: 1}), timeout=5).draining == frozenset()
    naive = Handover(1, B, 300.0, drain=False)
    naive.changed(OwnershipChanged(frozenset(), lost={5: 2}), {2: 1}, {1, 2}, now=10.0)
    assert naive.ownership(frozenset(), 10.0, None, 300).draining == frozenset()


def test_taken_from_a_dead_node_resets_only_after_the_delay() -> None:
    h = handover()
    ev = OwnershipChanged(frozenset({3}), gained={3: 2}, orphaned=frozenset({3}))
    assert h.changed(ev, {1: 1}, {1}, now=10.0) == {3}
    assert h.ownership(frozenset({3}), 10.1, None, 300).orphaned == frozenset()
    assert h.ownership(frozenset({3}), 10.0 + ORPHAN_RESET_DELAY, None, 300).orphaned == {4}


def test_cold_start_and_join_are_not_orphans() -> None:
    h = handover(4)
    # Joining: "nobody" owned it in our fresh view, but node 2 does in the cluster's.
    ev = OwnershipChanged(frozenset({7}), gained={7: None}, orphaned=frozenset({7}))
    assert h.changed(ev, {1: 1, 2: 1, 3: 1, 4: 1}, {1, 2, 3, 4}, now=1.0) == set()
    assert h.gained_from[8][0] in (1, 2, 3)


def test_a_live_node_that_handed_a_bucket_over_is_never_reset() -> None:
    h = handover(1)
    for n in (2, 3):
        h.peer_up(n, incarnation=n, now=0.0)
    h.track({1: 1, 2: 1, 3: 1}, {1, 2, 3}, now=5.0)
    before = h.owners
    h.track({1: 1, 3: 1}, {1, 2, 3}, now=10.0)  # node 2 drains: alive, assigned nothing
    moved = [b for b in range(B) if before[b] == 2]
    assert moved and all(2 in h.moved_from[b] for b in moved)
    b = next(b for b in moved if h.owners[b] == 3)
    # Node 3 dies: its bucket `b` (from node 2, which still drains it) gets no RST here.
    ev = OwnershipChanged(frozenset({b}), gained={b: 3}, orphaned=frozenset({b}))
    assert h.changed(ev, {1: 1}, {1, 2}, now=20.0) == set()


def test_false_alarm_of_a_handing_node_is_undone() -> None:
    h = handover(1)
    h.peer_up(2, 22, 0.0)
    h.changed(OwnershipChanged(frozenset({9}), gained={9: 2}), {1: 1, 2: 1}, {1, 2}, now=5.0)
    h.peer_down(2, 22, now=6.0, alive={1})
    assert 10 in h.orphaned
    h.peer_up(2, 22, now=6.1)  # same incarnation: it was only silent
    assert 10 not in h.orphaned
    assert h.ownership(frozenset({9}), 7.0, None, 300).orphaned == frozenset()
