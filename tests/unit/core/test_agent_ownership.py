"""Release before acquire: the pending-bucket rule, on its own."""

from __future__ import annotations

from clusterip.core.assign import assign
from clusterip.core.fingerprint import view_digest
from clusterip.core.holdings import Holdings, PeerStatus

B = 64
V1 = {1: 1, 2: 1}
V2 = {1: 1, 2: 1, 3: 1}


def moved_to_3() -> set[int]:
    before, after = assign(V1, B), assign(V2, B)
    return {b for b in range(B) if after[b] == 3 and before[b] != 3}


def test_first_assignment_takes_everything_as_orphaned() -> None:
    o = Holdings(1, B, handoff_time=0.2)
    o.reassign({1: 1}, view_digest({1: 1}), {}, 0.0)
    change = o.settle(0.0, {}).change
    assert change is not None
    assert change.owned == frozenset(range(B)) == change.orphaned
    assert set(change.gained.values()) == {None}


def test_bucket_from_a_live_owner_waits_until_it_shows_our_view() -> None:
    o = Holdings(3, B, handoff_time=0.2)
    o.reassign(V1, view_digest(V1), {}, 0.0)  # we were not a member yet
    o.reassign(V2, view_digest(V2), {1: 10, 2: 20}, 0.1)
    old = {1: PeerStatus(10, True, view_digest(V1)), 2: PeerStatus(20, True, view_digest(V1))}
    assert o.settle(0.1, old).change is None and o.pending == frozenset(moved_to_3())
    # Node 1 moved to our view: the buckets it had are free, node 2's are not yet.
    mixed = {**old, 1: PeerStatus(10, True, view_digest(V2))}
    change = o.settle(0.15, mixed).change
    assert change is not None and not change.orphaned
    assert set(change.gained.values()) == {1}
    assert {b for b in moved_to_3() if assign(V1, B)[b] == 1} == set(change.gained)
    new = {n: PeerStatus(i, True, view_digest(V2)) for n, i in ((1, 10), (2, 20))}
    change = o.settle(0.16, new).change
    assert change is not None and set(change.gained.values()) == {2}
    assert o.held == frozenset(moved_to_3()) and not o.pending


def test_inactive_peers_hold_nothing_and_dead_owners_orphan() -> None:
    o = Holdings(3, B, handoff_time=0.2)
    o.reassign(V1, view_digest(V1), {}, 0.0)
    o.reassign(V2, view_digest(V2), {1: 10, 2: 20}, 0.1)
    peers = {1: PeerStatus(10, False, view_digest(V1))}  # 1 not active, 2 dead (absent)
    change = o.settle(0.1, peers).change
    assert change is not None and o.held == frozenset(moved_to_3())
    from_2 = {b for b, prev in change.gained.items() if prev == 2}
    assert change.orphaned == from_2  # 2 is gone: its flows are orphaned; 1's are not


def test_restarted_owner_counts_as_gone() -> None:
    o = Holdings(3, B, handoff_time=0.2)
    o.reassign(V1, view_digest(V1), {}, 0.0)
    o.reassign(V2, view_digest(V2), {1: 10, 2: 20}, 0.1)
    peers = {n: PeerStatus(99, False, b"") for n in (1, 2)}  # new incarnations, starting
    change = o.settle(0.1, peers).change
    assert change is not None and change.orphaned == frozenset(moved_to_3())


def test_unknown_view_blocks_until_the_handoff_timeout() -> None:
    o = Holdings(3, B, handoff_time=0.2)
    o.reassign(V1, view_digest(V1), {}, 0.0)
    o.reassign(V2, view_digest(V2), {1: 10, 2: 20}, 1.0)
    strange = {1: PeerStatus(10, True, b"elsewhere"), 2: PeerStatus(20, True, view_digest(V2))}
    assert o.settle(1.19, strange).change is None
    settled = o.settle(1.2, strange)
    assert settled.change is not None and o.held == frozenset(moved_to_3())
    assert settled.timed_out == {1: len(moved_to_3())}


def test_losing_is_immediate() -> None:
    o = Holdings(1, B, handoff_time=0.2)
    o.reassign({1: 1}, view_digest({1: 1}), {}, 0.0)
    o.settle(0.0, {})
    o.reassign(V1, view_digest(V1), {1: 5}, 1.0)
    change = o.settle(1.0, {2: PeerStatus(7, True, view_digest({2: 1}))}).change
    assert change is not None and not change.gained
    assert set(change.lost.values()) == {2}
    assert o.held == frozenset(b for b in range(B) if assign(V1, B)[b] == 1)
