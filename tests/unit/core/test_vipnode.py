"""VipNode, the whole agent logic of one VIP as one pure state machine, wired by hand: a few
nodes on the in-memory network, stepped as the reactor steps them (apply the ownership, then
send the datagrams; count flows and step again when it asks)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest

from clusterip.core.bus import FakeClock, MemoryBus, MemoryNetwork
from clusterip.core.defaults import EARLY_GAP
from clusterip.core.events import OwnershipChanged, StateChanged
from clusterip.core.fingerprint import canonical
from clusterip.core.handover import GUARD_TIME
from clusterip.core.holdings import claims
from clusterip.core.kept import KEPT_TTL, Flow
from clusterip.core.ownership import Ownership
from clusterip.core.params import Params
from clusterip.core.vipnode import CONFIG_EVERY, Adoption, Step, VipNode
from clusterip.core.wire import (
    Config,
    Heartbeat,
    Kept,
    Leave,
    Message,
    NodeState,
    Restart,
    peek,
    unpack,
)
from tests.unit.core.agent_helpers import KEY, vip_config

P = Params(buckets=64)
DELAY = 0.0005  # fixed: datagrams arrive in the order they were sent
READY = P.listen_time + P.dead_after + 4 * P.interval


class Rig:
    """VipNodes on one MemoryNetwork, stepped at their deadlines, everything sent recorded."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.clock = FakeClock()
        self.net = MemoryNetwork(self.clock, random.Random(1), delay=(DELAY, DELAY))
        self.nodes: dict[int, VipNode] = {}
        self.buses: dict[int, MemoryBus] = {}
        self.sent: dict[int, list[tuple[float, Message]]] = {n: [] for n in nodes}
        self.steps: dict[int, list[tuple[float, Step]]] = {n: [] for n in nodes}
        self.datapath: dict[int, Ownership] = {}
        self.flows: dict[int, list[Flow]] = {n: [] for n in nodes}
        self.counts = 0  # flow counts handed over because a node asked for one at once
        for n in nodes:
            self.start(n)

    def start(self, n: int) -> None:
        self.nodes[n] = VipNode(
            vip_config(),
            node_id=n,
            weight=1,
            key=KEY,
            params=P,
            incarnation=1000 + n,
            now=self.clock.now(),
        )
        self.buses[n] = self.net.attach(f"10.0.0.{n}")
        self.step(n)

    def step(self, n: int) -> None:
        node, now = self.nodes[n], self.clock.now()
        flows = (now, list(self.flows[n])) if node.wants_flows else None
        step = node.step(now, flows)
        self.record(n, now, step)
        if node.wants_flows_now:  # what the reactor does: count at once, step again
            self.counts += 1
            step = node.step(now, (now, list(self.flows[n])))
            self.record(n, now, step)

    def record(self, n: int, now: float, step: Step) -> None:
        self.datapath[n] = step.ownership  # applied before anything is sent
        self.steps[n].append((now, step))
        for data in step.datagrams:
            self.sent[n].append((now, unpack(data, KEY)))
            self.buses[n].send(data)

    def run_until(self, end: float) -> None:
        while True:
            now = self.clock.now()
            wakes = [node.next_deadline(now) for node in self.nodes.values()]
            arrival = self.net.next_arrival()
            t = min([*wakes, arrival if arrival is not None else float("inf")])
            if t > end:
                break
            self.clock.set(max(t, now))
            now = self.clock.now()
            for n, node in self.nodes.items():
                got = False
                while (d := self.buses[n].recv()) is not None:
                    node.receive(d[0], d[1], now)
                    got = True
                if got or node.next_deadline(now) <= now:
                    self.step(n)
        self.clock.set(max(end, self.clock.now()))

    def owned(self, n: int) -> frozenset[int]:
        return self.datapath[n].owned


def kinds(msgs: Sequence[Message]) -> list[str]:
    return [type(m).__name__ for m in msgs]


def test_a_lone_node_listens_then_serves_every_bucket() -> None:
    rig = Rig([1])
    first = rig.steps[1][0][1]
    assert not first.ownership.owned and not first.changed
    assert kinds([unpack(d, KEY) for d in first.datagrams]) == ["Config", "Hello"]
    rig.run_until(READY)
    assert rig.owned(1) == frozenset(range(1, P.buckets + 1))
    changed = [s for _t, s in rig.steps[1] if s.changed]
    assert changed and changed[0].ownership.orphaned == frozenset()  # reset only after a delay
    events = [e for _t, s in rig.steps[1] for e in s.events]
    assert StateChanged(NodeState.STARTING, NodeState.ACTIVE, "active") in events


