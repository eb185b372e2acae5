"""Membership state machine: startup, detection, no false alarms, LEAVE, restarts (crash and
planned), relays over one-way loss, quorum and isolation (carrier, two-node rule, ties, the
isolation limit), the refusal policy (a serving node is never silenced; a newcomer waits a
bounded time unless it is the odd one), replays, duplicate ids, reports."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterable

import pytest

from clusterip.core import defaults
from clusterip.core.events import (
    Notice,
    OwnershipChanged,
    PeerContinued,
    PeerDown,
    PeerUp,
    StateChanged,
)
from clusterip.core.fingerprint import key_id
from clusterip.core.holdings import claims
from clusterip.core.membership import Membership
from clusterip.core.params import Params
from clusterip.core.sim import Simulation
from clusterip.core.wire import Heartbeat, Hello, NodeState, unpack
from tests.unit.core.agent_helpers import (
    KEY,
    OTHER_KEY,
    cluster,
    downs,
    events_of,
    membership_of,
    owned,
    simulation,
    vip_config,
)

P = Params()
ALL = frozenset(range(1, P.buckets + 1))
# a cold start has settled (the membership unchanged for a detection time)
READY = P.listen_time + P.dead_after + 4 * P.interval
# detection, gathering, a handoff and a few heartbeat rounds
SETTLE = P.dead_after + P.listen_time + P.hold_time + P.handoff_time + 6 * P.interval
TAKEOVER = P.dead_after + P.hold_time + 2 * P.interval  # a dead node's share is taken by then
DELAY = 0.001  # the simulation's largest one-way delay (a heartbeat in flight at a crash)


def alone(node_id: int = 1, now: float = 0.0, incarnation: int = 100) -> Membership:
    return Membership(
        node_id=node_id, weight=1, incarnation=incarnation, cluster=cluster(), now=now
    )


def run_alone(m: Membership, start: float, until: float) -> None:
    """Drive one membership as the I/O loop does: tick and send at each deadline."""
    t = start
    while t <= until:
        m.tick(t)
        if m.due(t):
            m.heartbeat(t)
        t = m.next_deadline(t)


def watch(sim: Simulation, until: float, check: Callable[[float], None], step: float = 0.002):
    """Run the simulation to `until` in small steps, calling `check(now)` after each."""
    while sim.clock.now() < until - 1e-12:
        sim.run_until(min(until, sim.clock.now() + step))
        check(sim.clock.now())


def state(sim: Simulation, node: int) -> NodeState:
    return membership_of(sim, node).state


def union(sim: Simulation, nodes: Iterable[int]) -> frozenset[int]:
    return frozenset().union(*(owned(sim, n) for n in nodes))


def partition(sim: Simulation, *groups: Iterable[int]) -> None:
    sim.network.partition([[sim.nodes[n].address for n in g] for g in groups])


def assigned(sim: Simulation, node: int) -> dict[int, int]:
    return dict(membership_of(sim, node).view(sim.clock.now()).assigned_to)


# ----- start, heartbeats, detection ------------------------------------------------------


def test_alone_listens_then_takes_every_bucket_as_orphaned() -> None:
    m = alone()
    events = m.tick(0.0)
    assert m.state == NodeState.STARTING and not m.owned_buckets()
    assert not [e for e in events if isinstance(e, OwnershipChanged)]
    assert m.due(0.0)
    hello = m.heartbeat(0.0)
    assert isinstance(hello, Hello) and hello.state == NodeState.STARTING
    assert hello.members == ()  # nothing assigned yet: it claims no bucket
    assert m.next_deadline(0.0) == pytest.approx(P.interval)  # next heartbeat first
    m.tick(P.listen_time - 1e-9)
    states = [m.state]
    m.tick(P.listen_time)
    states.append(m.state)
    assert states == [NodeState.STARTING, NodeState.ACTIVE]
    assert not m.owned_buckets()  # gathering changes for hold_time first
    events = m.tick(P.listen_time + P.hold_time)
    (change,) = [e for e in events if isinstance(e, OwnershipChanged)]
    assert m.owned_buckets() == ALL == change.owned  # 1-based, as the datapath numbers them
    assert change.orphaned == change.owned and set(change.gained.values()) == {None}
    assert not change.lost
    assert m.heartbeat(P.listen_time + P.hold_time).members == ((1, 1),)


def test_params_defaults_and_validation() -> None:
    assert P.interval_ms == defaults.INTERVAL_MS and P.tolerance == defaults.TOLERANCE
    assert P.dead_after == pytest.approx(P.interval * P.tolerance)
    assert P.dead_after <= 0.3  # detection within the 300 ms budget
    assert P.listen_time == P.dead_after == P.handoff_time
    assert P.hold_time < P.interval
    for bad in ({"tolerance": 1}, {"interval": 0}, {"buckets": 0}, {"listen": -1.0}):
        with pytest.raises(ValueError):
            Params(**bad)  # type: ignore[arg-type]


def test_heartbeats_every_interval_and_sequence_grows() -> None:
    m = alone()
    seqs = []
    t = 0.0
    while t < 1.0:
        m.tick(t)
        if m.due(t):
            seqs.append((t, m.heartbeat(t).seq))
        t = m.next_deadline(t)
    times = [s[0] for s in seqs]
    assert [s[1] for s in seqs] == list(range(1, len(seqs) + 1))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= P.interval + 1e-9
    assert len(seqs) >= 1.0 / P.interval  # plus early ones on state changes


def test_dead_node_detected_within_interval_times_tolerance() -> None:
    sim = simulation(3)
    sim.run_until(READY)
    assert not sim.problems()
    share = owned(sim, 2)
    crash_at = sim.clock.now()
    sim.crash(2)
    sim.run_until(crash_at + TAKEOVER)
    for n in (1, 3):
        ((when, down),) = downs(sim.nodes[n], 2)
        assert down.reason == "timeout"
        assert crash_at < when <= crash_at + DELAY + P.dead_after
    taken = [
        (t, b)
        for n in (1, 3)
        for t, e in events_of(sim.nodes[n], OwnershipChanged)
        for b in e.orphaned
        if t > crash_at and e.gained.get(b) == 2
    ]
    assert {b for _t, b in taken} == share  # every bucket of the dead node, as orphans
    assert max(t for t, _b in taken) <= crash_at + DELAY + P.dead_after + P.hold_time
    assert not sim.problems() and not sim.violations


def test_no_false_alarm_with_jitter_below_the_tolerance() -> None:
    # Delays anywhere in 0..100 ms (so heartbeats get reordered): two arrivals are at most
    # interval + 100 ms apart, under the detection time whatever the seed.
    assert P.interval + 0.1 < P.dead_after
    sim = simulation(3, delay=(0.0, 0.1))
    sim.run_until(10.0)
    for n in sim.nodes.values():
        assert not [e for _, e in n.events if isinstance(e, PeerDown)]
    assert not sim.problems()


def test_missed_heartbeats_below_the_tolerance_are_tolerated_more_are_not() -> None:
    sim = simulation(2)
    sim.run_until(1.0)
    a, b = sim.nodes[1], sim.nodes[2]
    # Cut so that the gap between two heartbeats heard (up to an interval before the cut, up
    # to an interval after it) stays under the detection time.
    short = P.dead_after - 2 * P.interval - 0.01
    partition(sim, [1], [2])
    sim.run_until(1.0 + short)
    sim.network.heal()
    sim.run_until(2.0)
    assert not downs(a, 2) and not downs(b, 1)
    # Cut longer: dead one detection time after the last heartbeat heard.
    partition(sim, [1], [2])
    sim.run_until(2.0 + P.dead_after + 0.1)
    sim.network.heal()
    ((when, _),) = downs(a, 2)
    assert 2.0 + P.dead_after - P.interval <= when <= 2.0 + P.dead_after + 1e-9
    sim.run_until(2.0 + P.dead_after + 0.1 + SETTLE)
    assert not sim.problems()  # back together after healing


# ----- leave, join, drain, weight ----------------------------------------------------------


def test_leave_releases_everything_before_the_leave_message() -> None:
    m = alone()
    run_alone(m, 0.0, 1.0)
    assert m.owned_buckets() == ALL
    events, msg = m.leave(1.0)
    (change,) = [e for e in events if isinstance(e, OwnershipChanged)]
    assert not change.owned and set(change.lost) == ALL
    assert set(change.lost.values()) == {None}  # nobody left to take them
    assert not change.drain  # it stops serving: no flow stays here
    assert m.state == NodeState.LEAVING and not m.owned_buckets()
    assert msg.state == NodeState.LEAVING
    _, again = m.leave(1.0)
    assert again.seq == msg.seq + 1  # a resend is not a replay


def test_leave_removes_at_once_orphans_its_buckets_and_shrinks_the_base() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    had = owned(sim, 3)
    sim.leave(3)
    sim.run_until(1.0 + 0.01 + P.hold_time)  # one network delay + hold-down, no timeout
    for n in (1, 2):
        ((_, down),) = downs(sim.nodes[n], 3)
        assert down.reason == "leave"
        assert membership_of(sim, n).view(sim.clock.now()).base == {1, 2}
    assert had <= union(sim, (1, 2))
    orphaned = set().union(*(e.orphaned for _, e in events_of(sim.nodes[1], OwnershipChanged)))
    assert had & owned(sim, 1) <= orphaned
    sim.run_until(1.0 + SETTLE)
    assert not sim.problems() and not sim.violations
    # The base follows the leave: two of two remain, so losing one more keeps quorum.
    sim.crash(2)
    sim.run_until(sim.clock.now() + TAKEOVER)
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL


def test_crash_and_restart_rejoins_and_buckets_come_back_from_live_nodes() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    before = owned(sim, 2)
    sim.restart(2)
    t0 = sim.clock.now()
    sim.run_until(t0 + 0.1)
    for n in (1, 3):
        ((_, down),) = downs(sim.nodes[n], 2)
        assert down.reason == "restarted"  # the new incarnation replaced the old at once
    sim.run_until(t0 + SETTLE)
    assert not sim.problems() and not sim.violations
    assert owned(sim, 2) == before  # same member set, same buckets
    back = [e for t, e in events_of(sim.nodes[2], OwnershipChanged) if t >= t0]
    assert back and not any(e.orphaned for e in back)  # came from live nodes
    assert set().union(*(set(e.gained.values()) for e in back)) <= {1, 3}


def test_join_takes_only_released_buckets() -> None:
    sim = simulation({1: 1, 2: 1, 3: 1}, start=False)
    sim.start(1)
    sim.start(2)
    sim.run_until(1.0)
    sim.start(3)
    sim.run_until(1.0 + SETTLE)
    assert not sim.problems() and not sim.violations
    gained = [e for _, e in events_of(sim.nodes[3], OwnershipChanged)]
    assert sum(len(e.gained) for e in gained) == len(owned(sim, 3))
    assert not any(e.orphaned for e in gained)


def test_drain_gives_buckets_away_and_keeps_membership() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    vip2 = sim.nodes[2].vip
    assert vip2 is not None
    vip2.drain(True)
    sim.run_until(1.5)
    assert state(sim, 2) == NodeState.DRAINING and not owned(sim, 2)
    assert not downs(sim.nodes[1], 2)
    assert union(sim, (1, 3)) == ALL
    assert assigned(sim, 1) == {1: 1, 3: 1}  # a draining node gets no share
    vip2.drain(False)
    sim.run_until(1.5 + SETTLE)
    assert not sim.problems() and not sim.violations


def test_weight_is_used_for_shares_and_can_change_at_runtime() -> None:
    sim = simulation({1: 1, 2: 3})
    sim.run_until(1.0)
    assert not sim.problems()
    assert len(owned(sim, 2)) == pytest.approx(3 * len(owned(sim, 1)), abs=2)
    vip1 = sim.nodes[1].vip
    assert vip1 is not None
    vip1.set_weight(3)
    sim.nodes[1].weight = 3  # what problems() expects
    sim.run_until(1.0 + SETTLE)
    assert not sim.problems() and not sim.violations
    assert abs(len(owned(sim, 1)) - len(owned(sim, 2))) <= 2


# ----- one-way loss: relays ---------------------------------------------------------------


@pytest.mark.parametrize("from_the_start", [False, True])
def test_one_way_loss_with_a_third_node_everybody_counts_everybody(from_the_start: bool) -> None:
    """Node 1 hears node 2, node 2 does not hear node 1; node 3 hears both. Node 2 learns about
    node 1 from node 3's heartbeats: all three assign to all three, and nobody takes the
    buckets of a node that is alive."""
    sim = simulation(3, start=not from_the_start)
    a, b = sim.nodes[1].address, sim.nodes[2].address
    if from_the_start:
        sim.network.cut(a, b)
        for n in (1, 2, 3):
            sim.start(n)
        sim.run_until(READY + P.handoff_time)
    else:
        sim.run_until(READY)
        sim.network.cut(a, b)
        sim.run_until(READY + SETTLE)
    for n in (1, 2, 3):
        assert assigned(sim, n) == {1: 1, 2: 1, 3: 1}, n
        assert state(sim, n) == NodeState.ACTIVE
    view2 = membership_of(sim, 2).view(sim.clock.now())
    (info,) = [m for m in view2.members if m.node_id == 1]
    assert info.via == 3 and info.counted  # heard through node 3
    assert not sim.problems() and not sim.violations


def test_relayed_members_vanish_with_the_relay() -> None:
    """What a relay says of a node expires like a heartbeat: with the relay gone (and the
    one-way loss still there), node 2 takes node 1's share after the detection time."""
    sim = simulation(3)
    sim.run_until(READY)
    sim.network.cut(sim.nodes[1].address, sim.nodes[2].address)
    sim.run_until(READY + SETTLE)
    assert assigned(sim, 2) == {1: 1, 2: 1, 3: 1}
    sim.crash(3)
    sim.run_until(sim.clock.now() + SETTLE + P.dead_after)
    assert 1 not in assigned(sim, 2)


