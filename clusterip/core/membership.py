"""Membership of one VIP's agent cluster: a pure state machine, the clock passed in as `now`.

Inputs: datagrams (`receive`) and time (`tick`). Outputs: the heartbeat to send (`heartbeat`,
when `due`), events (`tick`), the buckets owned (`owned_buckets`) and a report (`view`).

Rules (the why is in docs of each piece):
- A peer is *alive* while its heartbeats keep coming: it is declared dead `interval x
  tolerance` after the last one (its own advertised interval, our tolerance). Defaults 50 ms x 4
  = 200 ms: three lost heartbeats or a 150 ms stall of the sender raise no alarm, and a dead
  node is detected 200 ms after its last heartbeat, under the 300 ms budget.
- A peer is *counted* (buckets are assigned to it) when it is alive, active, has a positive
  weight and its latest heartbeat acks our current incarnation (it hears us, and its traffic
  is not a recording made before we started).
- This node takes buckets only when active: after a listen period (default: one detection
  time, so a rebooting node first learns who holds what) and when not passive.
- Passive: it heard, recently, heartbeats for its VIP that it cannot authenticate or that carry
  another fingerprint, and no valid peer acks it; or another node with the same node id and a
  newer incarnation. It owns nothing and says why, so a misconfigured node never
  answers alongside the real members. Holds for one detection time after the last such message.
- Ownership (ownership.py): `assign()` over the counted members. Lost buckets are released at
  once. A gained bucket is taken as soon as no live peer can still hold it (its heartbeat
  shows our view, or a recent view of ours in which the bucket is not its own), or after
  `handoff_timeout`: release before acquire, so two nodes accept new connections for the same
  bucket only while their views disagree, and for at most that long. Gained buckets whose
  previous owner is gone are reported as orphaned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from clusterip.core import defaults
from clusterip.core.events import (
    Event,
    Level,
    MemberInfo,
    Notice,
    PeerDown,
    PeerUp,
    StateChanged,
    View,
)
from clusterip.core.fingerprint import view_digest
from clusterip.core.holdings import Holdings, PeerStatus
from clusterip.core.params import Cluster, Params
from clusterip.core.refusals import Refusals
from clusterip.core.replay import Freshness, ReplayGuard
from clusterip.core.wire import (
    MAX_NODE_ID,
    Ack,
    DuplicateNodeId,
    ForeignFingerprint,
    Heartbeat,
    Hello,
    Leave,
    Message,
    NodeState,
    Rejected,
    unpack,
)

Decoder = Callable[[bytes, bytes, bytes], Message]
"""(data, key, fingerprint) -> authenticated message, or raises Rejected: `wire.unpack`, or a
memoizing wrapper of it when many simulated nodes receive the same datagram."""

EARLY_GAP = defaults.EARLY_GAP


def _unpack(data: bytes, key: bytes, fingerprint: bytes) -> Message:
    return unpack(data, key, fingerprint=fingerprint)


@dataclass
class _Peer:
    node_id: int
    incarnation: int
    address: str
    state: NodeState
    weight: int
    dead_after: float
    last_heard: float
    view_digest: bytes
    acks_us: bool


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
        decode: Decoder | None = None,
    ) -> None:
        if not 1 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id {node_id} not in 1..{MAX_NODE_ID}")
        if not 0 <= weight <= 0xFFFF:
            raise ValueError(f"weight {weight} not in 0..65535")
        self.node_id = node_id
        self.incarnation = incarnation
        self.cluster = cluster
        self.params = params or Params()
        self._decode = decode or _unpack
        self._weight = weight
        self._started = now
        self._guard = ReplayGuard(forget_after=self.params.forget_after)
        self._refusals = Refusals(
            dead_after=self.params.dead_after,
            tolerance=self.params.tolerance,
            log_every=self.params.log_every,
        )
        self.stats = self._refusals.stats
        self._peers: dict[int, _Peer] = {}
        self._events: list[Event] = []
        self._seq = 0
        self._hello_sent = False
        self._last_sent: float | None = None
        self._send_soon = False
        self._leaving = False
        self._draining = False
        self._state = NodeState.STARTING
        self._reason = "starting"
        self._assigned: dict[int, int] = {}
        self._incs: dict[int, int] = {}
        self._digest = view_digest({})
        self._ownership = Holdings(node_id, self.params.buckets, self.params.handoff_time)
        self._hold_until: float | None = None  # apply a changed member set then
        self._next_expiry = math.inf  # no peer can time out before this
        self._dirty = True
        self._next_check = now

    # ----- inputs -------------------------------------------------------------------------

    def receive(self, data: bytes, src: str, now: float) -> None:
        """A datagram from the cluster interface: authenticate, check, take it in."""
        try:
            msg = self._decode(data, self.cluster.key, self.cluster.fingerprint)
        except Rejected as exc:
            if exc.header is not None and exc.header.vip != self.cluster.vip:
                return  # another VIP's cluster on the same group: not for us, not an error
            self._refuse(exc, src, now)
            return
        self.on_message(msg, src, now)

    def on_message(self, msg: Message, src: str, now: float) -> None:
        """An authenticated message (from `wire.unpack`): replay check, then bookkeeping."""
        if msg.vip != self.cluster.vip:
            return
        if msg.fingerprint != self.cluster.fingerprint:
            ours = self.cluster.fingerprint.hex()
            why = f"cluster fingerprint {msg.fingerprint.hex()}, ours {ours}"
            self._refuse(ForeignFingerprint(why), src, now, msg.node_id, msg.interval_ms)
            return
        if msg.node_id == self.node_id:
            self._same_id(msg, src, now)
            return
        try:
            fresh = self._guard.admit(msg.node_id, msg.incarnation, msg.seq, now)
        except Rejected as exc:
            self._refuse(exc, src, now, msg.node_id)
            return
        peer = self._peers.get(msg.node_id)
        if isinstance(msg, Leave):
            if peer is not None:
                del self._peers[msg.node_id]
                self._events.append(PeerDown(peer.node_id, peer.incarnation, "leave"))
                self._dirty = True
            return
        if not isinstance(msg, Heartbeat):
            return
        if peer is not None and (
            fresh is Freshness.NEW_INCARNATION or peer.incarnation != msg.incarnation
        ):
            del self._peers[msg.node_id]
            self._events.append(PeerDown(peer.node_id, peer.incarnation, "restarted"))
            peer = None
        acks_us = msg.acked(self.node_id) == self.incarnation
        dead_after = msg.interval_ms / 1000 * self.params.tolerance
        if peer is None:
            peer = _Peer(
                msg.node_id,
                msg.incarnation,
                src,
                msg.state,
                msg.weight,
                dead_after,
                now,
                msg.view_digest,
                acks_us,
            )
            self._peers[msg.node_id] = peer
            self._events.append(PeerUp(msg.node_id, msg.incarnation, src))
            self._dirty = True
        else:
            before = (peer.state, peer.weight, peer.view_digest, peer.acks_us, peer.dead_after)
            peer.state, peer.weight, peer.view_digest = msg.state, msg.weight, msg.view_digest
            peer.acks_us, peer.dead_after, peer.address = acks_us, dead_after, src
            peer.last_heard = now
            if before != (peer.state, peer.weight, peer.view_digest, peer.acks_us, peer.dead_after):
                self._dirty = True
        if isinstance(msg, Hello):
            self._send_soon = True  # answer at once, so that it learns about us quickly

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

    def leave(self, now: float) -> tuple[list[Event], Leave]:
        """Graceful leave: the events that release every bucket (apply them first), then the
        LEAVE to send. Calling it again gives another LEAVE (next sequence) to resend."""
        self._leaving = True
        self._dirty = True
        events = self.tick(now)
        self._seq += 1
        msg = Leave(
            node_id=self.node_id,
            vip=self.cluster.vip,
            fingerprint=self.cluster.fingerprint,
            key_id=self.cluster.key_id,
            incarnation=self.incarnation,
            seq=self._seq,
            weight=self._weight,
            interval_ms=self.params.interval_ms,
        )
        self._last_sent = now
        return events, msg

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

    def heartbeat(self, now: float) -> Heartbeat:
        """The next heartbeat (a HELLO the first time). Call `tick(now)` and apply its events
        first: the heartbeat announces the view whose releases must already be done."""
        self._seq += 1
        cls = Heartbeat if self._hello_sent else Hello
        msg = cls(
            node_id=self.node_id,
            vip=self.cluster.vip,
            fingerprint=self.cluster.fingerprint,
            key_id=self.cluster.key_id,
            incarnation=self.incarnation,
            seq=self._seq,
            weight=self._weight,
            state=self._state,
            interval_ms=self.params.interval_ms,
            view_digest=self._digest,
            acks=tuple(Ack(p.node_id, p.incarnation) for _, p in sorted(self._peers.items())),
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

    def owned_buckets(self) -> frozenset[int]:
        """Buckets this node accepts new connections for (as of the last `tick`)."""
        return self._ownership.held

    def view(self) -> View:
        members = tuple(
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
        )
        refused = self._refusals.report()
        return View(
            node_id=self.node_id,
            incarnation=self.incarnation,
            state=self._state,
            reason=self._reason,
            members=members,
            refused=refused,
            assigned_to=dict(self._assigned),
            view_digest=self._digest,
            owned=self._ownership.held,
            pending=self._ownership.pending,
            rejected=self.stats.as_dict(),
        )

    # ----- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Advance to `now`: expire peers, update state, view and buckets; return the events
        since the last call (cheap when nothing changed and no deadline passed)."""
        if self._dirty or now >= self._next_check:
            self._dirty = False
            self._expire(now)
            self._update_state(now)
            self._update_view(now)
            self._update_ownership(now)
            self._next_check = self._earliest_deadline(now)
        events, self._events = self._events, []
        return events

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return  # heartbeats only push expiries later: nobody can be due yet
        for node, peer in list(self._peers.items()):
            if now >= peer.last_heard + peer.dead_after:
                del self._peers[node]
                self._events.append(PeerDown(node, peer.incarnation, "timeout"))

    def _update_state(self, now: float) -> None:
        has_valid_peer = any(p.acks_us for p in self._peers.values())
        passive = self._refusals.passive_reason(now, has_valid_peer)
        listen_end = self._started + self.params.listen_time
        if self._leaving:
            state, why = NodeState.LEAVING, "leaving"
        elif passive is not None:
            state, why = NodeState.PASSIVE, passive
        elif now < listen_end:
            state, why = NodeState.STARTING, "listening for peers before taking buckets"
        elif self._draining or self._weight == 0:
            state, why = NodeState.DRAINING, "draining: owns no bucket"
        else:
            state, why = NodeState.ACTIVE, "active"
        if state != self._state:
            self._events.append(StateChanged(self._state, state, why))
            level: Level = "warning" if state == NodeState.PASSIVE else "info"
            self._events.append(
                Notice(level, "state", f"{self._state.name.lower()} -> {state.name.lower()}: {why}")
            )
            self._send_soon = True
        self._state, self._reason = state, why

    def _update_view(self, now: float) -> None:
        assigned = {
            p.node_id: p.weight
            for p in self._peers.values()
            if p.acks_us and p.state == NodeState.ACTIVE and p.weight > 0
        }
        if self._state == NodeState.ACTIVE:
            assigned[self.node_id] = self._weight
        if assigned == self._assigned:
            self._hold_until = None
            return
        if self.node_id in assigned:  # gather changes; releasing everything never waits
            if self._hold_until is None:
                self._hold_until = now + self.params.hold_time
            if now < self._hold_until:
                return
        self._hold_until = None
        previous_incs = self._incs
        self._assigned = assigned
        self._incs = {n: p.incarnation for n, p in self._peers.items() if n in assigned}
        self._digest = view_digest(assigned)
        self._ownership.reassign(assigned, self._digest, previous_incs, now)
        self._send_soon = True  # peers waiting for our release hear about it at once

    def _update_ownership(self, now: float) -> None:
        peers = {
            n: PeerStatus(p.incarnation, p.state == NodeState.ACTIVE, p.view_digest)
            for n, p in (self._peers.items() if self._ownership.waiting else ())
        }
        settled = self._ownership.settle(now, peers)
        if settled.change is not None:
            self._events.append(settled.change)
        for node, count in sorted(settled.timed_out.items()):
            self._notice(
                "handoff_timeout",
                now,
                f"took {count} bucket(s) that node {node} may still hold, after "
                f"{self.params.handoff_time} s: its heartbeats show a view we do not share",
            )

    def _earliest_deadline(self, now: float) -> float:
        expiries = [p.last_heard + p.dead_after for p in self._peers.values()]
        self._next_expiry = min(expiries, default=math.inf)
        times = expiries
        times += self._refusals.deadlines(now)
        times += self._ownership.deadlines()
        listen_end = self._started + self.params.listen_time
        if now < listen_end:
            times.append(listen_end)
        if self._hold_until is not None:
            times.append(self._hold_until)
        return min(times, default=math.inf)

    # ----- refusals -----------------------------------------------------------------------

    def _same_id(self, msg: Message, src: str, now: float) -> None:
        if msg.incarnation == self.incarnation:
            return
        why = (
            f"node id {self.node_id} is also used by {src} (incarnation {msg.incarnation}, "
            f"ours {self.incarnation})"
        )
        if msg.incarnation > self.incarnation:
            why += ": that one is newer, so this node stays passive"
            self._refusals.duplicate(why, msg.interval_ms, now)
            self._dirty = True
        else:
            why += ": ours is newer (or that is a replay of our previous run)"
        self._refuse(DuplicateNodeId(why), src, now, msg.node_id)

    def _refuse(
        self,
        exc: Rejected,
        src: str,
        now: float,
        node_id: int | None = None,
        interval_ms: int | None = None,
    ) -> None:
        passive, notice = self._refusals.refuse(exc, src, now, node_id, interval_ms)
        if passive:
            self._dirty = True
        if notice is not None:
            self._events.append(notice)

    def _notice(self, cause: str, now: float, text: str) -> None:
        notice = self._refusals.notice(cause, now, text)
        if notice is not None:
            self._events.append(notice)