def test_every_datagram_of_a_node_carries_the_next_sequence_number() -> None:
    """All message types share one sequence, in the order they are sent, so that a receiver's
    replay window takes every one of them."""
    rig = Rig([1, 2])
    rig.run_until(READY)
    rig.flows[1] = [("198.51.100.1", 1000 + b, b) for b in range(1, P.buckets + 1)]
    rig.nodes[1].drain(True)
    rig.step(1)
    rig.run_until(READY + 3.0)
    for n in (1, 2):
        seqs = [m.seq for _t, m in rig.sent[n]]
        assert seqs == list(range(1, len(seqs) + 1)), n
    assert {"Kept", "Config", "Heartbeat", "Hello"} <= set(kinds([m for _t, m in rig.sent[1]]))
    for n in (1, 2):  # and nothing anybody sent was refused
        assert rig.nodes[n].membership.stats.total == 0


def test_config_is_sent_at_start_and_every_config_every() -> None:
    rig = Rig([1])
    rig.run_until(3 * CONFIG_EVERY + 0.01)
    configs = [(t, m) for t, m in rig.sent[1] if isinstance(m, Config)]
    times = [t for t, _m in configs]
    assert times[0] == 0.0 and len(times) == 4
    for a, b in itertools.pairwise(times):
        assert CONFIG_EVERY <= b - a <= CONFIG_EVERY + P.interval
    node = rig.nodes[1]
    assert all(m.fields == canonical(node.cluster.fields) for _t, m in configs)
    # Between two CONFIGs, the node sleeps until its next heartbeat, never longer.
    assert node.next_deadline(rig.clock.now()) <= rig.clock.now() + P.interval


def test_a_drain_announces_the_kept_flows_before_the_heartbeat_that_hands_over() -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    mine = rig.owned(1)
    rig.flows[1] = [("198.51.100.7", 40000 + b, b) for b in sorted(mine)]
    # A drain, a little after the last heartbeat: the releasing step sends nothing yet, and
    # asks for a fresh count of this node's flows at once ...
    rig.run_until(rig.clock.now() + P.interval / 2)
    rig.nodes[1].drain(True)
    now = rig.clock.now()
    step = rig.nodes[1].step(now, None)
    assert rig.nodes[1].wants_flows_now and step.datagrams == []
    assert step.ownership.draining == mine and not step.ownership.owned
    # ... and with the count: KEPT first, then the heartbeat that lets node 2 take over.
    step = rig.nodes[1].step(now, (now, list(rig.flows[1])))
    assert not rig.nodes[1].wants_flows_now
    msgs = [unpack(d, KEY) for d in step.datagrams]
    assert kinds(msgs) == ["Kept", "Heartbeat"]
    kept, hb = msgs
    assert isinstance(kept, Kept) and isinstance(hb, Heartbeat)
    assert {(str(a), p, b) for a, p, b in kept.flows} == set(rig.flows[1])
    assert hb.kept == kept.seq and hb.flags == 1 and hb.members == ((2, 1),)
    rig.record(1, now, step)
    rig.run_until(now + 1.0)
    assert rig.owned(2) == frozenset(range(1, P.buckets + 1))
    # Node 2 drops node 1's kept flows from the moment it owns their buckets.
    for _t, s in rig.steps[2]:
        if s.ownership.owned & mine:
            assert {(a, p) for a, p, _b in rig.flows[1]} <= s.ownership.kept


def test_without_a_count_the_heartbeat_goes_after_one_interval() -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    rig.run_until(rig.clock.now() + P.interval / 2)
    node = rig.nodes[1]
    node.drain(True)
    now = rig.clock.now()
    assert node.step(now, None).datagrams == [] and node.wants_flows_now
    assert node.next_deadline(now) == now  # it wants its count now
    late = node.step(now + P.interval, None)  # the caller could not count in time
    assert not node.wants_flows_now
    assert "Heartbeat" in kinds([unpack(d, KEY) for d in late.datagrams])