# ----- quorum and isolation ---------------------------------------------------------------


def cut_off_gives_up_first(sim: Simulation, cut: set[int], until: float) -> dict[str, float]:
    """Partition `cut` away from the others and check, every 2 ms, that the cut-off side
    never owns a bucket the other side owns; returns when things happened (relative)."""
    rest = set(sim.nodes) - cut
    share = union(sim, cut)
    t0 = sim.clock.now()
    partition(sim, cut, rest)
    seen: dict[str, float] = {}

    def check(now: float) -> None:
        mine, theirs = union(sim, cut), union(sim, rest)
        assert not mine & theirs, f"both sides own {len(mine & theirs)} buckets at {now}"
        if "isolated" not in seen and all(state(sim, n) == NodeState.ISOLATED for n in cut):
            seen["isolated"] = now - t0
            assert not mine
        if "taken" not in seen and share <= theirs:
            seen["taken"] = now - t0
        assert not any(state(sim, n) == NodeState.ISOLATED for n in rest)

    watch(sim, until, check)
    return seen


@pytest.mark.parametrize(
    ("nodes", "cut"),
    [(3, {3}), (5, {1}), (5, {4, 5}), (4, {2}), (7, {1, 2, 3})],
    ids=["3:1", "5:1", "5:2", "4:1", "7:3"],
)
def test_a_minority_gives_up_first_and_the_majority_takes_over(nodes: int, cut: set[int]) -> None:
    sim = simulation(nodes)
    sim.run_until(READY)
    t0 = sim.clock.now()
    seen = cut_off_gives_up_first(sim, cut, t0 + 1.0)
    assert seen["isolated"] < seen["taken"] <= TAKEOVER
    for n in cut:
        m = membership_of(sim, n)
        assert "cut off from the majority" in m.reason and not owned(sim, n)
    # Heal: the cut-off nodes come back without a bucket owned twice at any instant.
    sim.network.heal()
    watch(sim, sim.clock.now() + SETTLE, lambda now: None)
    assert not sim.problems() and not sim.violations


