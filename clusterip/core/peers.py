"""Who this node hears, for one VIP's membership: datagrams in, the peer table out.

`PeerTable.receive` authenticates, replay-checks and takes in every datagram; the membership
(clusterip.core.membership) reads the table at its full ticks and decides. Pure: `now` is
passed in.

- A heartbeat identical to the sender's previous one but for its sequence number (the common
  case: nothing changed) takes the fast path: a few byte compares, the HMAC, the replay check,
  and the time it was heard. Nothing is decoded and nothing is recomputed, so the table stays
  `changed = False` and the membership does no full tick for it.
- Anything else is decoded and taken in (`changed = True`): a new peer or incarnation, a new
  view, state, weight or ack list, LEAVE, RESTART, a planned restart's successor.
- Relays (`relay`): nodes we cannot hear that counted peers hear (one-way loss) count too,
  from the acks in those peers' heartbeats.
- Deaths (`mourn`): a node is down once it is neither heard nor relayed (or it said goodbye).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from clusterip.core.events import Event, PeerContinued, PeerDown, PeerUp
from clusterip.core.fingerprint import differences
from clusterip.core.holdings import PeerStatus, claims
from clusterip.core.params import Cluster, Params
from clusterip.core.refusals import Refusals
from clusterip.core.replay import Freshness, ReplayGuard
from clusterip.core.wire import (
    FLAG_DRAINING,
    HEADER,
    MAC_BYTES,
    MAGIC,
    VERSION,
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
    Replay,
    Restart,
    authenticate,
    config_fields,
    decode,
    peek,
)

_FAST = MAGIC + bytes((VERSION, MsgType.HEARTBEAT))  # what a fast-path datagram starts with
_TRAILER = HEADER.size + MAC_BYTES  # bytes of a datagram that are not its body


class Relayed(NamedTuple):
    """A node we cannot hear, counted because a counted peer hears it (one-way loss)."""

    incarnation: int
    weight: int
    via: int  # the peer whose heartbeat relays it
    heard: float  # when that peer last heard it (as of the relaying heartbeat)
    lag: float  # heard = the via peer's relayed_at - lag (later heartbeats move it on)
    frozen: bool = False  # in a planned restart: its node serves on what it held, unknown here


@dataclass
class Peer:
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
    relay_ids: frozenset[int] = frozenset()
    relay_by_id: dict[int, Ack] = field(default_factory=dict)
    digest: bytes = b""  # the digest of `members`, as its heartbeat says
    relayed_at: float = 0.0  # when those relays were received
    restart_until: float | None = None  # announced a planned restart: kept until then
    continuing: bool = False  # a successor that has not acked us yet
    view_unknown: bool = False  # a successor whose predecessor's view we never heard
    kept_place: bool = False  # counted when it announced its restart
    kept_said: int = 0  # the latest KEPT announcement its heartbeat names
    kept_known: int = 0  # the latest we have whole
    # The fast path: the bytes of its latest heartbeat that must not change (the header from
    # its state to its incarnation: VIP, fingerprint, key id included) and its body.
    fixed: bytes = b""
    body: bytes = b""
    status: PeerStatus | None = field(default=None, repr=False)  # for holdings, cached
    status_key: tuple[bool, bool] = field(default=(False, False), repr=False)
    unheard: frozenset[int] = field(default=frozenset(), repr=False)  # relay_ids - direct
    unheard_of: tuple[object, object] = field(default=(None, None), repr=False)
    _claims: frozenset[int] = field(default=frozenset(), repr=False)
    _claims_of: tuple[tuple[int, int], ...] | None = field(default=None, repr=False)

    def fresh(self, now: float) -> bool:
        if self.restart_until is not None:
            return now < self.restart_until
        return now < self.last_heard + self.dead_after

    @property
    def expires(self) -> float:
        return (
            self.restart_until
            if self.restart_until is not None
            else (self.last_heard + self.dead_after)
        )

    def counted(self, now: float) -> bool:
        """Whether buckets are assigned to it (see clusterip.core.membership)."""
        if not self.fresh(now):
            return False
        if self.restart_until is not None:
            return self.kept_place
        if self.continuing:
            return self.weight > 0 and self.state in (NodeState.ACTIVE, NodeState.RESTARTING)
        return self.verified and self.acks_us and self.state == NodeState.ACTIVE and self.weight > 0

    def claims(self, buckets: int) -> frozenset[int]:
        """The buckets its announced view gives it (cached until its view changes)."""
        if self._claims_of is not self.members:
            self._claims_of = self.members
            self._claims = claims(dict(self.members), buckets, self.node_id)
        return self._claims


class PeerTable:
    """The peers of one node, and what arrived from them."""

    def __init__(
        self,
        *,
        node_id: int,
        incarnation: int,
        cluster: Cluster,
        params: Params,
        refusals: Refusals,
        previous: int = 0,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.cluster = cluster
        self.params = params
        self.refusals = refusals
        self.previous = previous  # our predecessor's incarnation (planned restart), or 0
        self.guard = ReplayGuard(forget_after=params.forget_after)
        self.peers: dict[int, Peer] = {}
        self.relayed: dict[int, Relayed] = {}
        self.gone: dict[int, int] = {}  # node -> incarnation that left or restarted
        self.alive: dict[int, int] = {}  # node -> incarnation: heard directly or relayed
        self.silent: dict[int, str] = {}  # expired here, maybe still relayed: why
        self.events: list[Event] = []
        self.left: list[int] = []  # nodes that said goodbye, for the quorum
        self.changed = True  # something a full tick must look at arrived
        self.hello = False  # a HELLO arrived: answer soon
        self.served = False  # once this node served, refusals never matter again
        self.assigned: Mapping[int, int] = {}  # the membership's view, for RESTART
        self._direct: frozenset[int] = frozenset()
        self._verified: dict[int, tuple[int, float]] = {}  # node -> (inc, when) it last acked us
        self.next_expiry = 0.0  # no peer expires before (set by the membership's full tick)
        self._roster_changed = True  # peers came, went or restarted since `mourn`
        self._relayed_incs: dict[int, int] = {}

    # ----- datagrams ----------------------------------------------------------------------

    def receive(self, data: bytes, src: str, now: float) -> Message | None:
        """A datagram from the cluster interface: authenticate, check, take it in. Returns the
        authenticated message (KEPT is for the caller) or None if refused, ignored, or an
        unchanged heartbeat."""
        if data[:6] == _FAST and self._fast(data, src, now):
            return None
        try:
            header = peek(data)
        except Malformed as exc:
            self._refuse(exc, src, now)
            return None
        if header.vip != self.cluster.vip:
            return None  # another VIP's cluster on the same group: not for us, not an error
        if header.type == MsgType.CONFIG and header.fingerprint != self.cluster.fingerprint:
            what = differences(config_fields(data), self.cluster.fields)
            if what:
                self.refusals.differs(src, header.node_id, what)
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
            else:  # the transport never loops our own datagrams back: reflected or replayed
                why = f"our own message (incarnation {header.incarnation}) sent back to us"
                self._refuse(Replay(why, header), src, now, self.node_id)
            return None
        try:
            fresh = self.guard.admit(header.node_id, header.incarnation, header.seq, now)
        except Rejected as exc:
            exc.header = header
            self._refuse(exc, src, now)
            return None
        try:
            msg = decode(header, data)
        except Malformed as exc:
            self._refuse(exc, src, now)
            return None
        if fresh is not Freshness.LATE:
            self._take(msg, src, now, data)
        return msg

    def _fast(self, data: bytes, src: str, now: float) -> bool:
        """An authentic heartbeat, next in sequence, identical to its sender's previous one
        but for the sequence number: only the time it was heard changes."""
        peer = self.peers.get(int.from_bytes(data[8:10], "big"))
        if (
            peer is None
            or peer.restart_until is not None
            or len(data) != len(peer.body) + _TRAILER
            or not data.startswith(peer.fixed, 6)  # state ... incarnation, VIP, fingerprint
            or not data.startswith(peer.body, HEADER.size)
        ):
            return False
        mac = hmac.digest(self.cluster.key, memoryview(data)[:-MAC_BYTES], hashlib.sha256)
        if not hmac.compare_digest(mac, data[-MAC_BYTES:]):
            return False  # the slow path counts and reports it
        seq = int.from_bytes(data[56:64], "big")
        if not self.guard.advance(peer.node_id, peer.incarnation, seq, now):
            return False
        peer.last_heard, peer.address = now, src
        if peer.relays:
            peer.relayed_at = now
        return True

    def _take(self, msg: Message, src: str, now: float, data: bytes) -> None:
        if not isinstance(msg, Heartbeat | Leave | Restart):
            return  # KEPT is the caller's; CONFIG only matters when refused
        peer = self.peers.get(msg.node_id)
        if isinstance(msg, Leave):
            self.changed = True
            if peer is not None and peer.incarnation == msg.incarnation:
                self._drop(peer, "leave")
            self.left.append(msg.node_id)
            return
        if isinstance(msg, Restart):
            self.changed = True
            if peer is not None and peer.incarnation == msg.incarnation:
                peer.kept_place = peer.node_id in self.assigned
                peer.state, peer.status = NodeState.RESTARTING, None
                peer.restart_until = now + msg.grace_ms / 1000 + peer.dead_after
            return
        if peer is not None and peer.incarnation != msg.incarnation:
            # A successor names the incarnation it continues (only a planned stop leaves it
            # something to continue): that is the planned restart, even if its HELLO overtook
            # the RESTART its predecessor sent just before.
            if msg.incarnation > peer.incarnation and msg.previous == peer.incarnation:
                self.events.append(PeerContinued(peer.node_id, peer.incarnation, msg.incarnation))
                if peer.node_id in self.alive:
                    self.alive[peer.node_id] = msg.incarnation  # the same node, continued
                peer.incarnation, peer.verified, peer.continuing = msg.incarnation, False, True
                peer.restart_until = None
                self._roster_changed = True
            else:
                self._drop(peer, "restarted")
                peer = None
        acks_us = msg.acked(self.node_id) == self.incarnation
        our_age = next((a.age_ms for a in msg.acks if a.node_id == self.node_id), 0) / 1000
        dead_after = msg.interval_ms / 1000 * self.params.tolerance
        relays = tuple(a for a in msg.acks if a.member)
        relay_by_id = {a.node_id: a for a in relays}
        if self.changed or peer is None or not self._same_for_us(peer, msg, relay_by_id):
            self.changed = True
        elif acks_us == peer.acks_us and our_age == peer.our_age:
            # Only what it says of nodes we hear ourselves changed (their ages, say): nothing
            # to decide now, but what it relays is kept up to date for when it matters.
            peer.last_heard, peer.address = now, src
            self._relays(peer, relays, relay_by_id, now)
            peer.fixed, peer.body = data[6:56], data[64:-MAC_BYTES]
            return
        self.changed = True
        if peer is None:
            peer = Peer(
                msg.node_id,
                msg.incarnation,
                src,
                msg.state,
                msg.weight,
                msg.interval_ms / 1000,
                dead_after,
                now,
            )
            self.peers[msg.node_id] = peer
            self._roster_changed = True
            self.gone.pop(msg.node_id, None)
            self.events.append(PeerUp(msg.node_id, msg.incarnation, src))
            known = self.alive.get(msg.node_id)
            if msg.previous and known == msg.previous < msg.incarnation:
                # The successor of a node we knew only through others (relayed): continued.
                self.events.append(PeerContinued(msg.node_id, known, msg.incarnation))
                self.alive[msg.node_id] = msg.incarnation
                peer.continuing = True
        peer.state, peer.weight, peer.address, peer.last_heard = msg.state, msg.weight, src, now
        peer.interval, peer.dead_after = msg.interval_ms / 1000, dead_after
        peer.acks_us, peer.verified = acks_us, peer.verified or acks_us
        if acks_us:
            self._verified[peer.node_id] = (peer.incarnation, now)
        elif not peer.verified:
            # An incarnation that acked ours before it went silent here (a partition) is no
            # recording now: the replay guard saw its sequence go on. What it claims holds.
            inc, when = self._verified.get(peer.node_id, (-1, 0.0))
            peer.verified = inc == peer.incarnation and now - when < self.params.forget_after
        peer.our_age = our_age
        if acks_us:
            peer.continuing = False
        peer.draining = bool(msg.flags & FLAG_DRAINING)
        peer.kept_said = msg.kept
        peer.digest = msg.view_digest
        # Equal values keep their objects: the caches compare them by identity. A successor
        # that continues its predecessor announces no view until it has one of its own: it
        # serves what the predecessor held meanwhile, as the predecessor's view says.
        resuming = (
            msg.previous != 0
            and not msg.members
            and msg.state in (NodeState.RESTARTING, NodeState.ACTIVE)  # (others hold nothing)
        )
        if msg.members != peer.members and not resuming:
            peer.members = msg.members
        # (A successor whose predecessor's view we do not know: what it holds is unknown.)
        peer.view_unknown = resuming and not peer.members
        self._relays(peer, relays, relay_by_id, now)
        peer.status = None
        peer.fixed, peer.body = data[6:56], data[64:-MAC_BYTES]
        if isinstance(msg, Hello):
            self.hello = True  # answer at once, so that it learns about us quickly

    @staticmethod
    def _relays(peer: Peer, relays: tuple[Ack, ...], by_id: dict[int, Ack], now: float) -> None:
        peer.relays, peer.relay_by_id, peer.relayed_at = relays, by_id, now
        relay_ids = frozenset(by_id)
        if relay_ids != peer.relay_ids:
            peer.relay_ids = relay_ids

    def _same_for_us(self, peer: Peer, msg: Heartbeat, relay_by_id: dict[int, Ack]) -> bool:
        """Whether a heartbeat of a known peer's incarnation differs from its previous one only
        in what it says of nodes we hear directly (as of the latest full tick, with no input
        that could change that since): nothing a full tick decides can change."""
        if (
            isinstance(msg, Hello)
            or peer.incarnation != msg.incarnation
            or peer.restart_until is not None
            or msg.state != peer.state
            or msg.weight != peer.weight
            or msg.interval_ms / 1000 != peer.interval
            or bool(msg.flags & FLAG_DRAINING) != peer.draining
            or msg.kept != peer.kept_said
            or msg.view_digest != peer.digest
            or msg.members != peer.members
        ):
            return False
        old = peer.relay_by_id
        direct = self._direct
        return all(
            old.get(n) == relay_by_id.get(n) for n in (peer.relay_ids | relay_by_id.keys()) - direct
        )

    def kept_known(self, node: int, announcement: int) -> None:
        """A peer's KEPT announcement has arrived whole (from the caller's KeptBook)."""
        peer = self.peers.get(node)
        if peer is not None and announcement > peer.kept_known:
            peer.kept_known = announcement
            self.changed = True

    # ----- what a full tick does with the table -------------------------------------------

    def expire(self, now: float) -> None:
        if now < self.next_expiry:
            return  # heartbeats only push expiries later: nobody can be due yet
        for peer in [p for p in self.peers.values() if not p.fresh(now)]:
            why = "restart timed out" if peer.restart_until is not None else "timeout"
            self._drop(peer, why)

    def _drop(self, peer: Peer, reason: str) -> None:
        del self.peers[peer.node_id]
        self.changed = self._roster_changed = True
        if reason in ("leave", "restarted", "restart timed out"):
            # What others still relay of it is stale (a restart's grace ends everywhere alike).
            self.gone[peer.node_id] = peer.incarnation
            self.alive.pop(peer.node_id, None)
            self.events.append(PeerDown(peer.node_id, peer.incarnation, reason))
        else:
            # Silent here: it is dead only once nobody relays it either (see mourn).
            self.silent[peer.node_id] = reason

    def relay(self, now: float) -> None:
        """Nodes we cannot hear that counted peers hear (one-way loss). Nodes we hear
        ourselves are left out first, as sets: nothing is looked at per ack unless some
        peer relays a node we do not hear."""
        relayed: dict[int, Relayed] = {}
        dead_after = self.params.dead_after
        # What we hear ourselves is fresher (a direct peer that is not active is not relayed).
        direct = frozenset(
            [self.node_id]
            + [n for n, p in self.peers.items() if p.acks_us or p.state != NodeState.ACTIVE]
        )
        if direct == self._direct:
            direct = self._direct  # the same object: the per-peer caches below stay valid
        self._direct = direct
        for p in self.peers.values():
            if not p.relays:
                continue
            if p.unheard_of[0] is not p.relay_ids or p.unheard_of[1] is not direct:
                p.unheard, p.unheard_of = p.relay_ids - direct, (p.relay_ids, direct)
            unheard = p.unheard
            if not unheard or not p.counted(now):
                continue
            for n in sorted(unheard):
                a = p.relay_by_id[n]
                if a.state not in (NodeState.ACTIVE, NodeState.RESTARTING) or a.weight == 0:
                    continue  # (RESTARTING: its node serves on until a successor continues it)
                if self.gone.get(n) == a.incarnation:
                    continue
                if n in self.silent and a.age_ms > 0:
                    continue  # silent here and there too (one-way loss shows age 0): dying
                # Ages are rounded down (to two intervals): the latest time it may have been
                # heard, so that nobody here declares it dead before the peer that hears it.
                lag = a.age_ms / 1000
                heard = p.relayed_at - lag
                if now >= heard + dead_after:
                    continue
                best = relayed.get(n)
                if best is None or (a.incarnation, heard) > (best.incarnation, best.heard):
                    frozen = a.state == NodeState.RESTARTING
                    relayed[n] = Relayed(a.incarnation, a.weight, p.node_id, heard, lag, frozen)
        self.relayed = relayed

    def relay_expiries(self) -> list[float]:
        """When each relayed node stops counting, unless its peer's next heartbeat says more
        (an unchanged heartbeat moves `relayed_at`, hence these, on)."""
        out = []
        for r in self.relayed.values():
            via = self.peers.get(r.via)
            heard = r.heard if via is None else via.relayed_at - r.lag
            out.append(heard + self.params.dead_after)
        return out

    def mourn(self, now: float) -> None:
        """PeerDown for every node that was alive (heard directly or relayed) and is not any
        more: a node we stop hearing while a peer still hears it (one-way loss) is alive."""
        relayed = {n: r.incarnation for n, r in self.relayed.items()}
        if not self._roster_changed and relayed == self._relayed_incs:
            return  # the same nodes, the same incarnations
        self._roster_changed, self._relayed_incs = False, relayed
        alive = {n: p.incarnation for n, p in self.peers.items() if p.fresh(now)}
        for n, inc in relayed.items():
            alive.setdefault(n, inc)
        for n, inc in self.alive.items():
            if alive.get(n) != inc:
                why = self.silent.get(n, "timeout")
                self.events.append(PeerDown(n, inc, why))
        self.silent = {n: r for n, r in self.silent.items() if n not in self.peers}
        self.alive = alive

    # ----- refusals -----------------------------------------------------------------------

    def _same_id(self, incarnation: int, src: str, interval_ms: int, now: float) -> None:
        why = (
            f"node id {self.node_id} is also used by {src} (incarnation {incarnation}, "
            f"ours {self.incarnation})"
        )
        if incarnation > self.incarnation and incarnation != self.previous:
            why += ": that one is newer, so this node stays passive"
            self.refusals.duplicate(why, interval_ms, now)
            self.changed = True
        else:
            why += ": ours is newer (or that is a replay of our previous run)"
        self._refuse(DuplicateNodeId(why), src, now, self.node_id)

    def _refuse(self, exc: Rejected, src: str, now: float, node_id: int | None = None) -> None:
        passive, notice = self.refusals.refuse(exc, src, now, node_id)
        if passive and not self.served:
            self.changed = True  # a serving node is never silenced: nothing to recompute
        if notice is not None:
            self.events.append(notice)
