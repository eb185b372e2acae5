"""Release before acquire, claims-based: a pending bucket is taken once no verified peer we hear
claims it (per the member list its heartbeat announces); a held bucket claimed by a verified
peer that does not hear us is given up, and taken back once that peer lets go."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterip.core.defaults import KEPT_TTL
from clusterip.core.holdings import NOBODY, Holdings, PeerStatus, claims, owner_of

B = 64
H = 0.2  # handoff time
V1 = {1: 1, 2: 1}
V2 = {1: 1, 2: 1, 3: 1}
ALL = frozenset(range(1, B + 1))


def moved_to_3() -> frozenset[int]:
    return claims(V2, B, 3)


def was(node: int) -> frozenset[int]:
    """Of the buckets that move to node 3, those `node` had in V1."""
    return moved_to_3() & claims(V1, B, node)


def peer(inc: int, view: dict[int, int] | None, node: int, *, hears_us: bool = True) -> PeerStatus:
    """A verified peer whose heartbeat announces `view` (None: it claims nothing)."""
    owns = claims(view, B, node) if view else frozenset()
    return PeerStatus(inc, owns, hears_us, True)


def joined_3(now: float = 0.1) -> Holdings:
    h = Holdings(3, B, handoff_time=H)
    h.reassign(V1, {}, 0.0)  # we were not a member yet
    h.reassign(V2, {1: 10, 2: 20}, now)
    return h


def test_claims_are_one_based_and_partition_the_buckets() -> None:
    views = [{1: 1}, V1, V2, {1: 3, 5: 1, 9: 2}]
    for view in views:
        parts = [claims(view, B, n) for n in view]
        assert frozenset().union(*parts) == ALL
        assert sum(len(p) for p in parts) == B
        for n in view:
            assert all(owner_of(view, B, b) == n for b in claims(view, B, n))
    assert claims(V1, B, 7) == frozenset()  # not a member: nothing
    assert owner_of({}, B, 1) == NOBODY


def test_first_assignment_takes_everything_as_orphaned() -> None:
    h = Holdings(1, B, handoff_time=H)
    h.reassign({1: 1}, {}, 0.0)
    change = h.settle(0.0, {}, {}).change
    assert change is not None
    assert change.owned == ALL == change.orphaned == h.held
    assert set(change.gained.values()) == {None} and not change.lost


def test_bucket_from_a_live_owner_waits_until_its_owner_no_longer_claims_it() -> None:
    h = joined_3()
    alive = {1: 10, 2: 20}
    old = {1: peer(10, V1, 1), 2: peer(20, V1, 2)}
    assert h.settle(0.1, old, alive).change is None and h.pending == moved_to_3()
    # Node 1 announces the new view: the buckets it had are free, node 2's are not yet.
    mixed = {**old, 1: peer(10, V2, 1)}
    change = h.settle(0.15, mixed, alive).change
    assert change is not None and not change.orphaned  # node 1 is alive: it keeps its flows
    assert set(change.gained) == was(1) and set(change.gained.values()) == {1}
    new = {1: peer(10, V2, 1), 2: peer(20, V2, 2)}
    change = h.settle(0.16, new, alive).change
    assert change is not None and set(change.gained.values()) == {2}
    assert h.held == moved_to_3() and not h.pending


def test_a_claim_blocks_past_the_handoff_time_and_is_reported_overdue() -> None:
    """Changed: a verified peer that still claims a bucket is never overridden (the old rule
    took it after the handoff timeout, and both answered); it is reported as overdue."""
    h = joined_3(now=1.0)
    stuck = {1: peer(10, V1, 1), 2: peer(20, V2, 2)}
    settled = h.settle(1.0 + H - 0.01, stuck, {1: 10, 2: 20})
    assert settled.change is not None and set(settled.change.gained) == was(2)
    assert not settled.overdue
    settled = h.settle(1.0 + 10 * H, stuck, {1: 10, 2: 20})
    assert settled.change is None and h.pending == was(1)
    assert settled.overdue == {1: len(was(1))}
    assert min(h.deadlines()) == pytest.approx(1.0 + H)


def test_an_unverified_claim_does_not_block() -> None:
    """A peer that never acked our incarnation may be a recording: what it claims is not
    evidence that anybody holds the bucket now."""
    h = joined_3()
    recording = {1: PeerStatus(10, claims(V1, B, 1), False, False)}
    change = h.settle(0.1, recording, {1: 10, 2: 20}).change
    assert change is not None and set(change.gained) >= was(1)


def test_inactive_peers_claim_nothing_and_dead_owners_orphan() -> None:
    h = joined_3()
    peers = {1: PeerStatus(10, frozenset(), True, True)}  # 1 not active; 2 dead (absent)
    change = h.settle(0.1, peers, {1: 10}).change
    assert change is not None and h.held == moved_to_3()
    assert change.orphaned == was(2)  # 2 is gone: its flows are orphaned; 1's are not


def test_restarted_owner_counts_as_gone() -> None:
    h = joined_3()
    peers = {n: PeerStatus(99, frozenset(), False, False) for n in (1, 2)}  # new, starting
    change = h.settle(0.1, peers, {1: 99, 2: 99}).change
    assert change is not None and change.orphaned == moved_to_3()


def test_a_live_owner_we_cannot_hear_gets_the_handoff_time_to_let_go() -> None:
    """Node 2 is alive (relayed by node 1) but we do not hear it: we cannot see its claims, so
    its buckets wait `handoff_time`; then they are taken as from a live node."""
    h = joined_3(now=1.0)
    heard = {1: peer(10, V2, 1)}
    alive = {1: 10, 2: 20}
    change = h.settle(1.0, heard, alive).change
    assert change is not None and set(change.gained) == was(1)
    assert h.settle(1.0 + H - 0.01, heard, alive).change is None
    change = h.settle(1.0 + H, heard, alive).change
    assert change is not None and set(change.gained) == was(2) and not change.orphaned


def test_a_draining_peer_whose_kept_flows_are_unknown_makes_every_take_wait() -> None:
    """Changed: not only the buckets its previous owner had in our view wait. A draining peer
    may keep flows of any bucket it had (before the owner we know of, or while we were cut
    off): until its announcement is whole, nothing pending is taken (at most H + KEPT_TTL)."""
    h = joined_3(now=1.0)
    peers = {1: peer(10, V2, 1), 2: peer(20, V2, 2)}
    alive = {1: 10, 2: 20}
    assert h.settle(1.0, peers, alive, unsure=frozenset({2})).change is None
    assert h.settle(1.0 + H + KEPT_TTL - 0.01, peers, alive, frozenset({2})).change is None
    assert 1.0 + H + KEPT_TTL in h.deadlines()
    change = h.settle(1.0 + H + KEPT_TTL, peers, alive, frozenset({2})).change
    assert change is not None and set(change.gained) == moved_to_3()


def test_the_wait_for_a_draining_peer_ends_when_its_announcement_is_whole() -> None:
    h = joined_3(now=1.0)
    peers = {1: peer(10, V2, 1), 2: peer(20, V2, 2)}
    alive = {1: 10, 2: 20}
    assert h.settle(1.0, peers, alive, unsure=frozenset({1})).change is None
    change = h.settle(1.001, peers, alive).change
    assert change is not None and set(change.gained) == moved_to_3()


def test_the_peer_that_claims_a_bucket_is_the_owner_it_is_taken_from() -> None:
    """Back from isolation, our previous view gave a bucket to nobody (or to another node);
    the live peer seen claiming it is where its flows are: it is taken from that peer (not
    orphaned), and only once that peer's announcement of what it keeps is whole."""
    h = Holdings(3, B, handoff_time=H)
    h.reassign({}, {}, 0.0)  # cut off: nothing assigned, to anybody
    h.reassign(V2, {}, 1.0)
    alive = {1: 10, 2: 20}
    old = {1: peer(10, V1, 1), 2: peer(20, V1, 2)}
    assert h.settle(1.0, old, alive).change is None  # both still claim their V1 shares
    new = {1: peer(10, V2, 1), 2: peer(20, V2, 2)}
    assert h.settle(1.01, new, alive, unsure=frozenset({1})).change is None  # 1 drains
    change = h.settle(1.02, new, alive).change
    assert change is not None and h.held == moved_to_3()
    assert not change.orphaned
    assert {b: o for b, o in change.gained.items() if b in was(1)} == dict.fromkeys(was(1), 1)