@pytest.mark.parametrize("halves", [({1, 2}, {3, 4}), ({1, 3}, {2, 4}), ({1, 4}, {2, 3})])
def test_a_two_two_tie_is_won_by_the_half_with_the_lowest_node_id(
    halves: tuple[set[int], set[int]],
) -> None:
    winners, losers = halves
    sim = simulation(4)
    sim.run_until(READY)
    seen = cut_off_gives_up_first(sim, losers, sim.clock.now() + 1.0)
    assert seen["taken"] <= TAKEOVER
    assert union(sim, winners) == ALL
    assert all(state(sim, n) == NodeState.ACTIVE for n in winners)
    sim.network.heal()
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems() and not sim.violations


def test_carrier_loss_isolates_at_once_and_the_others_take_over() -> None:
    sim = simulation(3)
    sim.run_until(READY)
    share = owned(sim, 1)
    t0 = sim.clock.now()
    sim.set_link(1, False)
    assert state(sim, 1) == NodeState.ISOLATED and not owned(sim, 1)  # at that very instant
    assert "no carrier" in membership_of(sim, 1).reason
    assert not membership_of(sim, 1).view(t0).carrier
    sim.run_until(t0 + TAKEOVER)
    assert share <= union(sim, (2, 3))
    sim.run_until(t0 + 3 * P.isolation_limit / 2)
    assert state(sim, 1) == NodeState.ISOLATED  # no carrier: the isolation limit never counts
    sim.set_link(1, True)
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems() and not sim.violations


