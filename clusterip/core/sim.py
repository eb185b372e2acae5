"""A discrete-event simulation of many agents: the same `VipNode` the agent runs, on the one
in-memory transport (clusterip.core.bus.MemoryNetwork), with a FakeClock.

Each simulated node is what the real node is minus sockets and nftables: a VipNode, and a model
of its datapath (the `Ownership` of its last step, judged packet by packet by
clusterip.core.verdict, exactly as the nft chains judge it) with the flows its service holds.
A crash drops the datapath at once (the agent's liveness table dies with its process); a
planned stop keeps it, frozen, until the lease runs out or a successor continues it.

Clients: TCP flows (a SYN, then long-lived) and UDP flows, each hashed into a bucket. After
every event the simulation checks what clients would see (`violations`):
- no bucket accepted for new connections by two nodes that hear each other;
- no live node's flow accepted or reset by another node while its own node serves it (on a
  faulty network, one that cannot hear it, or never met it, takes it for dead: counted as
  `blind_resets`);
- no UDP datagram answered by two nodes;
- a dead node's flows reset only after the orphan delay;
- no flow dropped by its own node while that node serves (unless it gave the flow up: a node
  cut off from the majority, or passive, stops serving altogether).
`problems()` lists what is not converged: after the network heals and settles, it is empty.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from clusterip.config import VipConfig
from clusterip.core.bus import FakeClock, MemoryBus, MemoryNetwork
from clusterip.core.events import Event, PeerDown
from clusterip.core.handover import ORPHAN_RESET_DELAY
from clusterip.core.holdings import claims
from clusterip.core.ownership import Ownership
from clusterip.core.params import Params
from clusterip.core.verdict import Verdict, tcp, udp
from clusterip.core.vipnode import Adoption, VipNode
from clusterip.core.wire import NodeState

Client = tuple[str, int]  # address, port
DELAY_OK = ORPHAN_RESET_DELAY - 1e-9


@dataclass
class SimNode:
    node_id: int
    weight: int
    address: str
    cfg: VipConfig
    key: bytes
    vip: VipNode | None = None
    bus: MemoryBus | None = None
    datapath: Ownership | None = None  # what its kernel does; None: drops everything VIP
    lease_until: float | None = None  # stopped for a restart: the datapath serves until then
    link: bool = True
    tcp: dict[Client, int] = field(default_factory=dict)  # its service's flows -> bucket
    udp: set[Client] = field(default_factory=set)  # UDP flows it answered
    wake: float = math.inf
    counted: frozenset[int] = frozenset()  # its agent's members, as last seen
    covered_for: tuple[object, object] = (None, None)  # (datapath, client buckets) of:
    covered: list[int] = field(default_factory=list)  # client buckets it owns or drains
    events: list[tuple[float, Event]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.vip is not None

    @property
    def serving(self) -> bool:
        """Whether its datapath answers at all (process running, or within its lease)."""
        return self.datapath is not None


class Simulation:
    """N agents (node id -> weight) of one VIP on one in-memory network."""

    def __init__(
        self,
        nodes: Mapping[int, int],
        *,
        cfg: VipConfig,
        key: bytes,
        params: Params,
        clock: FakeClock,
        network: MemoryNetwork,
        check: bool = True,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.params = params
        self.clock = clock
        self.network = network
        self.check = check
        self.nodes = {n: SimNode(n, w, f"10.0.0.{n}", cfg, key) for n, w in sorted(nodes.items())}
        self.violations: list[str] = []
        self.resets = 0  # flows a node answered with a RST (allowed: their node is gone)
        self.unanswered = 0  # SYNs or datagrams no node accepted
        self.blind_resets = 0  # live flows reset by a node that cannot hear their node
        self._incarnation = 1_000_000
        self._wakes: list[tuple[float, int, int]] = []  # (when, node id, version)
        self._version: dict[int, int] = {}
        self._by_address: dict[str, int] = {}
        self._deaths: dict[int, float] = {}  # node -> earliest time its flows may be reset
        self._clients_tcp: dict[Client, int] = {}  # client -> bucket
        self._clients_udp: dict[Client, int] = {}
        self._timers: list[tuple[float, int, str, int]] = []  # planned actions
        self._order = 0
        self._incarnation_of: dict[int, int] = {}
        self._stale = True  # some datapath or client changed since the last check
        self._holders: tuple[object, ...] = ()  # as of the last bucket check
        self._wanted: frozenset[int] = frozenset()  # buckets with clients, as of the last check
        self._abandoned: set[Client] = set()  # flows whose node stopped serving (isolated)
        self._orphaned_at: dict[Client, float] = {}  # flows of an agent that died, if restarted
        self._met: dict[tuple[int, int], set[tuple[int, int]]] = {}  # (node, inc) -> counted
        self._down: dict[tuple[int, int, int], float] = {}  # (node, peer, inc) -> PeerDown at

    # ----- node life ------------------------------------------------------------------------

    def add_node(
        self, node_id: int, weight: int, cfg: VipConfig | None = None, key: bytes | None = None
    ) -> SimNode:
        """A node not in the initial set (e.g. one with another key or config)."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} already exists")
        node = SimNode(node_id, weight, f"10.0.1.{node_id}", cfg or self.cfg, key or self.key)
        self.nodes[node_id] = node
        return node

    def start(self, node_id: int) -> None:
        """Start an agent; it continues its node's stopped predecessor if one still serves."""
        node = self.nodes[node_id]
        if node.running:
            return
        now = self.clock.now()
        self._incarnation += 1
        adopted = None
        if node.lease_until is not None and now < node.lease_until and node.datapath is not None:
            adopted = Adoption(node.datapath, self._incarnation_of.get(node_id, 0))
        else:
            node.datapath = None
        node.lease_until = None
        node.vip = VipNode(
            node.cfg,
            node_id=node_id,
            weight=node.weight,
            key=node.key,
            params=self.params,
            incarnation=self._incarnation,
            now=now,
            adopted=adopted,
        )
        self._incarnation_of[node_id] = self._incarnation
        if not node.link:
            node.vip.set_carrier(False, now)  # as the reactor's carrier watch tells it
        if node.datapath is None:
            node.datapath = Ownership(self.params.buckets)
        if node.bus is None and node.link:
            node.bus = self.network.attach(node.address)
            self._by_address[node.address] = node_id
        died = self._deaths.pop(node_id, None)
        if adopted is None and died is not None:
            # A fresh agent serves none of its node's flows from before: they stay orphans of
            # the agent that died or left (the others may reset them from then on, or from
            # an orphan delay after they hear the new incarnation, if that is sooner).
            for client in node.tcp:
                if client not in self._abandoned:  # (given up before: anyone's to reset)
                    self._orphaned_at.setdefault(client, min(died, now + ORPHAN_RESET_DELAY))
            self._abandoned.update(node.tcp)
        self._service(node, now)

    def crash(self, node_id: int) -> None:
        """kill -9: the process and its liveness table are gone; the node answers nothing."""
        node = self.nodes[node_id]
        if not node.running and node.lease_until is None:
            return
        self._stop_process(node)
        node.datapath, node.lease_until = None, None
        p = self.params
        # detected at the earliest one interval less than a detection time after its last
        # heartbeat; its flows get their RST an orphan delay after the takeover
        self._deaths[node_id] = self.clock.now() - p.interval + p.dead_after + ORPHAN_RESET_DELAY
        self._check_now(force=True)

    def leave(self, node_id: int) -> None:
        """Graceful: release everything, send LEAVE, stop."""
        node = self.nodes[node_id]
        if node.vip is None:
            return
        step = node.vip.leave(self.clock.now())
        node.datapath = step.ownership
        self._send(node, step.datagrams)
        self._stop_process(node)
        node.datapath = None
        self._deaths[node_id] = self.clock.now() + ORPHAN_RESET_DELAY  # LEAVE: known at once
        self._check_now(force=True)

    def suspend(self, node_id: int, grace: float) -> None:
        """A planned stop (SIGTERM): the datapath serves on, frozen, for `grace` seconds."""
        node = self.nodes[node_id]
        if node.vip is None:
            return
        now = self.clock.now()
        self._send(node, node.vip.suspend(now, grace))
        self._stop_process(node)
        node.lease_until = now + grace
        self._after(grace, "lease", node_id)

    def planned_restart(self, node_id: int, gap: float, grace: float = 5.0) -> None:
        """SIGTERM, then a new agent `gap` seconds later."""
        self.suspend(node_id, grace)
        self._after(gap, "start", node_id)

    def restart(self, node_id: int) -> None:
        """kill -9, then start again at once."""
        self.crash(node_id)
        self.start(node_id)

    def set_link(self, node_id: int, up: bool) -> None:
        """The node's link (switch port) goes down or up: carrier, and all traffic."""
        node = self.nodes[node_id]
        if node.link == up:
            return
        node.link = up
        if up and node.running and node.bus is None:
            node.bus = self.network.attach(node.address)
            self._by_address[node.address] = node_id
        if not up and node.bus is not None:
            self.network.detach(node.address)
            self._by_address.pop(node.address, None)
            node.bus = None
        self._stale = True
        if node.vip is not None:
            node.vip.set_carrier(up, self.clock.now())
            self._service(node, self.clock.now())
        self._check_now(force=True)  # what clients see at that very instant

    def _stop_process(self, node: SimNode) -> None:
        if node.bus is not None:
            self.network.detach(node.address)
            self._by_address.pop(node.address, None)
        self._version.pop(node.node_id, None)
        node.vip, node.bus, node.wake = None, None, math.inf

    def _after(self, delay: float, what: str, node_id: int) -> None:
        self._order += 1
        heapq.heappush(self._timers, (self.clock.now() + delay, self._order, what, node_id))

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.running]

    # ----- hostile senders ------------------------------------------------------------------

    def inject(self, data: bytes, src: str = "10.0.9.9") -> None:
        """A datagram from a host that is no agent of this cluster, to every node."""
        for node in self.nodes.values():
            if node.bus is not None:
                self.network.deliver(src, node.address, data)

    # ----- clients --------------------------------------------------------------------------

    def open_flows(self, rng: random.Random, tcp_count: int = 0, udp_count: int = 0) -> None:
        """New clients: TCP connections (SYN) and UDP flows, each in a random bucket."""
        for kind, count in (("tcp", tcp_count), ("udp", udp_count)):
            for _ in range(count):
                addr = f"198.18.{rng.randint(1, 250)}.{rng.randint(1, 250)}"
                client = (addr, rng.randint(1024, 65535))
                bucket = rng.randint(1, self.params.buckets)
                if kind == "tcp":
                    self._syn(client, bucket)
                else:
                    self._clients_udp[client] = bucket
        self._check_now(force=True)

    def end_flows_of(self, node_id: int) -> None:
        """The clients of one node end their flows."""
        node = self.nodes[node_id]
        for client in list(node.tcp):
            del node.tcp[client]
            self._clients_tcp.pop(client, None)
        for client in list(node.udp):
            self._clients_udp.pop(client, None)
            for other in self.nodes.values():
                other.udp.discard(client)

    def close_flows(self, rng: random.Random, share: float) -> None:
        """Clients end about `share` of their flows (TCP FIN, UDP silence)."""
        for client in [c for c in self._clients_tcp if rng.random() < share]:
            del self._clients_tcp[client]
            for node in self.nodes.values():
                node.tcp.pop(client, None)
        for client in [c for c in self._clients_udp if rng.random() < share]:
            del self._clients_udp[client]
            for node in self.nodes.values():
                node.udp.discard(client)

    def _reachable_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.serving and n.link]

    def _syn(self, client: Client, bucket: int) -> None:
        took = [
            n
            for n in self._reachable_nodes()
            if n.datapath is not None
            and tcp(n.datapath, bucket, client, syn=True, mine=client in n.tcp) == Verdict.ACCEPT
        ]
        if len(took) > 1:
            self._violation(f"SYN of {client} (bucket {bucket}) accepted by {_ids(took)}")
        if not took:
            self.unanswered += 1
            return
        took[0].tcp[client] = bucket
        self._clients_tcp[client] = bucket

    def flows_of(self, node_id: int) -> int:
        return len(self.nodes[node_id].tcp)

    # ----- time -----------------------------------------------------------------------------

    def run_until(self, end: float) -> None:
        wakes = self._wakes
        while True:
            arrival = self.network.next_arrival()
            t = min(
                wakes[0][0] if wakes else math.inf,
                self._timers[0][0] if self._timers else math.inf,
                math.inf if arrival is None else arrival,
            )
            if t > end:
                break
            self.clock.set(max(t, self.clock.now()))
            now = self.clock.now()
            while self._timers and self._timers[0][0] <= now:
                _, _, what, node_id = heapq.heappop(self._timers)
                self._timer(what, node_id, now)
            todo = {self._by_address[a] for a in self.network.arrive() if a in self._by_address}
            while wakes and wakes[0][0] <= now:
                _, node_id, version = heapq.heappop(wakes)
                if self._version.get(node_id) == version:
                    todo.add(node_id)
            for node_id in sorted(todo):
                node = self.nodes[node_id]
                if node.vip is None:
                    continue
                while node.bus is not None and (got := node.bus.recv()) is not None:
                    node.vip.receive(got[0], got[1], now)
                self._service(node, now)
            self._check_now()
        self.clock.set(max(end, self.clock.now()))

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.now() + seconds)

    def _timer(self, what: str, node_id: int, now: float) -> None:
        node = self.nodes[node_id]
        if what == "start":
            self.start(node_id)
        elif what == "lease" and node.lease_until is not None and now >= node.lease_until:
            node.datapath, node.lease_until = None, None  # nobody continued it in time
            self._deaths[node_id] = now + ORPHAN_RESET_DELAY  # peers waited a detection more
            self._stale = True

    def _report(self, node: SimNode, now: float) -> tuple[float, list[tuple[str, int, int]]]:
        flows = [(a, p, b) for (a, p), b in node.tcp.items()]
        flows += [(a, p, self._clients_udp[(a, p)]) for a, p in node.udp]
        return now, flows

    def _service(self, node: SimNode, now: float) -> None:
        v = node.vip
        if v is None:
            return
        flows = self._report(node, now) if v.wants_flows or v.wants_flows_now else None
        step = v.step(now, flows)
        node.events.extend((now, e) for e in step.events)
        for e in step.events:
            if isinstance(e, PeerDown):
                self._down.setdefault((node.node_id, e.node_id, e.incarnation), now)
        counted = v.membership.counted_peers
        if counted is not node.counted:  # (the same object while it does not change)
            node.counted = counted
            met = self._met.setdefault((node.node_id, self._inc(node)), set())
            met.update((n, self._incarnation_of.get(n, 0)) for n in counted)
        if v.wants_flows_now:  # what the reactor does: count, then step again
            node.datapath = step.ownership
            self._stale = True
            self._send(node, step.datagrams)
            step = v.step(now, self._report(node, now))
        if step.ownership is not node.datapath:
            node.datapath = step.ownership
            self._stale = True
        self._send(node, step.datagrams)
        wake = v.next_deadline(now)
        if wake <= now:
            wake = now + 1e-4
        if wake != node.wake or self._version.get(node.node_id) is None:
            node.wake = wake
            version = self._version[node.node_id] = self._version.get(node.node_id, 0) + 1
            if wake < math.inf:
                heapq.heappush(self._wakes, (wake, node.node_id, version))

    def _send(self, node: SimNode, datagrams: Iterable[bytes]) -> None:
        if node.bus is None:
            return
        for data in datagrams:
            node.bus.send(data)

    # ----- what clients see -----------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self.violations.append(f"t={self.clock.now():.4f}: {text}")

    def _check_now(self, force: bool = False) -> None:
        """Judge every client's packets at every node: only when a datapath or a client
        changed (verdicts depend on nothing else)."""
        if not self.check or not (self._stale or force):
            return
        self._stale = False
        now = self.clock.now()
        live = self._reachable_nodes()
        self._check_buckets(live)
        # A packet is dropped by every node that neither owns nor drains its bucket: only
        # those that do are asked.
        wanted = frozenset({*self._clients_tcp.values(), *self._clients_udp.values()})
        if wanted != self._wanted:
            self._wanted = wanted  # (kept while equal: the per-node caches key on it)
        by_bucket: dict[int, list[SimNode]] = {}
        for n in live:
            if n.datapath is not None:
                if n.covered_for[0] is not n.datapath or n.covered_for[1] is not self._wanted:
                    n.covered_for = (n.datapath, self._wanted)
                    n.covered = sorted(self._wanted & _covered(n.datapath))
                for b in n.covered:
                    by_bucket.setdefault(b, []).append(n)
        owners = {c: n for n in self.nodes.values() for c in n.tcp}
        for client, bucket in list(self._clients_tcp.items()):
            self._check_tcp(client, bucket, owners.get(client), by_bucket.get(bucket, []), now)
        for client, bucket in self._clients_udp.items():
            takers = [
                n
                for n in by_bucket.get(bucket, ())
                if n.datapath is not None
                and udp(n.datapath, bucket, client, seen=client in n.udp) == Verdict.ACCEPT
            ]
            if len(takers) > 1:
                self._violation(f"UDP {client} (bucket {bucket}) answered by {_ids(takers)}")
            for n in takers:
                n.udp.add(client)

    def _check_buckets(self, live: list[SimNode]) -> None:
        holders = [(n, n.datapath.owned) for n in live if n.datapath and n.datapath.owned]
        key = (self.network.topology, *((n.node_id, o, n.running) for n, o in holders))
        if key == self._holders:
            return  # the same holders of the same sets, the same topology: the same verdict
        self._holders = key
        if sum(len(o) for _n, o in holders) == len(frozenset().union(*(o for _n, o in holders))):
            return  # no bucket held twice at all
        for i, (a, owned_a) in enumerate(holders):
            for b, owned_b in holders[i + 1 :]:
                both = owned_a & owned_b
                if both and a.running and b.running and self.network.mutual(a.address, b.address):
                    self._violation(
                        f"nodes {a.node_id} and {b.node_id} hear each other and both own "
                        f"{len(both)} bucket(s), e.g. {min(both)}"
                    )

    def _knew(self, node: SimNode, other: SimNode) -> bool:
        """Whether `node` ever counted `other`'s current incarnation as a member."""
        met = self._met.get((node.node_id, self._inc(node)), ())
        return (other.node_id, self._inc(other)) in met

    def _inc(self, node: SimNode) -> int:
        return self._incarnation_of.get(node.node_id, 0)

    def _check_tcp(
        self,
        client: Client,
        bucket: int,
        owner: SimNode | None,
        takers: list[SimNode],
        now: float,
    ) -> None:
        """`takers`: the live nodes that own or drain `bucket` (no other one accepts it)."""
        if owner is None:
            return
        owner_ok = (
            owner.serving
            and owner.link
            and owner.datapath is not None
            and tcp(owner.datapath, bucket, client, syn=False, mine=True) == Verdict.ACCEPT
        )
        for n in takers:
            if n is owner or n.datapath is None:
                continue
            v = tcp(n.datapath, bucket, client, syn=False, mine=False)
            if v == Verdict.DROP:
                continue
            blind = self.network.faulty and (
                not self.network.connected(owner.address, n.address)
                or not (self._knew(n, owner) and self._knew(owner, n))
            )
            if owner_ok and blind:
                # On a faulty network, a node that cannot hear the owner, or that was never a
                # member with it (one of them started, or restarted, on the other side of a
                # cut: with no memory of the other, each side may think itself alone), takes
                # the owner for dead: the limit of any quorum rule, counted apart.
                self.blind_resets += 1
            elif owner_ok:
                self._violation(f"flow {client} of node {owner.node_id} {v.value} at {n.node_id}")
            # (A flow its node gave up when it stopped serving, cut off, may be reset by
            # whoever takes its bucket: nobody answers it any more.)
            earliest = self._orphaned_at.get(client, self._deaths.get(owner.node_id))
            if client in self._abandoned and client not in self._orphaned_at:
                earliest = None
            if self.network.faulty and earliest is not None:
                # Loss or a cut may make a node declare another dead early: that node waits
                # the orphan delay from its own verdict (and one that never counted the owner
                # cannot know it).
                down = self._down.get((n.node_id, owner.node_id, self._inc(owner)))
                if not self._knew(n, owner) or (down is not None and now >= down + DELAY_OK):
                    earliest = None
            if earliest is not None and now < earliest - 1e-9:
                self._violation(
                    f"flow {client} of dead node {owner.node_id} reset by {n.node_id} "
                    f"{earliest - now:.3f} s too early (orphan delay not honoured)"
                )
            del owner.tcp[client]  # the client got its RST: that flow is over
            del self._clients_tcp[client]
            self.resets += 1
            return
        if owner.running and not owner_ok:
            state = owner.vip.membership.state if owner.vip is not None else None
            if state not in (NodeState.ACTIVE, NodeState.DRAINING, NodeState.RESTARTING):
                # It stopped serving (cut off, passive): its flows are given up, for whoever
                # takes their buckets over to reset (or to serve, if it is itself).
                self._abandoned.add(client)
            elif owner.link and client not in self._abandoned:
                self._violation(f"flow {client} dropped by its own node {owner.node_id} ({state})")

    # ----- convergence ----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is not converged: every running node of the cluster active and agreeing on the
        member set, every bucket held by exactly the node the assignment gives it to."""
        out: list[str] = []
        running = [n for n in self.running() if n.cfg == self.cfg and n.key == self.key]
        if not running:
            return out
        expected = {n.node_id: n.weight for n in running if n.weight > 0}
        buckets = self.params.buckets
        for n in running:
            assert n.vip is not None
            m = n.vip.membership
            if n.weight > 0 and m.state != NodeState.ACTIVE:
                out.append(f"node {n.node_id} is {m.state.name}: {m.reason}")
            view = m.view(self.clock.now())
            if dict(view.assigned_to) != expected:
                out.append(f"node {n.node_id} assigns to {dict(view.assigned_to)}")
            if view.pending:
                out.append(f"node {n.node_id} has {len(view.pending)} pending buckets")
            want = claims(expected, buckets, n.node_id) if n.node_id in expected else frozenset()
            got = n.datapath.owned if n.datapath is not None else frozenset()
            if got != want:
                out.append(f"node {n.node_id} holds {len(got)} buckets, its share is {len(want)}")
        return out[:20]


_COVERED: dict[int, tuple[Ownership, frozenset[int]]] = {}


def _covered(own: Ownership) -> frozenset[int]:
    """The buckets whose packets `own` may accept (owned or draining), cached per object."""
    hit = _COVERED.get(id(own))
    if hit is not None and hit[0] is own:
        return hit[1]
    if len(_COVERED) > 4096:
        _COVERED.clear()
    covered = own.owned | own.draining
    _COVERED[id(own)] = (own, covered)
    return covered


def _ids(nodes: Iterable[SimNode]) -> list[int]:
    return sorted(n.node_id for n in nodes)