def test_losing_is_immediate() -> None:
    h = Holdings(1, B, handoff_time=H)
    h.reassign({1: 1}, {}, 0.0)
    h.settle(0.0, {}, {})
    h.reassign(V1, {1: 5}, 1.0)
    change = h.settle(1.0, {2: peer(7, {2: 1}, 2)}, {2: 7}).change
    assert change is not None and not change.gained
    assert set(change.lost.values()) == {2}
    assert h.held == claims(V1, B, 1)
    h.reassign({}, {}, 2.0)  # leaving: everything goes, to nobody
    change = h.settle(2.0, {}, {}).change
    assert change is not None and set(change.lost.values()) == {None} and not h.held


def test_yield_to_a_peer_that_does_not_hear_us_and_take_back_later() -> None:
    """One-way loss: node 2 does not hear us, so its view is {2} and it claims everything. We
    give up what it claims (it cannot know about us), and take our share back once it hears us
    and announces a view that includes us."""
    h = Holdings(1, B, handoff_time=H)
    h.reassign({1: 1}, {}, 0.0)
    h.settle(0.0, {}, {})
    h.reassign(V1, {}, 1.0)  # we hear 2: our view is {1, 2}
    deaf = {2: peer(7, {2: 1}, 2, hears_us=False)}
    change = h.settle(1.0, deaf, {2: 7}).change
    assert change is not None and not h.held and not change.gained
    # Lost to nobody: node 2 takes them as from a dead node and cannot hear what we would
    # announce as kept, so keeping our flows (draining) would answer them twice.
    assert set(change.lost.values()) == {None} and len(change.lost) == B
    assert h.pending == claims(V1, B, 1)  # our share waits for 2 to let go
    assert h.settle(1.5, deaf, {2: 7}).change is None  # whatever the time
    hears = {2: peer(7, V1, 2)}
    change = h.settle(2.0, hears, {2: 7}).change
    assert change is not None and h.held == claims(V1, B, 1)
    assert set(change.gained.values()) == {2} and not change.orphaned  # 2 is alive