def test_a_link_flap_right_after_the_start_heals_without_double_ownership() -> None:
    """The base takes the first membership at once: a node that has only just started is not
    a majority of itself when its link comes back."""
    sim = simulation(3)
    sim.run_until(P.listen_time + P.hold_time + 2 * P.interval)
    assert membership_of(sim, 3).view(sim.clock.now()).base == {1, 2, 3}
    sim.set_link(3, False)
    sim.run_until(sim.clock.now() + 1.0)
    sim.set_link(3, True)
    assert state(sim, 3) == NodeState.ISOLATED and not owned(sim, 3)
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems() and not sim.violations


def test_two_nodes_the_one_that_keeps_its_carrier_keeps_quorum() -> None:
    sim = simulation(2)
    sim.run_until(READY)
    sim.set_link(2, False)
    assert state(sim, 2) == NodeState.ISOLATED and not owned(sim, 2)
    sim.run_until(sim.clock.now() + TAKEOVER)
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL
    sim.set_link(2, True)
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems() and not sim.violations


def test_two_nodes_cut_apart_with_carrier_both_serve() -> None:
    """The two-node rule's price: without a third party a dead peer and a cut one look the
    same, so both halves of a cut two-node cluster serve everything (and converge once they
    hear each other again)."""
    sim = simulation(2)
    sim.run_until(READY)
    partition(sim, [1], [2])
    sim.run_until(sim.clock.now() + TAKEOVER)
    assert owned(sim, 1) == owned(sim, 2) == ALL
    sim.network.heal()
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems()


def test_one_by_one_the_last_node_serves_everything() -> None:
    """The base follows a membership that has settled: losing one node at a time never costs
    quorum, down to the last node (two-node rule at the end)."""
    sim = simulation(4)
    sim.run_until(READY)
    for gone in (4, 3, 2):
        sim.crash(gone)
        sim.run_until(sim.clock.now() + TAKEOVER + P.dead_after)
        assert state(sim, 1) == NodeState.ACTIVE, gone
    assert owned(sim, 1) == ALL


def test_back_from_isolation_a_node_listens_before_it_takes_anything() -> None:
    """Four nodes; the half holding the lowest id (1, 2) loses its carrier, so the other half
    serves once its isolation limit passed. When the carriers come back, node 1 hears node 2
    (cut off with it) at once, nodes 3 and 4 only two intervals later: it must not take its
    share of what it hears meanwhile (3 and 4 serve it, and its clients would be answered
    twice), however the two halves' heartbeats interleave."""
    params = Params(isolation_limit=1.0)
    sim = simulation(4, params=params)
    rng = random.Random(4)
    sim.run_until(READY)
    for n in (1, 2):
        sim.set_link(n, False)
    sim.run_until(sim.clock.now() + params.isolation_limit + 2 * params.dead_after)
    assert union(sim, (3, 4)) == ALL
    for n in (3, 4):
        sim.network.cut(sim.nodes[n].address, sim.nodes[1].address)
    for n in (1, 2):
        sim.set_link(n, True)
    end = sim.clock.now() + SETTLE
    while sim.clock.now() < end:
        if sim.clock.now() >= end - SETTLE + 2 * P.interval:
            sim.network.heal()
        sim.open_flows(rng, tcp_count=2, udp_count=4)
        sim.run_until(sim.clock.now() + 0.01)
    assert not sim.violations
    assert not sim.problems()