def test_kept_flows_of_a_peer_are_dropped_here_and_forgotten_when_it_dies() -> None:
    rig = Rig([1, 2, 3])
    rig.run_until(READY)
    mine = rig.owned(1)
    rig.flows[1] = [("198.51.100.9", 50000 + b, b) for b in sorted(mine)]
    rig.nodes[1].drain(True)
    rig.step(1)
    rig.run_until(rig.clock.now() + 0.5)
    kept = {(a, p) for a, p, _b in rig.flows[1]}
    for n in (2, 3):
        assert kept <= rig.datapath[n].kept
        assert mine <= rig.owned(2) | rig.owned(3)
    # Node 1 dies: a dead node keeps nothing; its flows are orphans, reset after the delay.
    rig.net.detach("10.0.0.1")
    del rig.nodes[1]
    rig.run_until(rig.clock.now() + P.dead_after + 0.5)
    for n in (2, 3):
        assert not rig.datapath[n].kept
        assert rig.datapath[n].orphaned == rig.owned(n)  # a death: every bucket resets
        assert rig.nodes[n].status(rig.clock.now())["kept_by_others"] == 0


def test_status_reports_what_the_operator_needs() -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    now = rig.clock.now()
    st = rig.nodes[1].status(now)
    node = rig.nodes[1]
    assert st["vip"] == "192.0.2.10" and st["interface"] == "eth0" and st["mode"] == "agent"
    assert st["node_id"] == 1 and st["incarnation"] == 1001 and st["buckets"] == P.buckets
    assert st["state"] == "active" and st["reason"] == "active" and st["weight"] == 1
    assert st["owned"] == sorted(rig.owned(1)) and st["owned_count"] == len(rig.owned(1))
    assert min(st["owned"]) >= 1 and max(st["owned"]) <= P.buckets  # 1-based
    assert st["share"] == {"1": st["owned_count"], "2": P.buckets - st["owned_count"]}
    assert st["owned"] == sorted(claims({1: 1, 2: 1}, P.buckets, 1))
    assert st["quorum_base"] == [1, 2] and st["carrier"] is True
    assert st["seed"].startswith("0x") and st["hashmode"] == node.cfg.hashmode
    (member,) = st["members"]
    assert member["id"] == 2 and member["address"] == "10.0.0.2" and member["via"] is None
    assert member["state"] == "active" and member["counted"] and member["weight"] == 1
    assert member["buckets"] == P.buckets - st["owned_count"]
    assert 0 <= member["last_heard_ms"] <= P.interval * 1000 + 1
    assert st["refused"] == [] and set(st["rejected"].values()) == {0}
    assert st["draining"] == [] and st["failovers"] == [] and st["kept_by_others"] == 0
    assert not st["draining_all"] and st["orphaned"] == 0
    # A cold start's buckets were nobody's in this view: guarded (no RST) for a while.
    assert set(st["guarded"]) <= set(st["owned"])
    assert st["guard_until"] is None or 0 < st["guard_until"] <= GUARD_TIME


def test_status_reports_refused_senders() -> None:
    rig = Rig([1])
    rig.run_until(READY)
    rig.nodes[1].receive(b"garbage", "198.51.100.66", rig.clock.now())
    st = rig.nodes[1].status(rig.clock.now())
    (refused,) = st["refused"]
    assert refused["address"] == "198.51.100.66" and refused["cause"] == "malformed"
    assert refused["count"] == 1 and st["rejected"]["malformed"] == 1
    assert st["state"] == "active"  # and nothing else changes


def test_status_with_a_drain() -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    had = rig.owned(2)
    rig.nodes[2].drain(True)
    rig.step(2)
    rig.run_until(rig.clock.now() + 0.5)
    st2 = rig.nodes[2].status(rig.clock.now())
    assert st2["state"] == "draining" and st2["draining_all"] and st2["owned_count"] == 0
    st1 = rig.nodes[1].status(rig.clock.now())
    assert had <= set(st1["guarded"])  # node 2 keeps its flows: no RST for them here
    assert st1["share"] == {"1": P.buckets}
    (member,) = st1["members"]
    assert member["state"] == "draining" and not member["counted"] and member["buckets"] == 0


