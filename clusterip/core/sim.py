"""A discrete-event simulation of many agents on a MemoryNetwork with a FakeClock.

Each simulated node is what the real agent will be, minus sockets and nftables: a Membership,
a bus, and a model of its datapath (the set of buckets it accepts) updated from the
OwnershipChanged events exactly as the datapath will be, *before* the next heartbeat is sent.
A crash drops the node and its datapath at once (the nftables table is owned by the agent's
netlink socket, so it dies with the process).

The simulation records, per bucket, every interval during which two or more nodes accepted it
(`overlaps`), and `problems()` lists what is wrong with the current state: after the network
heals and settles, it must be empty.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from clusterip.core.assign import assign
from clusterip.core.bus import FakeClock, MemoryBus, MemoryNetwork
from clusterip.core.events import Event, OwnershipChanged
from clusterip.core.membership import Membership
from clusterip.core.params import Cluster, Params
from clusterip.core.wire import Message, NodeState, Rejected, unpack


@dataclass
class SimNode:
    node_id: int
    weight: int
    address: str
    cluster: Cluster
    membership: Membership | None = None
    bus: MemoryBus | None = None
    wake: float = math.inf
    accepting: set[int] = field(default_factory=set)  # the datapath model
    events: list[tuple[float, Event]] = field(default_factory=list)  # (when, what) it reported

    @property
    def running(self) -> bool:
        return self.membership is not None


@dataclass(frozen=True)
class Overlap:
    bucket: int
    nodes: frozenset[int]
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Gap:
    """A bucket nobody accepted, from its release (or its owner's crash) until taken again."""

    bucket: int
    before: int  # the node that had it
    after: int  # the node that took it
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class _Decoder:
    """Memoized `wire.unpack`: every receiver of one datagram gets the same answer."""

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, bytes, bytes], Message | Rejected] = {}

    def __call__(self, data: bytes, key: bytes, fingerprint: bytes) -> Message:
        if len(self._cache) > 4096:
            self._cache.clear()
        k = (data, key, fingerprint)
        hit = self._cache.get(k)
        if hit is None:
            try:
                hit = unpack(data, key, fingerprint=fingerprint)
            except Rejected as exc:
                hit = exc
            self._cache[k] = hit
        if isinstance(hit, Rejected):
            raise hit
        return hit


