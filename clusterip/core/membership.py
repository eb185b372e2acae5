"""Membership of one VIP's agent cluster: a pure state machine, the clock passed in as `now`.

Inputs: datagrams (`receive`), time (`tick`), the interface's carrier (`set_carrier`) and the
operator's commands. Outputs: the heartbeat to send (`heartbeat`, when `due`), events
(`tick`), the buckets held (`owned_buckets`) and a report (`view`).

Rules (the why is in the docs of each piece):
- A peer heard directly is *alive* while its heartbeats keep coming: dead `interval x
  tolerance` after the last one (its own interval, our tolerance). Defaults 50 ms x 5 = 250 ms.
- A direct peer is *counted* (buckets are assigned to it) when it is alive, active, has a
  positive weight and its latest heartbeat acks our current incarnation (it hears us, and its
  traffic is not a recording made before we started). A node we cannot hear but a counted
  peer can (one-way loss) is counted too, from that peer's heartbeat, which lists whom it
  hears with their weight, state and age: every node that hears any member then builds the
  same view, and nobody takes the buckets of a node that is alive.
- A peer that announced a planned restart (RESTART) keeps its buckets and its place until its
  grace ends; its successor (same node id, its HELLO names the old incarnation) continues it.
- This node takes buckets only when active: after a listen period (one detection time), with
  quorum (quorum.py: a node cut off from the majority of its last known members gives up its
  share and waits to be heard again), and not passive (refusals.py: only a new node ever holds
  back because of messages it cannot accept, and only for a bounded time).
- Ownership (holdings.py): `assign()` over the counted members; release at once, take once no
  peer we hear claims the bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from clusterip.core import defaults
from clusterip.core.events import (
    Event,
    Level,
    MemberInfo,
    Notice,
    PeerContinued,
    PeerDown,
    PeerUp,
    StateChanged,
    View,
)
from clusterip.core.fingerprint import differences, view_digest
from clusterip.core.holdings import Holdings, PeerStatus, claims
from clusterip.core.params import Cluster, Params
from clusterip.core.quorum import Quorum
from clusterip.core.refusals import Refusals
from clusterip.core.replay import Freshness, ReplayGuard
from clusterip.core.wire import (
    FLAG_DRAINING,
    MAX_NODE_ID,
    Ack,
    BadMac,
    DuplicateNodeId,
    ForeignFingerprint,
    Heartbeat,
    Hello,
    Leave,
    Malformed,
    Message,
    MsgType,
    NodeState,
    Rejected,
    Restart,
    authenticate,
    config_fields,
    decode,
    peek,
)

EARLY_GAP = defaults.EARLY_GAP
AGE_MAX_MS = 0xFFFF


@dataclass
class _Peer:
    node_id: int
    incarnation: int
    address: str
    state: NodeState
    weight: int
    interval: float
    dead_after: float
    last_heard: float
    verified: bool = False  # this incarnation acked ours at least once
    acks_us: bool = False  # its latest heartbeat acks ours
    our_age: float = 0.0  # how long ago it last heard us, as its latest heartbeat says
    draining: bool = False  # it keeps flows of buckets it handed over
    members: tuple[tuple[int, int], ...] = ()
    relays: tuple[Ack, ...] = ()  # whom it counts by direct contact
    relayed_at: float = 0.0  # when those relays were received
    raw: bytes = b""  # header fields and body of its latest heartbeat: the fast path
    restart_until: float | None = None  # announced a planned restart: kept until then
    continuing: bool = False  # a successor that has not acked us yet
    kept_place: bool = False  # counted when it announced its restart
    kept_said: int = 0  # the latest KEPT announcement its heartbeat names
    kept_known: int = 0  # the latest we have whole

    def fresh(self, now: float) -> bool:
        if self.restart_until is not None:
            return now < self.restart_until
        return now < self.last_heard + self.dead_after


class Membership:
    """One node's view of one VIP's agent cluster. Call `tick(now)` after every input."""

    def __init__(
        self,
        *,
        node_id: int,
        weight: int,
        incarnation: int,
        cluster: Cluster,
        now: float,
        params: Params | None = None,
        adopted: frozenset[int] | None = None,
        previous: int = 0,
    ) -> None:
        if not 1 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id {node_id} not in 1..{MAX_NODE_ID}")
        if not 0 <= weight <= 0xFFFF:
            raise ValueError(f"weight {weight} not in 0..65535")
        self.node_id = node_id
        self.incarnation = incarnation
        self.cluster = cluster
        self.params = params or Params()
        p = self.params
        self._weight = weight
        self._started = now
        self._previous = previous if adopted is not None else 0
        self._resuming = adopted is not None  # holding the predecessor's buckets as they were
        self._continues = adopted is not None  # a successor: no listen period
        self._guard = ReplayGuard(forget_after=p.forget_after)
        self._refusals = Refusals(
            dead_after=p.dead_after,
            tolerance=p.tolerance,
            log_every=p.log_every,
            key_id=cluster.key_id,
        )
        self.stats = self._refusals.stats
        self._quorum = Quorum(node_id, settle=p.dead_after)
        self._peers: dict[int, _Peer] = {}
        self._relayed: dict[int, tuple[int, int, int, float]] = {}  # -> inc, weight, via, heard
        self._gone: dict[int, int] = {}  # node -> incarnation that left or timed out
        self._alive: dict[int, int] = {}  # node -> incarnation: heard directly or relayed
        self._silent: dict[int, str] = {}  # expired here, maybe still relayed: why
        self._events: list[Event] = []
        self._seq = 0
        self._hello_sent = False
        self._last_sent: float | None = None
        self._send_soon = False
        self._leaving = False
        self._suspended = False
        self._draining = False
        self._served = False
        self._state = NodeState.STARTING
        self._reason = "starting"
        self._assigned: dict[int, int] = {}
        self._incs: dict[int, int] = {}
        self._digest = view_digest({})
        self._holdings = Holdings(node_id, p.buckets, p.handoff_time)
        if adopted is not None:
            self._holdings.adopt(adopted)
            self._state, self._reason = NodeState.RESTARTING, "continuing its predecessor"
            self._served = True
        self._others: dict[int, int] = {}  # counted members but us: node id -> weight
        self._hold_until: float | None = None
        self._next_expiry = math.inf
        self._dirty = True
        self._next_check = now

    # ----- inputs -------------------------------------------------------------------------

    def receive(self, data: bytes, src: str, now: float) -> Message | None:
        """A datagram from the cluster interface: authenticate, check, take it in. Returns the
        authenticated message (KEPT is for the caller) or None if it was refused or ignored."""
        try:
            header = peek(data)
        except Malformed as exc:
            self._refuse(exc, src, now)
            return None
        if header.vip != self.cluster.vip:
            return None  # another VIP's cluster on the same group: not for us, not an error
        if header.type == MsgType.CONFIG and header.fingerprint != self.cluster.fingerprint:
            self._config(data, src, header.node_id)
            return None
        try:
            authenticate(data, self.cluster.key, header)
        except BadMac as exc:
            self._refuse(exc, src, now)
            return None
        if header.fingerprint != self.cluster.fingerprint:
            ours = self.cluster.fingerprint.hex()
            why = f"cluster fingerprint {header.fingerprint.hex()}, ours {ours}"
            self._refuse(ForeignFingerprint(why, header), src, now)
            return None
        if header.node_id == self.node_id:
            if header.incarnation != self.incarnation:
                self._same_id(header.incarnation, src, header.interval_ms, now)
            return None
        try:
            fresh = self._guard.admit(header.node_id, header.incarnation, header.seq, now)
        except Rejected as exc:
            exc.header = header
            self._refuse(exc, src, now)
            return None
        peer = self._peers.get(header.node_id)
        if (
            peer is not None
            and header.type == MsgType.HEARTBEAT
            and fresh is Freshness.NEXT
            and peer.incarnation == header.incarnation
            and peer.restart_until is None
            and data[6 : 6 + 8] + data[64:-32] == peer.raw  # state, flags, ids..., and body
        ):
            peer.last_heard, peer.address = now, src  # nothing new: the common case
            if peer.relays:
                peer.relayed_at = now
            return None
        try:
            msg = decode(header, data)
        except Malformed as exc:
            self._refuse(exc, src, now)
            return None
        if fresh is not Freshness.LATE:
            self._take(msg, src, now, data[6:14] + data[64:-32])
        return msg

    def _take(self, msg: Message, src: str, now: float, raw: bytes) -> None:
        peer = self._peers.get(msg.node_id)
        if isinstance(msg, Leave):
            if peer is not None and peer.incarnation == msg.incarnation:
                self._drop(peer, "leave")
            self._quorum.left(msg.node_id)
            return
        if isinstance(msg, Restart):
            if peer is not None and peer.incarnation == msg.incarnation:
                peer.kept_place = peer.node_id in self._assigned
                peer.state = NodeState.RESTARTING
                peer.restart_until = now + msg.grace_ms / 1000 + peer.dead_after
                self._dirty = True
            return
        if not isinstance(msg, Heartbeat):
            return
        if peer is not None and peer.incarnation != msg.incarnation:
            if (
                msg.incarnation > peer.incarnation
                and msg.previous == peer.incarnation
                and peer.restart_until is not None
            ):
                self._events.append(PeerContinued(peer.node_id, peer.incarnation, msg.incarnation))
                self._holdings.continued(peer.node_id, peer.incarnation, msg.incarnation)
                self._incs[peer.node_id] = msg.incarnation
                if peer.node_id in self._alive:
                    self._alive[peer.node_id] = msg.incarnation  # the same node, continued
                peer.incarnation, peer.verified, peer.continuing = msg.incarnation, False, True
                peer.restart_until = None
            else:
                self._drop(peer, "restarted")
                peer = None
        acks_us = msg.acked(self.node_id) == self.incarnation
        our_age = next((a.age_ms for a in msg.acks if a.node_id == self.node_id), 0) / 1000
        dead_after = msg.interval_ms / 1000 * self.params.tolerance
        relays = tuple(a for a in msg.acks if a.member)
        if peer is None:
            peer = _Peer(
                msg.node_id,
                msg.incarnation,
                src,
                msg.state,
                msg.weight,
                msg.interval_ms / 1000,
                dead_after,
                now,
            )
            self._peers[msg.node_id] = peer
            self._gone.pop(msg.node_id, None)
            self._events.append(PeerUp(msg.node_id, msg.incarnation, src))
        peer.state, peer.weight, peer.address, peer.last_heard = msg.state, msg.weight, src, now
        peer.interval, peer.dead_after = msg.interval_ms / 1000, dead_after
        peer.acks_us, peer.verified = acks_us, peer.verified or acks_us
        peer.our_age = our_age
        if acks_us:
            peer.continuing = False
        peer.draining = bool(msg.flags & FLAG_DRAINING)
        peer.kept_said = msg.kept
        peer.members, peer.relays, peer.relayed_at, peer.raw = msg.members, relays, now, raw
        self._dirty = True
        if isinstance(msg, Hello):
            self._send_soon = True  # answer at once, so that it learns about us quickly

    def _drop(self, peer: _Peer, reason: str) -> None:
        del self._peers[peer.node_id]
        self._dirty = True
        if reason in ("leave", "restarted"):  # what others still relay of it is stale
            self._gone[peer.node_id] = peer.incarnation
            self._alive.pop(peer.node_id, None)
            self._events.append(PeerDown(peer.node_id, peer.incarnation, reason))
        else:
            # Silent here: it is dead only once nobody relays it either (see _mourn).
            self._silent[peer.node_id] = reason

    def _mourn(self, now: float) -> None:
        """PeerDown for every node that was alive (heard directly or relayed) and is not any
        more: a node we stop hearing while a peer still hears it (one-way loss) is alive."""
        alive = {n: p.incarnation for n, p in self._peers.items() if p.fresh(now)}
        for n, (inc, _w, _via, _h) in self._relayed.items():
            alive.setdefault(n, inc)
        for n, inc in self._alive.items():
            if alive.get(n) != inc:
                why = self._silent.get(n, "timeout")
                self._events.append(PeerDown(n, inc, why))
        self._silent = {n: r for n, r in self._silent.items() if n not in alive}
        self._alive = alive

    def kept_known(self, node: int, announcement: int) -> None:
        """A peer's KEPT announcement has arrived whole (from the caller's KeptBook)."""
        peer = self._peers.get(node)
        if peer is not None and announcement > peer.kept_known:
            peer.kept_known = announcement
            self._dirty = True

    def set_carrier(self, up: bool, now: float) -> None:
        """The cluster interface gained or lost carrier (from the reactor's link watch)."""
        if up != self._quorum.carrier:
            self._quorum.set_carrier(up)
            self._dirty = True

    def set_weight(self, weight: int) -> None:
        """A new share for this node (0: own nothing); peers learn it from the next heartbeat."""
        if not 0 <= weight <= 0xFFFF:
            raise ValueError(f"weight {weight} not in 0..65535")
        if weight != self._weight:
            self._weight = weight
            self._dirty = True
            self._send_soon = True

    def drain(self, on: bool) -> None:
        """Draining: stay alive and heard, but own no bucket (weight 0 for the assignment)."""
        if on != self._draining:
            self._draining = on
            self._dirty = True

    def force_quorum(self) -> None:
        """The operator says the members this node cannot reach are gone for good."""
        self._quorum.force(self._reachable())
        self._dirty = True

    def leave(self, now: float) -> tuple[list[Event], Leave]:
        """Graceful leave: the events that release every bucket (apply them first), then the
        LEAVE to send. Calling it again gives another LEAVE (next sequence) to resend."""
        self._leaving = True
        self._dirty = True
        events = self.tick(now)
        msg = Leave(**self.header_fields(), state=NodeState.LEAVING)
        self._last_sent = now
        return events, msg

    def suspend(self, now: float, grace: float) -> Restart:
        """A planned stop: nothing is released (the node serves on for `grace` seconds, by
        itself); peers keep our place for a successor. Call again to resend."""
        self._suspended = True
        self._last_sent = now
        return Restart(**self.header_fields(), grace_ms=round(grace * 1000))

    def next_seq(self) -> int:
        """The next sequence number of this incarnation (every message type shares them)."""
        self._seq += 1
        return self._seq

    def header_fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "vip": self.cluster.vip,
            "fingerprint": self.cluster.fingerprint,
            "key_id": self.cluster.key_id,
            "incarnation": self.incarnation,
            "seq": self.next_seq(),
            "weight": self._weight,
            "interval_ms": self.params.interval_ms,
        }

    # ----- outputs ------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Whether a heartbeat should go out now."""
        last = self._last_sent
        if last is None or now >= last + self.params.interval:
            return True
        return self._send_soon and now >= last + self.params.interval * EARLY_GAP

    def _next_send(self) -> float:
        assert self._last_sent is not None
        gap = EARLY_GAP if self._send_soon else 1.0
        return self._last_sent + self.params.interval * gap

    def heartbeat(self, now: float, *, draining: bool = False, kept: int = 0) -> Heartbeat:
        """The next heartbeat (a HELLO the first time). Call `tick(now)` and apply its events
        first: the heartbeat announces the view whose releases must already be done.
        `draining`: this node keeps flows of buckets it handed over."""
        cls = Heartbeat if self._hello_sent else Hello
        unit = max(1, round(self.params.interval * 2000))  # ages in steps of two intervals
        acks = tuple(
            Ack(
                p.node_id,
                p.incarnation,
                p.weight,
                p.state,
                p.node_id in self._assigned and p.acks_us,
                min(AGE_MAX_MS, int((now - p.last_heard) * 1000) // unit * unit),
            )
            for _, p in sorted(self._peers.items())
            if p.restart_until is None
        )
        msg = cls(
            **self.header_fields(),
            state=self._state,
            flags=FLAG_DRAINING if draining else 0,
            view_digest=self._digest,
            previous=self._previous,
            kept=kept,
            members=tuple(sorted(self._assigned.items())),
            acks=acks,
        )
        self._hello_sent = True
        self._last_sent = now
        self._send_soon = False
        return msg

    def next_deadline(self, now: float) -> float:
        """When `tick` or `heartbeat` next has something to do (for the I/O loop's sleep)."""
        if self._dirty or self.due(now):
            return now
        return min(self._next_check, self._next_send())

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def weight(self) -> int:
        return self._weight

    def owned_buckets(self) -> frozenset[int]:
        """Buckets (1-based) this node accepts new connections for (as of the last `tick`)."""
        return self._holdings.held

    def peers_draining(self) -> bool:
        """Whether a live peer keeps flows of buckets it handed over."""
        return any(p.draining for p in self._peers.values())

    def draining_peers(self) -> frozenset[int]:
        """The live peers that keep flows of buckets they handed over."""
        return frozenset(n for n, p in self._peers.items() if p.draining)

    def view(self, now: float) -> View:
        members = [
            MemberInfo(
                node_id=p.node_id,
                incarnation=p.incarnation,
                address=p.address,
                state=p.state,
                weight=p.weight,
                last_heard=p.last_heard,
                acks_us=p.acks_us,
                counted=p.node_id in self._assigned,
            )
            for _, p in sorted(self._peers.items())
        ]
        members += [
            MemberInfo(n, inc, "", NodeState.ACTIVE, w, heard, False, n in self._assigned, via)
            for n, (inc, w, via, heard) in sorted(self._relayed.items())
        ]
        return View(
            node_id=self.node_id,
            incarnation=self.incarnation,
            state=self._state,
            reason=self._reason,
            members=tuple(members),
            refused=self._refusals.report(),
            assigned_to=dict(self._assigned),
            view_digest=self._digest,
            owned=self._holdings.held,
            pending=self._holdings.pending,
            rejected=self.stats.as_dict(),
            base=self._quorum.base,
            carrier=self._quorum.carrier,
        )

    # ----- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Advance to `now`: expire peers, update state, view and buckets; return the events
        since the last call (cheap when nothing changed and no deadline passed)."""
        if self._dirty or now >= self._next_check:
            self._dirty = False
            self._expire(now)
            self._relay(now)
            self._mourn(now)
            self._update_state(now)
            self._update_view(now)
            self._update_holdings(now)
            self._next_check = self._earliest_deadline(now)
        events, self._events = self._events, []
        return events

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return  # heartbeats only push expiries later: nobody can be due yet
        for peer in list(self._peers.values()):
            if not peer.fresh(now):
                why = "restart timed out" if peer.restart_until is not None else "timeout"
                self._drop(peer, why)

    def _counted(self, p: _Peer, now: float) -> bool:
        if not p.fresh(now):
            return False
        if p.restart_until is not None:
            return p.kept_place
        if p.continuing:
            return p.weight > 0 and p.state in (NodeState.ACTIVE, NodeState.RESTARTING)
        return p.verified and p.acks_us and p.state == NodeState.ACTIVE and p.weight > 0

    def _relay(self, now: float) -> None:
        """Nodes we cannot hear that counted peers hear (one-way loss): inc, weight, via."""
        relayed: dict[int, tuple[int, int, int, float]] = {}
        margin = 2 * self.params.interval  # ages come in steps of two intervals
        dead_after = self.params.dead_after
        for p in self._peers.values():
            if not p.relays or not self._counted(p, now):
                continue
            for a in p.relays:
                n = a.node_id
                if n == self.node_id or a.state != NodeState.ACTIVE or a.weight == 0:
                    continue
                direct = self._peers.get(n)
                if direct is not None and (direct.acks_us or direct.state != NodeState.ACTIVE):
                    continue  # what we hear ourselves is fresher
                if self._gone.get(n) == a.incarnation:
                    continue
                heard = p.relayed_at - a.age_ms / 1000 - margin
                if now >= heard + dead_after:
                    continue
                best = relayed.get(n)
                if best is None or (a.incarnation, heard) > (best[0], best[3]):
                    relayed[n] = (a.incarnation, a.weight, p.node_id, heard)
        self._relayed = relayed

    def _reachable(self) -> frozenset[int]:
        # Quorum is about who we reach, not who serves: cut-off peers that hear us again count,
        # or nodes isolated together (every group of a partition a minority) never recover.
        return frozenset({self.node_id, *self._others, *self._cut_off()})

    def _cut_off(self) -> frozenset[int]:
        """Isolated peers that hear us: reachable, but not serving (yet)."""
        return frozenset(
            n
            for n, p in self._peers.items()
            if p.state == NodeState.ISOLATED and p.verified and p.acks_us and p.weight > 0
        )

    def _update_state(self, now: float) -> None:
        self._others = {n: p.weight for n, p in self._peers.items() if self._counted(p, now)}
        for n, (_inc, w, _via, _h) in self._relayed.items():
            self._others.setdefault(n, w)
        has_valid_peer = any(p.verified and p.acks_us for p in self._peers.values())
        listen_end = self._started + self.params.listen_time
        passive = self._refusals.passive_reason(
            now,
            has_valid_peer=has_valid_peer,
            served=self._served,
            wait_until=listen_end + defaults.FOREIGN_WAIT,
            incarnation=self.incarnation,
        )
        reach = self._reachable()
        quorum = self._quorum.judge(reach, now) and not self._losing_quorum(now)
        if quorum:
            self._quorum.isolated_since = None
        elif self._quorum.give_up_waiting(reach, now, self.params.isolation_limit):
            quorum = True
            self._notice(
                "isolation_limit",
                now,
                f"cut off for {self.params.isolation_limit:g} s with carrier: the members it "
                "cannot reach are taken to be gone; serving with those it reaches",
            )
        if self._resuming and (has_valid_peer or now >= listen_end):
            self._resuming = False
        if self._leaving:
            state, why = NodeState.LEAVING, "leaving"
        elif self._suspended:
            state, why = NodeState.RESTARTING, "handing over to a successor"
        elif passive is not None:
            state, why = NodeState.PASSIVE, passive
        elif not quorum:
            state, why = NodeState.ISOLATED, self._isolation_reason()
        elif self._resuming:
            state, why = NodeState.RESTARTING, "continuing its predecessor"
        elif now < listen_end and not self._continues:
            state, why = NodeState.STARTING, "listening for peers before taking buckets"
        elif self._draining or self._weight == 0:
            state, why = NodeState.DRAINING, "draining: owns no bucket"
        else:
            state, why = NodeState.ACTIVE, "active"
        if state == NodeState.ACTIVE:
            self._served = True
        if state != self._state:
            self._events.append(StateChanged(self._state, state, why))
            level: Level = "warning" if state in (NodeState.PASSIVE, NodeState.ISOLATED) else "info"
            self._events.append(
                Notice(level, "state", f"{self._state.name.lower()} -> {state.name.lower()}: {why}")
            )
            self._send_soon = True
        self._state, self._reason = state, why

    def _losing_quorum(self, now: float) -> bool:
        """Counted peers that have been silent for a detection time less two intervals would,
        lost, cost quorum: this node is on the cut-off side, and gives up its share before
        the majority takes it over (at the full detection time)."""
        quiet_since = now - (self.params.dead_after - 2 * self.params.interval)
        quiet = {
            n
            for n, p in self._peers.items()
            if n in self._others and p.restart_until is None and p.last_heard <= quiet_since
        }
        if not quiet:
            return False
        relayed_by_quiet = {n for n, (_i, _w, via, _h) in self._relayed.items() if via in quiet}
        return not self._quorum.judge_only(self._reachable() - quiet - relayed_by_quiet)

    def _isolation_reason(self) -> str:
        if not self._quorum.carrier:
            return "the cluster interface has no carrier: owns nothing until it is back"
        base = ", ".join(str(n) for n in sorted(self._quorum.base))
        reach = ", ".join(str(n) for n in sorted(self._reachable()))
        return (
            f"reaches only node(s) {reach} of the last known members {base}: cut off from the "
            "majority, owns nothing until heard again (or `clusterip resume --force`)"
        )

    def _update_view(self, now: float) -> None:
        assigned = dict(self._others)
        if self._state in (NodeState.ACTIVE, NodeState.RESTARTING):
            assigned[self.node_id] = self._weight
        if assigned == self._assigned or self._resuming or self._suspended:
            self._hold_until = None
            return
        if self.node_id in assigned:  # gather changes; releasing everything never waits
            if self._hold_until is None:
                self._hold_until = now + self.params.hold_time
            if now < self._hold_until:
                return
            late = now - 2 * self.params.interval
            suspects = [n for n, p in self._peers.items() if n in assigned and p.last_heard < late]
            lost = set(self._assigned) - set(assigned)
            if lost and self._quorum.must_wait(self._reachable(), suspects):
                return  # others may be about to go too: if so, we are the one cut off
            back = self.node_id not in self._assigned and self._cut_off()
            if back and now < self._hold_until + self.params.dead_after:
                # Back from isolation with peers that were cut off too: they turn active in a
                # moment; wait for them, so that all of us take buckets in one view.
                return
        self._hold_until = None
        previous_incs = self._incs
        self._assigned = assigned
        self._incs = {n: self._incarnation_of(n) for n in assigned if n != self.node_id}
        self._digest = view_digest(assigned)
        self._holdings.reassign(assigned, previous_incs, now)
        self._send_soon = True  # peers waiting for our release hear about it at once

    def _incarnation_of(self, node: int) -> int:
        peer = self._peers.get(node)
        if peer is not None:
            return peer.incarnation
        relayed = self._relayed.get(node)
        return relayed[0] if relayed is not None else -1

    def _losing_us(self, p: _Peer) -> bool:
        return (
            p.acks_us
            and p.our_age >= 2 * self.params.interval
            and {n for n, _w in p.members} == {p.node_id, self.node_id}
        )

    def _update_holdings(self, now: float) -> None:
        buckets = self.params.buckets
        # A peer that has not acked us yet (it just heard us again) is no recording when a
        # counted peer relays it with the same incarnation: what it claims is held now.
        vouched = {n: r[0] for n, r in self._relayed.items()}  # node -> relayed incarnation
        peers = {}
        for n, p in self._peers.items():
            if not p.fresh(now):
                continue
            members = dict(p.members) if p.state == NodeState.ACTIVE else {}
            hears_us = p.acks_us
            if members and self._losing_us(p):
                # A two-node view whose other node has not heard us for two intervals: it is
                # about to take our buckets (nobody can tell it we live): step back first.
                members.pop(self.node_id)
                hears_us = False
            peers[n] = PeerStatus(
                p.incarnation,
                claims(members, buckets, n) if members else frozenset(),
                hears_us,
                p.verified or vouched.get(n) == p.incarnation,
                tuple(sorted(members.items())),
            )
        alive = {n: p.incarnation for n, p in self._peers.items() if p.fresh(now)}
        for n, (inc, _w, _via, _h) in self._relayed.items():
            alive.setdefault(n, inc)
        unsure = frozenset(
            n for n, p in self._peers.items() if p.draining and p.kept_known < p.kept_said
        )
        settled = self._holdings.settle(now, peers, alive, unsure)
        if settled.change is not None:
            drain = self._state in (NodeState.ACTIVE, NodeState.DRAINING)
            self._events.append(replace(settled.change, drain=drain))
        for node, count in sorted(settled.overdue.items()):
            self._notice(
                "handoff_wait",
                now,
                f"{count} bucket(s) wait for node {node}, which still claims them after "
                f"{self.params.handoff_time} s",
            )

    def _earliest_deadline(self, now: float) -> float:
        expiries = [
            p.restart_until if p.restart_until is not None else p.last_heard + p.dead_after
            for p in self._peers.values()
        ]
        self._next_expiry = min(expiries, default=math.inf)
        times = list(expiries)
        times += [h + self.params.dead_after for _i, _w, _v, h in self._relayed.values()]
        # a counted peer turns into a suspect two intervals after its last heartbeat, and
        # counts as quiet two intervals before it would be dead
        quiet = self.params.dead_after - 2 * self.params.interval
        for p in self._peers.values():
            times += [p.last_heard + 2 * self.params.interval + 1e-6, p.last_heard + quiet + 1e-6]
        times += self._refusals.deadlines(now)
        times += self._holdings.deadlines()
        base_move = self._quorum.deadline()
        if base_move is not None:
            times.append(base_move)
        if self._quorum.isolated_since is not None:
            times.append(self._quorum.isolated_since + self.params.isolation_limit)
        listen_end = self._started + self.params.listen_time
        for t in (listen_end, listen_end + defaults.FOREIGN_WAIT):
            if now < t:
                times.append(t)
        if self._hold_until is not None:
            times += [self._hold_until, self._hold_until + self.params.dead_after]
        return min((t for t in times if t > now), default=math.inf)

    # ----- refusals -----------------------------------------------------------------------

    def _config(self, data: bytes, src: str, node_id: int) -> None:
        what = differences(config_fields(data), self.cluster.fields)
        if what:
            self._refusals.differs(src, node_id, what)

    def _same_id(self, incarnation: int, src: str, interval_ms: int, now: float) -> None:
        why = (
            f"node id {self.node_id} is also used by {src} (incarnation {incarnation}, "
            f"ours {self.incarnation})"
        )
        if incarnation > self.incarnation and incarnation != self._previous:
            why += ": that one is newer, so this node stays passive"
            self._refusals.duplicate(why, interval_ms, now)
            self._dirty = True
        else:
            why += ": ours is newer (or that is a replay of our previous run)"
        self._refuse(DuplicateNodeId(why), src, now, self.node_id)

    def _refuse(self, exc: Rejected, src: str, now: float, node_id: int | None = None) -> None:
        passive, notice = self._refusals.refuse(exc, src, now, node_id)
        if passive and not self._served:
            self._dirty = True  # a serving node is never silenced: nothing to recompute
        if notice is not None:
            self._events.append(notice)

    def _notice(self, cause: str, now: float, text: str) -> None:
        notice = self._refusals.notice(cause, now, text)
        if notice is not None:
            self._events.append(notice)