def test_status_counts_failovers_from_dead_nodes() -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    had = rig.owned(2)
    died = rig.clock.now()
    rig.net.detach("10.0.0.2")
    del rig.nodes[2]
    rig.run_until(died + P.dead_after + 0.1)
    (failover,) = rig.nodes[1].status(rig.clock.now())["failovers"]
    assert failover["buckets"] == len(had) and died < failover["at"] <= died + P.dead_after + 0.1


def test_leave_releases_first_then_says_goodbye_several_times() -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    now = rig.clock.now()
    step = rig.nodes[1].leave(now, repeat=3)
    assert step.changed and step.ownership == Ownership(P.buckets)
    msgs = [unpack(d, KEY) for d in step.datagrams]
    assert kinds(msgs) == ["Leave"] * 3
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3  # a resend is not a replay
    assert all(isinstance(m, Leave) and m.state == NodeState.LEAVING for m in msgs)
    lost = [e for e in step.events if isinstance(e, OwnershipChanged)]
    assert lost and not lost[0].owned


def test_suspend_sends_restart_with_the_grace() -> None:
    rig = Rig([1])
    rig.run_until(READY)
    data = rig.nodes[1].suspend(rig.clock.now(), 4.5, repeat=2)
    msgs = [unpack(d, KEY) for d in data]
    assert kinds(msgs) == ["Restart", "Restart"]
    assert all(isinstance(m, Restart) and m.grace_ms == 4500 for m in msgs)
    assert peek(data[0]).seq < peek(data[1]).seq


@pytest.mark.parametrize("weight", [0, 3])
def test_set_weight_is_announced_at_once(weight: int) -> None:
    rig = Rig([1, 2])
    rig.run_until(READY)
    t0 = rig.clock.now()
    rig.nodes[1].set_weight(weight)
    rig.step(1)
    rig.run_until(t0 + P.interval)
    hbs = [(t, m) for t, m in rig.sent[1] if t >= t0 and isinstance(m, Heartbeat)]
    when, first = hbs[0]
    assert first.weight == weight
    assert when <= t0 + EARLY_GAP * P.interval  # at once, not at the next regular heartbeat
    rig.run_until(t0 + 1.0)
    expected = claims({1: weight, 2: 1} if weight else {2: 1}, P.buckets, 2)
    assert rig.owned(2) == expected


def test_a_successor_drops_what_others_keep_as_its_predecessor_did() -> None:
    """A planned restart while peers drain: the successor has heard no KEPT yet, but its
    predecessor's datapath dropped those flows. It goes on dropping them (until the peers'
    refreshed announcements take over), rather than answering flows another node keeps."""
    kept = frozenset({("198.51.100.7", 40312)})
    left = Ownership(P.buckets, frozenset({1, 2}), kept=kept)
    node = VipNode(
        vip_config(),
        node_id=1,
        weight=1,
        key=KEY,
        params=P,
        incarnation=2000,
        now=10.0,
        adopted=Adoption(left, 1000),
    )
    step = node.step(10.0)
    assert step.ownership.owned == {1, 2} and step.ownership.kept == kept
    assert node.step(10.0 + KEPT_TTL + 0.01).ownership.kept == frozenset()  # not refreshed


def test_a_successor_without_carrier_gives_up_what_it_continued_at_once() -> None:
    """A planned restart whose successor starts while the link is down: it is cut off, so it
    owns nothing from that instant (as any node that loses its carrier), although its
    predecessor's datapath served and it has heard nobody yet."""
    left = Ownership(P.buckets, frozenset({1, 2, 3}))
    node = VipNode(
        vip_config(),
        node_id=1,
        weight=1,
        key=KEY,
        params=P,
        incarnation=2000,
        now=10.0,
        adopted=Adoption(left, 1000),
    )
    assert node.step(10.0).ownership.owned == {1, 2, 3}
    node.set_carrier(False, 10.01)
    assert node.step(10.01).ownership.owned == frozenset()
    assert node.membership.state == NodeState.ISOLATED


def test_the_summary_for_metrics_agrees_with_the_status() -> None:
    rig = Rig([1, 2, 3])
    rig.run_until(READY)
    node = rig.nodes[1]
    now = rig.clock.now()
    status, summary = node.status(now), node.summary()
    assert summary["owned_count"] == status["owned_count"] > 0
    assert summary["draining_count"] == len(status["draining"])
    assert summary["members"] == len(status["share"]) == 3
    assert summary["state"] == status["state"] == "active"
    assert summary["rejected"] == status["rejected"]