class Simulation:
    """N agents (node id -> weight) of one cluster on one in-memory network."""

    def __init__(
        self,
        nodes: Mapping[int, int],
        *,
        cluster: Cluster,
        params: Params,
        clock: FakeClock,
        network: MemoryNetwork,
    ) -> None:
        self.cluster = cluster
        self.params = params
        self.clock = clock
        self.network = network
        self.nodes = {n: SimNode(n, w, f"10.0.0.{n}", cluster) for n, w in sorted(nodes.items())}
        self.overlaps: list[Overlap] = []
        self._holders: list[set[int]] = [set() for _ in range(params.buckets)]
        self._overlap_since: dict[int, float] = {}
        self.gaps: list[Gap] = []
        self._unowned_since: dict[int, tuple[float, int]] = {}
        self._incarnation = 1_000_000
        self._decode = _Decoder()
        self._wakes: list[tuple[float, int, int]] = []  # (when, node id, version)
        self._version: dict[int, int] = {}  # only the latest wake entry of a node counts
        self._by_address: dict[str, int] = {}

    # ----- node life ------------------------------------------------------------------------

    def add_node(self, node_id: int, weight: int, cluster: Cluster | None = None) -> SimNode:
        """A node not in the initial set (e.g. one with another key or config)."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} already exists")
        node = SimNode(node_id, weight, f"10.0.1.{node_id}", cluster or self.cluster)
        self.nodes[node_id] = node
        return node

    def start(self, node_id: int, *, address: str | None = None) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        now = self.clock.now()
        self._incarnation += 1
        node.address = address or node.address
        node.membership = Membership(
            node_id=node_id,
            weight=node.weight,
            incarnation=self._incarnation,
            cluster=node.cluster,
            now=now,
            params=self.params,
            decode=self._decode,
        )
        node.bus = self.network.attach(node.address)
        self._by_address[node.address] = node_id
        self._service(node, now)

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if not node.running:
            return
        now = self.clock.now()
        for bucket in list(node.accepting):
            self._release(node, bucket, now)
        self.network.detach(node.address)
        self._by_address.pop(node.address, None)
        self._version.pop(node_id, None)
        node.membership, node.bus, node.wake = None, None, math.inf

    def leave(self, node_id: int) -> None:
        """Graceful: release everything, then send LEAVE (twice), then stop."""
        node = self.nodes[node_id]
        if node.membership is None or node.bus is None:
            return
        now = self.clock.now()
        events, msg = node.membership.leave(now)
        self._apply(node, events, now)
        node.bus.send(msg.pack(node.cluster.key))
        _, again = node.membership.leave(now)
        node.bus.send(again.pack(node.cluster.key))
        self.crash(node_id)

    def restart(self, node_id: int) -> None:
        self.crash(node_id)
        self.start(node_id)

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.running]

    # ----- time -----------------------------------------------------------------------------

    def run_until(self, end: float) -> None:
        wakes = self._wakes
        while True:
            arrival = self.network.next_arrival()
            t = min(wakes[0][0] if wakes else math.inf, math.inf if arrival is None else arrival)
            if t > end:
                break
            self.clock.set(max(t, self.clock.now()))
            now = self.clock.now()
            todo = {self._by_address[a] for a in self.network.arrive() if a in self._by_address}
            while wakes and wakes[0][0] <= now:
                _, node_id, version = heapq.heappop(wakes)
                if self._version.get(node_id) == version:
                    todo.add(node_id)
            for node_id in sorted(todo):
                node = self.nodes[node_id]
                if node.membership is None or node.bus is None:
                    continue
                while (got := node.bus.recv()) is not None:
                    node.membership.receive(got[0], got[1], now)
                self._service(node, now)
        self.clock.set(max(end, self.clock.now()))

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.now() + seconds)

    def _service(self, node: SimNode, now: float) -> None:
        m, bus = node.membership, node.bus
        assert m is not None and bus is not None
        self._apply(node, m.tick(now), now)
        if m.due(now):
            bus.send(m.heartbeat(now).pack(node.cluster.key))
        wake = m.next_deadline(now)
        if wake != node.wake or self._version.get(node.node_id) is None:
            node.wake = wake
            version = self._version[node.node_id] = self._version.get(node.node_id, 0) + 1
            if wake < math.inf:
                heapq.heappush(self._wakes, (wake, node.node_id, version))

    # ----- datapath model -------------------------------------------------------------------

    def _apply(self, node: SimNode, events: Iterable[Event], now: float) -> None:
        for ev in events:
            node.events.append((now, ev))
            if isinstance(ev, OwnershipChanged):
                for bucket in ev.lost:
                    self._release(node, bucket, now)
                for bucket in ev.gained:
                    self._take(node, bucket, now)

    def _take(self, node: SimNode, bucket: int, now: float) -> None:
        node.accepting.add(bucket)
        holders = self._holders[bucket]
        if not holders and bucket in self._unowned_since:
            start, before = self._unowned_since.pop(bucket)
            self.gaps.append(Gap(bucket, before, node.node_id, start, now))
        holders.add(node.node_id)
        if len(holders) == 2:
            self._overlap_since[bucket] = now

    def _release(self, node: SimNode, bucket: int, now: float) -> None:
        node.accepting.discard(bucket)
        holders = self._holders[bucket]
        if len(holders) == 2 and node.node_id in holders:
            start = self._overlap_since.pop(bucket)
            self.overlaps.append(Overlap(bucket, frozenset(holders), start, now))
        holders.discard(node.node_id)
        if not holders:
            self._unowned_since[bucket] = (now, node.node_id)

    def close_overlaps(self) -> list[Overlap]:
        """Overlaps recorded so far, including those still open (ending now)."""
        now = self.clock.now()
        still = [
            Overlap(b, frozenset(self._holders[b]), start, now)
            for b, start in self._overlap_since.items()
        ]
        return self.overlaps + still

    # ----- checks ---------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is not converged: every running node active and agreeing on the member set,
        every bucket accepted by exactly the one node `assign` gives it to."""
        out: list[str] = []
        running = [n for n in self.running() if n.cluster == self.cluster]
        if not running:
            return out
        expected = {n.node_id: n.weight for n in running if n.weight > 0}
        for n in running:
            m = n.membership
            assert m is not None
            if n.weight > 0 and m.state != NodeState.ACTIVE:
                out.append(f"node {n.node_id} is {m.state.name}: {m.reason}")
            view = m.view()
            if dict(view.assigned_to) != expected:
                out.append(f"node {n.node_id} assigns to {dict(view.assigned_to)}")
            if view.pending:
                out.append(f"node {n.node_id} has {len(view.pending)} pending buckets")
            if n.accepting != set(m.owned_buckets()):
                out.append(f"node {n.node_id}: datapath differs from owned_buckets()")
        if expected:
            owners = assign(expected, self.params.buckets)
            for bucket, holders in enumerate(self._holders):
                if holders != {owners[bucket]}:
                    out.append(f"bucket {bucket} held by {sorted(holders)}, not {owners[bucket]}")
                    if len(out) > 20:
                        break
        return out