def test_cut_off_longer_than_the_isolation_limit_serves_with_what_it_reaches() -> None:
    params = Params(isolation_limit=1.0)
    sim = simulation(3, params=params)
    sim.run_until(READY)
    t0 = sim.clock.now()
    partition(sim, [1], [2, 3])
    sim.run_until(t0 + params.isolation_limit)
    assert state(sim, 1) == NodeState.ISOLATED and not owned(sim, 1)
    sim.run_until(t0 + params.isolation_limit + params.dead_after + params.hold_time + 0.01)
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL
    assert membership_of(sim, 1).view(sim.clock.now()).base == {1}
    notes = [e for _, e in events_of(sim.nodes[1], Notice) if e.cause == "isolation_limit"]
    assert len(notes) == 1
    sim.network.heal()
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems()


def test_force_quorum_serves_at_once_with_what_it_reaches() -> None:
    sim = simulation(3)
    sim.run_until(READY)
    partition(sim, [1], [2, 3])
    sim.run_until(sim.clock.now() + 1.0)
    assert state(sim, 1) == NodeState.ISOLATED
    vip1 = sim.nodes[1].vip
    assert vip1 is not None
    vip1.force_quorum()  # the simulation steps it at its next timer: within an interval
    sim.run_until(sim.clock.now() + P.interval + P.hold_time + 0.01)
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL


def test_a_partition_into_three_isolated_groups_heals() -> None:
    """Every group a minority: everybody is isolated. Cut-off nodes still count as reachable
    for quorum when they hear each other again, or nobody would ever be active again."""
    sim = simulation(6)
    sim.run_until(READY)
    partition(sim, [1, 2], [3, 4], [5, 6])
    sim.run_until(sim.clock.now() + 1.0)
    assert all(state(sim, n) == NodeState.ISOLATED for n in sim.nodes)
    sim.network.heal()
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.problems() and not sim.violations


# ----- planned restart --------------------------------------------------------------------


def test_planned_restart_keeps_the_place_and_the_successor_continues() -> None:
    sim = simulation(3)
    sim.run_until(READY)
    before = {n: owned(sim, n) for n in (1, 2, 3)}
    old = membership_of(sim, 2).incarnation
    t0 = sim.clock.now()
    sim.planned_restart(2, gap=0.5, grace=5.0)

    def unchanged(now: float) -> None:
        for n in (1, 2, 3):
            assert owned(sim, n) == before[n], (n, now)  # node 2's datapath serves on

    watch(sim, t0 + 0.4, unchanged)
    info = [m for m in membership_of(sim, 1).view(sim.clock.now()).members if m.node_id == 2]
    assert info[0].state == NodeState.RESTARTING and info[0].counted
    watch(sim, t0 + 0.5 + SETTLE, unchanged)
    new = membership_of(sim, 2).incarnation
    assert new != old
    for n in (1, 3):
        assert not downs(sim.nodes[n], 2)
        assert [e for _, e in events_of(sim.nodes[n], PeerContinued)] == [
            PeerContinued(2, old, new)
        ]
        later = [e for t, e in events_of(sim.nodes[n], OwnershipChanged) if t >= t0]
        assert not any(e.orphaned for e in later)
    assert not sim.problems() and not sim.violations


def test_a_successor_learns_of_a_peer_in_its_own_planned_restart_from_the_others() -> None:
    """Node 2 stops for a restart (its datapath serves on); then node 3 restarts too. Node 3's
    successor never heard node 2's RESTART: the others vouch for node 2 (RESTARTING, in their
    acks) until its grace ends, so the successor takes nothing node 2 still serves."""
    sim = simulation(3)
    rng = random.Random(3)
    sim.run_until(READY)
    share = owned(sim, 2)
    sim.planned_restart(2, gap=0.6)
    sim.run_until(sim.clock.now() + 0.1)
    sim.planned_restart(3, gap=0.1)
    end = sim.clock.now() + 0.5
    while sim.clock.now() < end:
        sim.open_flows(rng, tcp_count=2, udp_count=4)
        sim.run_until(sim.clock.now() + 0.01)
        assert not share & union(sim, (1, 3))
    sim.run_until(sim.clock.now() + SETTLE)
    assert not sim.violations and not sim.problems()
    assert not downs(sim.nodes[3], 2) and not downs(sim.nodes[1], 2)


