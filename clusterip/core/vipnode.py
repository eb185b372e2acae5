"""One VIP on one node: the whole agent logic as one pure state machine.

`VipNode` owns the membership (who is alive, who holds which bucket), the handover (draining,
guarded and orphaned buckets), the flows other nodes keep, and this node's announcements. It
has no sockets, no nftables and no clock of its own:

    node.receive(datagram, source, now)          # every datagram from the cluster interface
    step = node.step(now, flows)                 # after inputs, and at node.next_deadline(now)
    # the caller applies step.ownership to the datapath (one transaction), THEN sends
    # step.datagrams: a heartbeat announces a view whose releases must already be done.

`flows` is the latest count of this node's own flows to the VIP (taken at, [(client address,
client port, bucket)]), which the caller measures while `node.wants_flows` (buckets drain).
The simulator (clusterip.core.sim) drives exactly this class, so everything decided here is
checked for many nodes in plain pytest; the reactor (clusterip.reactor.agent) only moves
bytes, applies `Ownership` to the kernel, answers the control socket and exports metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import VipConfig
from clusterip.core import defaults
from clusterip.core.events import (
    Event,
    OwnershipChanged,
    PeerContinued,
    PeerDown,
    PeerUp,
)
from clusterip.core.fingerprint import canonical
from clusterip.core.handover import Handover
from clusterip.core.kept import Announcer, Flow, KeptBook
from clusterip.core.membership import Membership
from clusterip.core.ownership import Ownership
from clusterip.core.params import Cluster, Params
from clusterip.core.wire import Config, Kept, NodeState

CONFIG_EVERY = 2.0  # a node says what its fingerprint covers this often (and at start)

FlowReport = tuple[float, Sequence[Flow]]  # (taken at, this node's flows to the VIP)


@dataclass(frozen=True)
class Adoption:
    """What a predecessor left in the kernel (planned restart), for its successor."""

    ownership: Ownership
    previous: int  # the predecessor's incarnation


@dataclass(frozen=True)
class Step:
    """What `step` decided: apply `ownership`, then send `datagrams`; log `events`."""

    ownership: Ownership
    datagrams: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    changed: bool = False  # ownership differs from the previous step's


class VipNode:
    def __init__(
        self,
        cfg: VipConfig,
        *,
        node_id: int,
        weight: int,
        key: bytes,
        params: Params,
        incarnation: int,
        now: float,
        drain_timeout: float = defaults.DRAIN_TIMEOUT,
        adopted: Adoption | None = None,
        keep_flows: bool = True,
    ) -> None:
        self.cfg = cfg
        self.params = params
        self.cluster = Cluster.create(cfg, key, buckets=params.buckets)
        self.drain_timeout = drain_timeout
        self.membership = Membership(
            node_id=node_id,
            weight=weight,
            incarnation=incarnation,
            cluster=self.cluster,
            now=now,
            params=params,
            adopted=adopted.ownership.owned if adopted is not None else None,
            previous=adopted.previous if adopted is not None else 0,
        )
        self.handover = Handover(
            node_id, params.buckets, drain_timeout + params.dead_after, drain=keep_flows
        )
        self.kept = KeptBook()
        if adopted is not None:
            self.handover.adopt(adopted.ownership, now)
            self.kept.adopt(adopted.ownership.kept, now)
        self.announcer = Announcer(self.cluster)
        self._flows: FlowReport | None = None
        self._kept_now: frozenset[tuple[str, int]] = frozenset()
        self._own = Ownership(params.buckets)
        self._dirty = True
        self._next = now
        self._config_due = now
        self.failovers: list[dict[str, Any]] = []  # recent takeovers from dead nodes
        self.wants_flows_now = False  # a fresh count is needed (a drain just began)
        self._flows_wanted_at = now
        self._announce_now = False

    @property
    def vip(self) -> str:
        return str(self.cfg.vip)

    @property
    def node_id(self) -> int:
        return self.membership.node_id

    @property
    def wants_flows(self) -> bool:
        """Whether the caller should count this node's flows (some bucket drains)."""
        return bool(self.handover.draining)

    # ----- inputs -------------------------------------------------------------------------

    def receive(self, data: bytes, source: str, now: float) -> None:
        msg = self.membership.receive(data, source, now)
        if isinstance(msg, Kept):
            whole = self.kept.take(msg, now)
            if whole is not None:
                self.membership.kept_known(msg.node_id, whole)
            self._dirty = True

    def set_carrier(self, up: bool, now: float) -> None:
        self.membership.set_carrier(up, now)

    def set_weight(self, weight: int) -> None:
        self.membership.set_weight(weight)

    def drain(self, on: bool, timeout: float | None = None) -> None:
        self.membership.drain(on)
        self.drain_timeout = timeout if on and timeout is not None else self.drain_timeout
        self._dirty = True

    def force_quorum(self) -> None:
        self.membership.force_quorum()

    # ----- outputs ------------------------------------------------------------------------

    def step(self, now: float, flows: FlowReport | None = None) -> Step:
        """Advance to `now` with the latest flow count; see the module doc."""
        if flows is not None and flows is not self._flows:
            self._flows = flows
            self._dirty = True
            self.wants_flows_now = False
        m = self.membership
        events = m.tick(now)
        for event in events:
            self._on_event(event, now)
        out: list[bytes] = []
        held_back = self.wants_flows_now and now < self._flows_wanted_at + self.params.interval
        if self.wants_flows_now and not held_back:
            self.wants_flows_now = False  # no count came: announce what we have
        key = self.cluster.key
        if events or self._dirty or now >= self._next:
            self._dirty = False
            kept = self.kept.current(now)
            unannounced = bool(m.draining_peers() - self.kept.announcers())
            counts = self._counts()
            own = self.handover.ownership(
                m.owned_buckets(),
                now,
                counts,
                self.drain_timeout,
                kept=kept,
                others_draining=m.peers_draining(),
                unannounced=unannounced,
            )
            changed = own != self._own
            self._own = own
            self._next = self._deadline(now)
        else:
            changed = False
        if held_back:
            # A drain began: the flows we keep are announced, from a fresh count, before the
            # heartbeat that lets the new owners take the buckets. The caller counts and calls
            # again at once (if it cannot within an interval, the heartbeat goes anyway).
            return Step(self._own, out, events, changed)
        draining = frozenset(self.handover.draining)
        if self._announce_now or self.announcer.due(now, bool(draining)):
            self._announce_now = False
            mine = self._flows[1] if self._flows is not None else ()
            msgs = self.announcer.messages(mine, draining, now, m.header_fields)
            out += [msg.pack(key) for msg in msgs]
        if now >= self._config_due:
            self._config_due = now + CONFIG_EVERY
            fields = canonical(self.cluster.fields)
            out.append(Config(**m.header_fields(), fields=fields).pack(key))
        if m.due(now):
            hb = m.heartbeat(now, draining=bool(draining), kept=self.announcer.announcement)
            out.append(hb.pack(key))
        return Step(self._own, out, events, changed)

    def _counts(self) -> tuple[float, dict[int, int]] | None:
        if self._flows is None:
            return None
        taken, flows = self._flows
        return taken, dict(Counter(b for _a, _p, b in flows))

    def _deadline(self, now: float) -> float:
        times = self.handover.deadlines(now, self.drain_timeout)
        expiry = self.kept.deadline()
        if expiry is not None:
            times.append(expiry)
        return min(times, default=float("inf"))

    def next_deadline(self, now: float) -> float:
        """When `step` next has something to do, with no input before then."""
        times = [self.membership.next_deadline(now), self._config_due]
        if self._dirty or self.wants_flows_now:
            return now
        times.append(self._next)
        due = self.announcer.next_due(bool(self.handover.draining))
        if due is not None or self.announcer.announced:
            times.append(due if due is not None else now)
        return min(times)

    def _on_event(self, event: Event, now: float) -> None:
        m = self.membership
        self._dirty = True
        if isinstance(event, OwnershipChanged):
            fresh = self.handover.changed(event, now)
            if fresh:
                self.failovers = [*self.failovers[-19:], {"at": now, "buckets": len(fresh)}]
            if any(owner is not None for owner in event.lost.values()) and event.drain:
                self.wants_flows_now = True  # announce what we keep with a fresh count
                self._flows_wanted_at = now
                self._announce_now = True
        elif isinstance(event, PeerUp):
            self.handover.peer_up(event.node_id, event.incarnation, now)
        elif isinstance(event, PeerContinued):
            self.handover.continued(event.node_id, event.old, event.new)
        elif isinstance(event, PeerDown):
            self.handover.peer_down(event.node_id, event.incarnation, now, m.owned_buckets())
            # A dead node keeps nothing: its flows are orphans, forgotten when their RST is due
            # (a node declared dead by a stalled machine is back before then, still serving
            # its kept UDP flows: they must not be answered here too meanwhile).
            self.kept.forget(event.node_id, at=now + defaults.ORPHAN_RESET_DELAY)

    # ----- the planned ways out -----------------------------------------------------------

    def leave(self, now: float, repeat: int = defaults.LEAVE_REPEAT) -> Step:
        """Graceful leave: release everything (apply the returned ownership first), then send
        the LEAVE datagrams."""
        events, msg = self.membership.leave(now)
        for event in events:
            self._on_event(event, now)
        out = [msg.pack(self.cluster.key)]
        for _ in range(repeat - 1):  # a lost LEAVE only costs a timeout; each has its own seq
            out.append(self.membership.leave(now)[1].pack(self.cluster.key))
        self._own = Ownership(self.params.buckets)
        return Step(self._own, out, events, True)

    def suspend(self, now: float, grace: float, repeat: int = defaults.LEAVE_REPEAT) -> list[bytes]:
        """A planned stop: the datapath stays as it is for `grace` (the caller arms it); the
        peers learn that a successor will continue this node."""
        return [self.membership.suspend(now, grace).pack(self.cluster.key) for _ in range(repeat)]

    # ----- report -------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """What `clusterip status` shows of this VIP (pure; the caller adds kernel counters)."""
        from clusterip.core.holdings import claims

        m = self.membership
        v = m.view(now)
        members = dict(v.assigned_to)
        share = {n: len(claims(members, self.params.buckets, n)) for n in members}
        cfg = self.cfg
        own = self._own
        return {
            "vip": self.vip,
            "interface": cfg.interface,
            "clustermac": cfg.clustermac,
            "mac_mode": cfg.mac_mode,
            "group": str(cfg.mac_plan.group) if cfg.mac_plan.group is not None else None,
            "hashmode": cfg.hashmode,
            "protocol": cfg.protocol,
            "dports": list(cfg.dports),
            "seed": f"0x{cfg.seed:08x}",
            "mode": "agent",
            "buckets": self.params.buckets,
            "node_id": m.node_id,
            "incarnation": m.incarnation,
            "state": v.state.name.lower(),
            "reason": v.reason,
            "weight": m.weight,
            "draining_all": v.state == NodeState.DRAINING,
            "owned_count": len(own.owned),
            "owned": sorted(own.owned),
            "draining": sorted(own.draining),
            "guarded": sorted(own.guarded),
            "guard_until": self._guard_until(now),
            "orphaned": len(self.handover.orphaned),
            "kept_by_others": len(own.kept),
            "quorum_base": sorted(v.base),
            "carrier": v.carrier,
            "members": [
                {
                    "id": mi.node_id,
                    "address": mi.address,
                    "via": mi.via,
                    "state": mi.state.name.lower(),
                    "weight": mi.weight,
                    "buckets": share.get(mi.node_id, 0),
                    "last_heard_ms": round((now - mi.last_heard) * 1000),
                    "counted": mi.counted,
                }
                for mi in v.members
            ],
            "share": {str(n): c for n, c in sorted(share.items())},
            "view": {str(n): w for n, w in sorted(members.items())},
            "refused": [
                {
                    "address": r.address,
                    "node_id": r.node_id,
                    "cause": r.cause,
                    "detail": r.detail,
                    "count": r.count,
                }
                for r in v.refused
            ],
            "rejected": dict(v.rejected),
            "failovers": list(self.failovers),
        }

    def summary(self) -> dict[str, Any]:
        """The figures metrics export every second, without building the whole status."""
        m = self.membership
        return {
            "owned_count": len(self._own.owned),
            "draining_count": len(self._own.draining),
            "members": m.member_count,
            "state": m.state.name.lower(),
            "rejected": m.stats.as_dict(),
        }

    def _guard_until(self, now: float) -> float | None:
        """The latest time a guard window may end (None: no bucket guarded), relative to now
        (seconds from now), for status."""
        from clusterip.core.handover import GUARD_TIME

        if not self.handover.guarded:
            return None
        end = max(self.handover.guarded.values()) + GUARD_TIME
        return round(max(0.0, end - now), 3)
