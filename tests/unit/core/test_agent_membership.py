"""Membership state machine: startup, detection, no false alarms, passive, LEAVE, restarts,
replays, duplicate ids, handoffs, reports."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from clusterip.core.events import (
    Notice,
    OwnershipChanged,
    PeerDown,
    PeerUp,
    StateChanged,
)
from clusterip.core.membership import Membership
from clusterip.core.params import Params
from clusterip.core.wire import Heartbeat, NodeState, unpack
from tests.unit.core.agent_helpers import (
    OTHER_KEY,
    cluster,
    downs,
    events_of,
    simulation,
)

P = Params()


def alone(node_id: int = 1, now: float = 0.0, **kw: object) -> Membership:
    return Membership(node_id=node_id, weight=1, incarnation=100, cluster=cluster(), now=now, **kw)  # type: ignore[arg-type]


def run_alone(m: Membership, start: float, until: float) -> None:
    """Drive one membership as the I/O loop will: tick and send at each deadline."""
    t = start
    while t <= until:
        m.tick(t)
        if m.due(t):
            m.heartbeat(t)
        t = m.next_deadline(t)


def test_alone_listens_then_takes_every_bucket_as_orphaned() -> None:
    m = alone()
    events = m.tick(0.0)
    assert m.state == NodeState.STARTING and not m.owned_buckets()
    assert not [e for e in events if isinstance(e, OwnershipChanged)]
    assert m.due(0.0)
    hello = m.heartbeat(0.0)
    assert type(hello).__name__ == "Hello" and hello.state == NodeState.STARTING
    assert m.next_deadline(0.0) == pytest.approx(P.interval)  # next heartbeat first
    m.tick(P.listen_time - 1e-9)
    states = [m.state]
    m.tick(P.listen_time)
    states.append(m.state)
    assert states == [NodeState.STARTING, NodeState.ACTIVE]
    assert not m.owned_buckets()  # gathering changes for hold_time first
    events = m.tick(P.listen_time + P.hold_time)
    (change,) = [e for e in events if isinstance(e, OwnershipChanged)]
    assert m.owned_buckets() == frozenset(range(P.buckets)) == change.owned
    assert change.orphaned == change.owned and set(change.gained.values()) == {None}
    assert not change.lost


def test_params_defaults_and_validation() -> None:
    assert P.dead_after == pytest.approx(0.25)  # detection within the 300 ms budget
    assert P.listen_time == P.dead_after == P.handoff_time
    assert P.interval_ms == 50
    for bad in ({"tolerance": 1}, {"interval": 0}, {"buckets": 0}, {"listen": -1.0}):
        with pytest.raises(ValueError):
            Params(**bad)


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
    sim.run_until(1.0)
    assert not sim.problems()
    crash_at = sim.clock.now()
    sim.crash(2)
    sim.run_until(crash_at + 0.3)
    for n in (1, 3):
        ((when, down),) = downs(sim.nodes[n], 2)
        assert down.reason == "timeout"
        assert crash_at < when <= crash_at + P.dead_after + 1e-9
        taken = [
            t
            for t, e in events_of(sim.nodes[n], OwnershipChanged)
            if t > crash_at and any(e.gained.get(b) == 2 for b in e.orphaned)
        ]
        assert taken and taken[0] <= crash_at + P.dead_after + P.hold_time + 1e-9 <= crash_at + 0.3
    assert not sim.problems()


def test_no_false_alarm_with_jitter_below_the_tolerance() -> None:
    # Delays anywhere in 0..100 ms (so heartbeats get reordered): two arrivals are at most
    # interval + 100 ms = 150 ms apart, under the 200 ms limit whatever the seed. Losses are
    # covered exactly by the partition test below.
    sim = simulation(3, delay=(0.0, 0.1))
    sim.run_until(10.0)
    for n in sim.nodes.values():
        assert not [e for _, e in n.events if isinstance(e, PeerDown)]
    assert not sim.problems()


def test_three_missed_heartbeats_are_tolerated_a_fourth_is_not() -> None:
    sim = simulation(2)
    sim.run_until(1.0)
    a, b = sim.nodes[1], sim.nodes[2]
    # Cut for 0.14 s: at most 3 heartbeats of each side are lost, the gap stays < 0.2 s.
    sim.network.partition([[a.address], [b.address]])
    sim.run_until(1.14)
    sim.network.heal()
    sim.run_until(2.0)
    assert not downs(a, 2) and not downs(b, 1)
    # Cut for 0.3 s: dead after 0.2 s without a heartbeat.
    sim.network.partition([[a.address], [b.address]])
    sim.run_until(2.3)
    sim.network.heal()
    ((when, _),) = downs(a, 2)
    assert 2.0 + P.dead_after - P.interval <= when <= 2.0 + P.dead_after + 1e-9
    sim.run_until(3.5)
    assert not sim.problems()  # back together after healing


def test_leave_releases_everything_before_the_leave_message() -> None:
    m = alone()
    run_alone(m, 0.0, 1.0)
    assert len(m.owned_buckets()) == P.buckets
    events, msg = m.leave(1.0)
    (change,) = [e for e in events if isinstance(e, OwnershipChanged)]
    assert not change.owned and set(change.lost) == set(range(P.buckets))
    assert set(change.lost.values()) == {None}  # nobody left to take them
    assert m.state == NodeState.LEAVING and not m.owned_buckets()
    assert msg.state == NodeState.LEAVING
    _, again = m.leave(1.0)
    assert again.seq == msg.seq + 1  # a resend is not a replay


def test_leave_removes_at_once_and_its_buckets_are_orphaned() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    had = set(sim.nodes[3].accepting)
    sim.leave(3)
    sim.run_until(1.0 + 0.01 + P.hold_time)  # one network delay + hold-down, no timeout
    for n in (1, 2):
        ((_, down),) = downs(sim.nodes[n], 3)
        assert down.reason == "leave"
    taken = set(sim.nodes[1].accepting) | set(sim.nodes[2].accepting)
    assert had <= taken
    orphaned = set().union(*(e.orphaned for _, e in events_of(sim.nodes[1], OwnershipChanged)))
    assert had & sim.nodes[1].accepting <= orphaned
    sim.run_until(1.2)  # moves between the survivors wait for each other's release
    assert not sim.problems()
    assert not sim.close_overlaps()


def test_restart_rejoins_and_buckets_come_back_from_live_nodes_without_overlap() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    before = set(sim.nodes[2].accepting)
    sim.restart(2)
    t0 = sim.clock.now()
    sim.run_until(t0 + 0.1)
    for n in (1, 3):
        ((_, down),) = downs(sim.nodes[n], 2)
        assert down.reason == "restarted"  # the new incarnation replaced the old at once
    sim.run_until(t0 + 1.0)
    assert not sim.problems()
    assert set(sim.nodes[2].accepting) == before  # same member set, same buckets
    back = [e for t, e in events_of(sim.nodes[2], OwnershipChanged) if t >= t0]
    assert back and not any(e.orphaned for e in back)  # came from live nodes
    assert set().union(*(set(e.gained.values()) for e in back)) <= {1, 3}
    assert not sim.close_overlaps()


def test_join_takes_only_released_buckets() -> None:
    sim = simulation({1: 1, 2: 1, 3: 1}, start=False)
    sim.start(1)
    sim.start(2)
    sim.run_until(1.0)
    sim.start(3)
    sim.run_until(2.0)
    assert not sim.problems()
    assert not sim.close_overlaps()
    gained = [e for _, e in events_of(sim.nodes[3], OwnershipChanged)]
    assert sum(len(e.gained) for e in gained) == len(sim.nodes[3].accepting)
    assert not any(e.orphaned for e in gained)


def test_drain_gives_buckets_away_and_keeps_membership() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    m2 = sim.nodes[2].membership
    assert m2 is not None
    m2.drain(True)
    sim.run_until(1.5)
    assert m2.state == NodeState.DRAINING and not sim.nodes[2].accepting
    assert not downs(sim.nodes[1], 2)
    assert sim.nodes[1].accepting | sim.nodes[3].accepting == set(range(P.buckets))
    m2.drain(False)
    sim.run_until(2.5)
    assert not sim.problems()
    assert not sim.close_overlaps()


def test_passive_when_only_a_foreign_fingerprint_is_heard() -> None:
    sim = simulation(1)
    foreign = sim.add_node(9, 1, cluster(seed="0x1234"))
    sim.start(9)
    sim.run_until(2.0)
    for node in (sim.nodes[1], foreign):
        m = node.membership
        assert m is not None
        assert m.state == NodeState.PASSIVE and not node.accepting
        assert "foreign fingerprint" in m.reason and "no valid member" in m.reason
        assert m.stats.count("foreign_fingerprint") > 0
        (refused,) = m.view().refused
        assert refused.cause == "foreign_fingerprint" and refused.count > 0
    loud = [e for _, e in events_of(sim.nodes[1], Notice) if e.cause == "foreign_fingerprint"]
    assert loud and loud[0].level == "error"
    # The foreign node goes away: the real one serves after one detection time.
    sim.crash(9)
    sim.run_until(2.0 + P.dead_after + P.hold_time + 0.01)
    assert sim.nodes[1].membership is not None
    assert sim.nodes[1].membership.state == NodeState.ACTIVE
    assert not sim.problems()


def test_passive_on_another_key_real_members_unaffected() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    intruder = sim.add_node(9, 1, cluster(key=OTHER_KEY))
    sim.start(9)
    sim.run_until(3.0)
    m9 = intruder.membership
    assert m9 is not None and m9.state == NodeState.PASSIVE and not intruder.accepting
    assert "bad mac" in m9.reason and "another key" in m9.reason
    assert not sim.problems()  # the three real members never noticed a member 9
    for n in (1, 2, 3):
        m = sim.nodes[n].membership
        assert m is not None and m.stats.count("bad_mac") > 0
        assert 9 not in m.view().assigned_to


def test_duplicate_node_id_the_older_yields() -> None:
    key = cluster().key
    older = alone(node_id=1)
    newer = Membership(node_id=1, weight=1, incarnation=200, cluster=cluster(), now=0.0)
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


def test_replays_are_refused_and_old_recordings_never_count() -> None:
    key = cluster().key
    a, b = alone(1), alone(2)
    # b hears a, so its heartbeat acks a's incarnation 100.
    b.receive(a.heartbeat(0.0).pack(key), "10.0.0.1", 0.0)
    b.tick(0.0)
    recorded = b.heartbeat(0.0).pack(key)
    a.receive(recorded, "10.0.0.2", 0.001)
    a.tick(0.001)
    assert a.view().members[0].acks_us
    a.receive(recorded, "10.0.0.2", 0.002)  # the same datagram again
    assert a.stats.count("replay") == 1
    # a restarts (new incarnation); the recording acks the *old* incarnation: not a member.
    a2 = Membership(node_id=1, weight=1, incarnation=101, cluster=cluster(), now=1.0)
    a2.receive(recorded, "10.0.0.2", 1.0)
    a2.tick(1.0)
    (member,) = a2.view().members
    assert not member.acks_us and not member.counted
    run_alone(a2, 1.0, 1.0 + P.listen_time + P.hold_time)
    assert a2.owned_buckets() == frozenset(range(P.buckets))  # alone, the replay changed nothing


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
    assert m.stats.total == 0 and not m.view().members and not m.view().refused


def test_view_reports_members_and_state() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    m = sim.nodes[1].membership
    assert m is not None
    v = m.view()
    assert v.state == NodeState.ACTIVE and v.node_id == 1
    assert [x.node_id for x in v.members] == [2, 3]
    assert all(x.counted and x.acks_us and x.state == NodeState.ACTIVE for x in v.members)
    assert {x.address for x in v.members} == {"10.0.0.2", "10.0.0.3"}
    assert dict(v.assigned_to) == {1: 1, 2: 1, 3: 1}
    assert len(v.owned) in (1365, 1366) and not v.pending
    ups = events_of(sim.nodes[1], PeerUp)
    assert {e.node_id for _, e in ups} == {2, 3}
    states = [e.new for _, e in events_of(sim.nodes[1], StateChanged)]
    assert states == [NodeState.ACTIVE]


def test_heartbeat_carries_view_and_acks() -> None:
    sim = simulation(3)
    sim.run_until(1.0)
    m = sim.nodes[1].membership
    assert m is not None
    hb = unpack(m.heartbeat(1.0).pack(cluster().key), cluster().key)
    assert isinstance(hb, Heartbeat)
    assert hb.view_digest == m.view().view_digest
    assert [a.node_id for a in hb.acks] == [2, 3]


def test_weight_is_used_for_shares() -> None:
    sim = simulation({1: 1, 2: 3})
    sim.run_until(1.0)
    assert not sim.problems()
    assert len(sim.nodes[2].accepting) == 3 * len(sim.nodes[1].accepting)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        alone(node_id=0)
    with pytest.raises(ValueError):
        Membership(node_id=1, weight=-1, incarnation=1, cluster=cluster(), now=0.0)
    c = cluster()
    assert repr(c.key) not in repr(dataclasses.replace(c))  # the secret is never printed