def test_a_node_in_its_planned_restart_keeps_what_it_serves_through_a_view_change() -> None:
    """Node 2 stops for a restart (its datapath serves on, frozen); meanwhile node 1 leaves,
    and the new view moves some of node 2's buckets to node 3. Node 3 takes none before node
    2's successor has a view of its own and releases them: its frozen datapath, then the
    successor holding what it adopted, still answer them."""
    sim = simulation(3)
    rng = random.Random(5)
    sim.run_until(READY)
    moving = claims({1: 1, 2: 1, 3: 1}, P.buckets, 2) - claims({2: 1, 3: 1}, P.buckets, 2)
    assert moving, "the example needs node 2 to hand a bucket over when node 1 leaves"
    sim.planned_restart(2, gap=0.4)
    sim.run_until(sim.clock.now() + 0.1)
    sim.leave(1)
    end = sim.clock.now() + 0.5 + SETTLE
    while sim.clock.now() < end:
        sim.open_flows(rng, tcp_count=2, udp_count=4)
        sim.run_until(sim.clock.now() + 0.01)
    assert not sim.violations and not sim.problems()


def test_no_successor_within_the_grace_is_a_restart_timed_out() -> None:
    sim = simulation(3)
    sim.run_until(READY)
    share = owned(sim, 2)
    grace = 1.0
    t0 = sim.clock.now()
    sim.suspend(2, grace)
    sim.run_until(t0 + grace - 0.01)
    assert not downs(sim.nodes[1], 2) and owned(sim, 2) == share  # its datapath serves on
    assert not share & union(sim, (1, 3))  # and nobody else takes its place meanwhile
    sim.run_until(t0 + grace + TAKEOVER)
    for n in (1, 3):
        ((when, down),) = downs(sim.nodes[n], 2)
        assert down.reason == "restart timed out"
        assert t0 + grace <= when <= t0 + DELAY + grace + P.dead_after
    assert share <= union(sim, (1, 3))
    orphaned = set().union(
        *(e.orphaned for n in (1, 3) for _, e in events_of(sim.nodes[n], OwnershipChanged))
    )
    assert share <= orphaned


# ----- refusals: never silenced, newcomers wait a bounded time ----------------------------


def forged(seq: int, *, node: int = 7, incarnation: int = 1) -> bytes:
    """A heartbeat claiming to be an active member since long ago, with our key id and
    fingerprint, signed by someone without the key."""
    c = cluster()
    msg = Heartbeat(
        node_id=node,
        vip=c.vip,
        fingerprint=c.fingerprint,
        key_id=key_id(KEY),
        incarnation=incarnation,
        seq=seq,
        members=((node, 1),),
    )
    return msg.pack(OTHER_KEY)


def recording(seq: int, *, node: int = 7) -> bytes:
    """A genuine heartbeat of a node that acks an incarnation of node 1 from before now."""
    c = cluster()
    return Heartbeat(
        node_id=node,
        vip=c.vip,
        fingerprint=c.fingerprint,
        key_id=c.key_id,
        incarnation=5,
        seq=seq,
        members=((1, 1), (node, 1)),
        acks=(),
    ).pack(KEY)


def hostile(sim: Simulation, kind: str) -> Callable[[int], None]:
    """Start a hostile sender of `kind`; returns what to call at each step (its seq)."""
    if kind == "foreign":
        sim.add_node(9, 1, cfg=vip_config(seed="0x1234"))
        sim.start(9)
    elif kind == "other_key":
        sim.add_node(9, 1, key=OTHER_KEY)
        sim.start(9)
    if kind == "forged":
        return lambda seq: sim.inject(forged(seq))
    if kind == "replayed":
        return lambda seq: [sim.inject(recording(seq)) for _ in range(2)]  # type: ignore[func-returns-value]
    return lambda seq: None


CAUSES = {
    "forged": "bad_mac",
    "foreign": "foreign_fingerprint",
    "other_key": "bad_mac",
    "replayed": "replay",
}


@pytest.mark.parametrize("nodes", [1, 3])
@pytest.mark.parametrize("kind", sorted(CAUSES))
def test_a_serving_node_is_never_silenced(kind: str, nodes: int) -> None:
    sim = simulation(nodes)
    sim.run_until(READY)
    before = {n: owned(sim, n) for n in range(1, nodes + 1)}
    send = hostile(sim, kind)
    seq = itertools.count(1)

    def check(now: float) -> None:
        if round(now / P.interval, 6).is_integer():
            send(next(seq))
        for n in before:
            assert state(sim, n) == NodeState.ACTIVE, (n, membership_of(sim, n).reason)
            assert owned(sim, n) == before[n]

    horizon = P.listen_time + defaults.FOREIGN_WAIT + 1.0  # past a newcomer's longest wait
    watch(sim, sim.clock.now() + horizon, check, step=P.interval / 5)
    for n in before:
        m = membership_of(sim, n)
        assert m.stats.count(CAUSES[kind]) > 0
        assert m.view(sim.clock.now()).refused
        assert 9 not in assigned(sim, n) and 7 not in assigned(sim, n)