def test_a_peer_that_hears_us_and_claims_our_bucket_is_not_obeyed() -> None:
    """Only a peer that cannot hear us makes us step back: one that hears us has our claims in
    front of it and releases first (two views in flux, not a conflict to yield to)."""
    h = Holdings(1, B, handoff_time=H)
    h.reassign({1: 1}, {}, 0.0)
    h.settle(0.0, {}, {})
    assert h.settle(0.1, {2: peer(7, {2: 1}, 2)}, {2: 7}).change is None
    assert h.held == ALL


def test_reassign_forgets_pending_buckets_no_longer_ours() -> None:
    h = joined_3()
    assert h.pending == moved_to_3()
    h.reassign(V1, {1: 10, 2: 20}, 0.2)  # node 3 out of the view again
    assert not h.pending and not h.waiting


def test_adopt_and_continue_a_planned_restart() -> None:
    """A successor holds what its predecessor held; a bucket pending from a peer that restarted
    with a successor is no orphan once the successor's incarnation is the live one."""
    h = Holdings(1, B, handoff_time=H)
    h.adopt(claims(V1, B, 1))
    assert h.held == claims(V1, B, 1)
    assert h.settle(0.0, {}, {2: 20}).change is None  # adopted as it was: nothing moves
    j = joined_3()
    j.continued(2, 20, 21)
    peers = {1: peer(10, V2, 1), 2: peer(21, V2, 2)}
    change = j.settle(0.2, peers, {1: 10, 2: 21}).change
    assert change is not None and not change.orphaned and h.held


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.integers(1, 8), st.integers(1, 3), min_size=1, max_size=6),
    st.dictionaries(st.integers(1, 8), st.integers(1, 3), min_size=1, max_size=6),
    st.integers(0, 2**32),
)
def test_a_view_change_never_has_two_holders(
    before: dict[int, int], after: dict[int, int], seed: int
) -> None:
    """Nodes of two views, each announcing its view only when it sends (so what the others know
    of it may be stale), acting in any order: no bucket is ever held by two nodes, and once
    everybody announced the new view, each holds exactly its share of it."""
    rng = random.Random(seed)
    nodes = sorted(set(before) | set(after))
    hold = {n: Holdings(n, B, handoff_time=H) for n in nodes}
    view: dict[int, dict[int, int]] = {}
    announced: dict[int, dict[int, int]] = {}
    for n in nodes:
        view[n] = before if n in before else {}
        hold[n].reassign(view[n], {}, 0.0)
    incs = dict.fromkeys(nodes, 1)

    def act(n: int, t: float) -> None:
        peers = {m: peer(1, announced.get(m), m) for m in nodes if m != n}
        hold[n].settle(t, peers, {m: 1 for m in nodes if m != n})
        held = [b for m in nodes for b in hold[m].held]
        assert len(held) == len(set(held)), f"after node {n} at {t}"

    for n in nodes:  # a settled start in the old view
        act(n, 0.0)
        announced[n] = view[n]
    for n in nodes:
        act(n, 0.0)
    t = 0.0
    switched: set[int] = set()
    while len(switched) < len(nodes) or any(announced[n] != after for n in nodes):
        t += 0.01
        n = rng.choice(nodes)
        if n not in switched and rng.random() < 0.5:
            switched.add(n)
            view[n] = after
            hold[n].reassign(after, incs, t)
        act(n, t)
        if rng.random() < 0.5:
            announced[n] = view[n]  # its heartbeat goes out, after its releases
    for _ in range(2):
        for n in nodes:
            act(n, t)
    for n in nodes:
        assert hold[n].held == claims(after, B, n), n