def test_a_newcomer_hearing_only_forgeries_serves_after_a_bounded_wait() -> None:
    sim = simulation(1, start=False)
    seq = itertools.count(1)
    states: list[tuple[float, NodeState]] = []

    def check(now: float) -> None:
        sim.inject(forged(next(seq)))
        if sim.nodes[1].running:
            states.append((now, state(sim, 1)))

    watch(sim, 0.1, check, step=P.interval)
    sim.start(1)
    t0 = sim.clock.now()
    wait = P.listen_time + defaults.FOREIGN_WAIT
    watch(sim, t0 + wait + 1.0, check, step=P.interval / 5)
    passive = [t for t, s in states if s == NodeState.PASSIVE]
    assert passive and min(passive) < t0 + P.listen_time + P.interval  # it does hold back
    assert max(passive) <= t0 + wait + 1e-6  # ... but no longer than listen + FOREIGN_WAIT
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL
    assert membership_of(sim, 1).stats.count("bad_mac") > 0


def test_a_newcomer_hearing_an_older_active_node_of_another_config_stays_passive() -> None:
    sim = simulation(1)
    sim.run_until(READY)
    sim.add_node(9, 1, cfg=vip_config(seed="0x1234"))
    sim.start(9)
    t0 = sim.clock.now()
    sim.run_until(t0 + P.listen_time + defaults.FOREIGN_WAIT + 1.0)
    newcomer = sim.nodes[9].vip
    assert newcomer is not None
    m9 = newcomer.membership
    assert m9.state == NodeState.PASSIVE and not owned(sim, 9)
    status = newcomer.status(sim.clock.now())
    assert status["state"] == "passive" and "misconfigured" in status["reason"]
    # From the CONFIG the old node sends, the newcomer says which setting differs.
    theirs, ours = vip_config().seed, vip_config(seed="0x1234").seed
    assert f"seed {theirs} (ours {ours})" in status["reason"]
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL
    # The serving node reports the newcomer, and which setting differs, from its CONFIG.
    old = sim.nodes[1].vip
    assert old is not None
    (refused,) = old.status(sim.clock.now())["refused"]
    assert refused["node_id"] == 9 and refused["cause"] == "foreign_fingerprint"
    assert f"seed {ours} (ours {theirs})" in refused["detail"]
    # The old node goes away: the newcomer is no longer the odd one, and serves.
    sim.crash(1)
    sim.run_until(sim.clock.now() + P.dead_after + P.hold_time + 0.01)
    assert m9.state == NodeState.ACTIVE and owned(sim, 9) == ALL


def test_another_key_newcomer_stays_passive_real_members_unaffected() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    sim.add_node(9, 1, key=OTHER_KEY)
    sim.start(9)
    sim.run_until(1.0 + P.listen_time + defaults.FOREIGN_WAIT + 0.5)
    m9 = membership_of(sim, 9)
    assert m9.state == NodeState.PASSIVE and not owned(sim, 9)
    assert "bad mac" in m9.reason and "another key" in m9.reason
    assert not sim.problems() and not sim.violations  # the real members never noticed a 9
    for n in (1, 2, 3):
        m = membership_of(sim, n)
        assert m.stats.count("bad_mac") > 0
        assert 9 not in assigned(sim, n)


def test_two_newcomers_of_different_configs_the_later_one_yields() -> None:
    sim = simulation(1, start=False)
    sim.add_node(9, 1, cfg=vip_config(seed="0x1234"))
    sim.start(1)
    sim.start(9)  # a later incarnation
    sim.run_until(P.listen_time + defaults.FOREIGN_WAIT + 1.0)
    assert state(sim, 1) == NodeState.ACTIVE and owned(sim, 1) == ALL
    assert state(sim, 9) == NodeState.PASSIVE and not owned(sim, 9)


def test_duplicate_node_id_the_older_yields() -> None:
    key = cluster().key
    older = alone(node_id=1)
    newer = alone(node_id=1, incarnation=200)
    said = []
    for t in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3):
        older.receive(newer.heartbeat(t).pack(key), "10.0.9.9", t)
        newer.receive(older.heartbeat(t).pack(key), "10.0.0.1", t)
        said += [e for e in older.tick(t) if isinstance(e, Notice)]
        newer.tick(t)
    assert older.state == NodeState.PASSIVE and "newer" in older.reason
    assert not older.owned_buckets()
    assert newer.state == NodeState.ACTIVE  # the newer incarnation keeps the id
    assert older.stats.count("duplicate_node_id") == newer.stats.count("duplicate_node_id") == 7
    dup = [e for e in said if e.cause == "duplicate_node_id"]
    assert len(dup) == 1 and dup[0].level == "error"  # rate-limited to one per 10 s


def test_a_successor_is_not_a_duplicate_of_its_predecessor() -> None:
    """After a planned restart the predecessor's last messages may still arrive: the successor
    (which names it as `previous`) does not take them for a second process with its id."""
    key = cluster().key
    old = alone(node_id=1, incarnation=100)
    late = old.suspend(0.0, 5.0).pack(key)
    succ = Membership(
        node_id=1,
        weight=1,
        incarnation=200,
        cluster=cluster(),
        now=0.0,
        adopted=frozenset(ALL),
        previous=100,
    )
    succ.receive(late, "10.0.0.1", 0.01)
    succ.tick(0.01)
    assert succ.state != NodeState.PASSIVE and succ.owned_buckets() == ALL