def test_a_bucket_waits_while_a_peer_view_gives_it_to_another_live_node() -> None:
    """Two nodes that each see the old owner let go may both take a bucket, each under its own
    view, before either has announced it. So a bucket also waits (at most `handoff_time`) while
    a verified peer announces a view that gives it to another live node."""
    h = joined_3(now=1.0)
    b = min(was(1))
    alive = {1: 10, 2: 20, 4: 40}
    elsewhere = {1: 1, 2: 1, 3: 1, 4: 1}  # node 2 counts a node 4 we do not count yet
    gives_4 = claims(elsewhere, B, 4) & moved_to_3()
    assert gives_4, "the example needs a bucket node 4 would get"
    peers = {
        1: peer(10, V2, 1),
        2: PeerStatus(20, claims(elsewhere, B, 2), True, True, tuple(sorted(elsewhere.items()))),
    }
    change = h.settle(1.0, peers, alive).change
    assert change is not None and not set(change.gained) & gives_4
    assert gives_4 <= h.pending
    assert h.settle(1.0, peers, {1: 10, 2: 20}).change is not None  # node 4 dead: no wait
    h = joined_3(now=1.0)
    h.settle(1.0, peers, alive)
    change = h.settle(1.0 + H, peers, alive).change  # views still differ: take it after all
    assert change is not None and gives_4 <= set(change.gained)
    assert b in h.held


def test_a_peer_with_our_view_never_holds_a_bucket_back() -> None:
    h = joined_3()
    same = tuple(sorted(V2.items()))
    peers = {n: PeerStatus(i, claims(V2, B, n), True, True, same) for n, i in ((1, 10), (2, 20))}
    change = h.settle(0.1, peers, {1: 10, 2: 20}).change
    assert change is not None and h.held == moved_to_3()


def test_a_peer_that_turned_active_without_a_view_yet_makes_takes_wait() -> None:
    """A peer that just turned active announces its view only after gathering (hold time):
    meanwhile it may be about to take any bucket, so ours wait (at most `handoff_time`)
    rather than race it."""
    h = joined_3(now=1.0)
    peers = {1: peer(10, V2, 1), 2: peer(20, V2, 2)}
    forming = {**peers, 4: PeerStatus(40, frozenset(), True, True, forming=True)}
    alive = {1: 10, 2: 20, 4: 40}
    assert h.settle(1.0, forming, alive).change is None
    assert 1.0 + H in h.deadlines()
    change = h.settle(1.0 + H, forming, alive).change  # not forever
    assert change is not None and h.held == moved_to_3()
    h = joined_3(now=1.0)
    change = h.settle(1.0, {**forming, 4: PeerStatus(40, frozenset(), True, True)}, alive).change
    assert change is not None and h.held == moved_to_3()  # once it has a view: at once


def test_a_node_frozen_in_its_restart_that_we_only_know_of_blocks_what_nobody_had() -> None:
    """We start (nobody had anything in our view) while a node we only know through others
    is in its planned restart: its datapath serves on what it held, which we cannot know.
    What nobody had in our view waits (until it is heard, or gone); what a node we hear had
    follows that node's claims as usual."""
    h = Holdings(3, B, handoff_time=H)
    h.reassign(V2, {}, 0.0)
    peers = {1: peer(10, V2, 1), 2: peer(20, V2, 2)}
    alive = {1: 10, 2: 20, 4: 40}
    assert h.settle(10.0, peers, alive, frozen=True).change is None
    change = h.settle(10.0, peers, alive).change
    assert change is not None and h.held == moved_to_3()