def test_replays_are_refused_and_old_recordings_never_count() -> None:
    key = cluster().key
    a, b = alone(1), alone(2)
    # b hears a, so its heartbeat acks a's incarnation 100.
    b.receive(a.heartbeat(0.0).pack(key), "10.0.0.1", 0.0)
    b.tick(0.0)
    recorded = b.heartbeat(0.0).pack(key)
    a.receive(recorded, "10.0.0.2", 0.001)
    a.tick(0.001)
    assert a.view(0.001).members[0].acks_us
    a.receive(recorded, "10.0.0.2", 0.002)  # the same datagram again
    assert a.stats.count("replay") == 1
    # a restarts (new incarnation); the recording acks the *old* incarnation: not a member.
    a2 = alone(1, now=1.0, incarnation=101)
    a2.receive(recorded, "10.0.0.2", 1.0)
    a2.tick(1.0)
    (member,) = a2.view(1.0).members
    assert not member.acks_us and not member.counted
    run_alone(a2, 1.0, 1.0 + P.listen_time + P.hold_time)
    assert a2.owned_buckets() == ALL  # alone, the replay changed nothing


def test_receive_returns_the_authenticated_message_or_none() -> None:
    key = cluster().key
    a, b = alone(1), alone(2)
    hb = b.heartbeat(0.0)
    got = a.receive(hb.pack(key), "10.0.0.2", 0.0)
    assert got == hb
    assert a.receive(hb.pack(key), "10.0.0.2", 0.0) is None  # a replay
    assert a.receive(forged(1), "10.0.0.66", 0.0) is None
    restart = b.suspend(0.01, 5.0)
    assert a.receive(restart.pack(key), "10.0.0.2", 0.01) == restart


def test_malformed_counted_and_logged_at_a_limited_rate() -> None:
    m = alone()
    for i in range(30):
        m.receive(b"garbage" * i, "198.51.100.1", i * 1.0)
    notices = [e for e in m.tick(30.0) if isinstance(e, Notice) and e.cause == "malformed"]
    assert m.stats.count("malformed") == 30
    assert len(notices) == 3  # t = 0, 10, 20
    assert notices[1].text.endswith("(9 suppressed)")


def test_other_vips_traffic_is_ignored_silently() -> None:
    m = alone()
    other = Membership(
        node_id=2,
        weight=1,
        incarnation=5,
        cluster=cluster(vip="192.0.2.99"),
        now=0.0,
    )
    m.receive(other.heartbeat(0.0).pack(cluster().key), "10.0.0.2", 0.0)
    assert m.stats.total == 0 and not m.view(0.0).members and not m.view(0.0).refused


# ----- reports ----------------------------------------------------------------------------


def test_view_reports_members_and_state() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    v = membership_of(sim, 1).view(sim.clock.now())
    assert v.state == NodeState.ACTIVE and v.node_id == 1 and v.carrier
    assert [x.node_id for x in v.members] == [2, 3]
    assert all(x.counted and x.acks_us and x.state == NodeState.ACTIVE for x in v.members)
    assert all(x.via is None for x in v.members)
    assert {x.address for x in v.members} == {"10.0.0.2", "10.0.0.3"}
    assert dict(v.assigned_to) == {1: 1, 2: 1, 3: 1} and v.base == {1, 2, 3}
    assert v.owned == claims(v.assigned_to, P.buckets, 1) and not v.pending
    ups = events_of(sim.nodes[1], PeerUp)
    assert {e.node_id for _, e in ups} == {2, 3}
    states = [e.new for _, e in events_of(sim.nodes[1], StateChanged)]
    assert states == [NodeState.ACTIVE]


def test_heartbeat_carries_view_members_and_acks_for_relaying() -> None:
    sim = simulation({1: 1, 2: 2, 3: 1})
    sim.run_until(1.0)
    m = membership_of(sim, 1)
    now = sim.clock.now()
    hb = unpack(m.heartbeat(now).pack(KEY), KEY)
    assert isinstance(hb, Heartbeat) and type(hb) is Heartbeat  # the HELLO was the first
    assert hb.view_digest == m.view(now).view_digest
    assert hb.members == ((1, 1), (2, 2), (3, 1))
    assert [(a.node_id, a.weight, a.state, a.member) for a in hb.acks] == [
        (2, 2, NodeState.ACTIVE, True),
        (3, 1, NodeState.ACTIVE, True),
    ]
    unit = 2 * P.interval_ms  # ages are rounded down to two intervals
    assert all(a.age_ms % unit == 0 and a.age_ms <= P.dead_after * 1000 for a in hb.acks)
    incarnations = {n: membership_of(sim, n).incarnation for n in (2, 3)}
    assert {a.node_id: a.incarnation for a in hb.acks} == incarnations


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        alone(node_id=0)
    with pytest.raises(ValueError):
        Membership(node_id=1, weight=-1, incarnation=1, cluster=cluster(), now=0.0)
    c = cluster()
    assert repr(c.key) not in repr(dataclasses.replace(c))  # the secret is never printed
