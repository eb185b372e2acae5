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
from dataclasses import replace
from operator import attrgetter
from typing import Any

from clusterip.core import defaults
from clusterip.core.events import (
    Event,
    Level,
    MemberInfo,
    Notice,
    PeerContinued,
    StateChanged,
    View,
)
from clusterip.core.fingerprint import view_digest
from clusterip.core.holdings import Holdings, PeerStatus, claims
from clusterip.core.params import Cluster, Params
from clusterip.core.peers import Peer, PeerTable
from clusterip.core.quorum import Quorum
from clusterip.core.refusals import Refusals
from clusterip.core.wire import (
    FLAG_DRAINING,
    MAX_NODE_ID,
    Ack,
    Heartbeat,
    Hello,
    Leave,
    Message,
    NodeState,
    Restart,
)

EARLY_GAP = defaults.EARLY_GAP
AGE_MAX_MS = 0xFFFF
EPS = 1e-6  # a threshold "reached" at a float deadline must hold when woken for it
_LAST_HEARD = attrgetter("last_heard")


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
        self._refusals = Refusals(
            dead_after=p.dead_after,
            tolerance=p.tolerance,
            log_every=p.log_every,
            key_id=cluster.key_id,
        )
        self.stats = self._refusals.stats
        self._table = PeerTable(
            node_id=node_id,
            incarnation=incarnation,
            cluster=cluster,
            params=p,
            refusals=self._refusals,
            previous=self._previous,
        )
        self._quorum = Quorum(node_id, settle=p.dead_after)
        self._events: list[Event] = []
        self._seq = 0
        self._hello_sent = False
        self._last_sent: float | None = None
        self._send_soon = False
        self._leaving = False
        self._suspended = False
        self._draining = False
        self._state = NodeState.STARTING
        self._reason = "starting"
        self._assigned: dict[int, int] = {}
        self._incs: dict[int, int] = {}
        self._digest = view_digest({})
        self._holdings = Holdings(node_id, p.buckets, p.handoff_time)
        if adopted is not None:
            self._holdings.adopt(adopted)
            self._state, self._reason = NodeState.RESTARTING, "continuing its predecessor"
            self._table.served = True
        self._others: dict[int, int] = {}  # counted members but us: node id -> weight
        self._counted: dict[int, None] = {}  # (counted_peers, cached)
        self._counted_set: frozenset[int] = frozenset()
        self._hold_until: float | None = None
        self._back_until = -math.inf  # back from isolation: listening until (inf: cut off)
        self._reach: frozenset[int] = frozenset({node_id})  # as of the latest full tick
        self._quiet_at: float | None = None  # when quiet peers would cost quorum (ditto)
        self._dirty = True
        self._next_check = now
        self._last_full = -math.inf  # the latest full tick

    # ----- inputs -------------------------------------------------------------------------

    def receive(self, data: bytes, src: str, now: float) -> Message | None:
        """A datagram from the cluster interface (see clusterip.core.peers): the
        authenticated message (KEPT is for the caller), or None."""
        return self._table.receive(data, src, now)

    def kept_known(self, node: int, announcement: int) -> None:
        """A peer's KEPT announcement has arrived whole (from the caller's KeptBook)."""
        self._table.kept_known(node, announcement)

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
        self._back_until = -math.inf  # serve at once, with what it reaches
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
        # A peer that announced a planned restart is vouched for until its grace ends (age 0,
        # state RESTARTING): a node that does not know it (a successor that started since)
        # counts it through us, and takes none of what its node still serves.
        acks = tuple(
            Ack(
                p.node_id,
                p.incarnation,
                p.weight,
                p.state,
                p.node_id in self._assigned and (p.acks_us or p.restart_until is not None),
                0
                if p.restart_until is not None
                else min(AGE_MAX_MS, int((now - p.last_heard) * 1000) // unit * unit),
            )
            for _, p in sorted(self._table.peers.items())
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
        if self._table.changed:
            return max(now, min(self._next_check, self._last_full + self.params.coalesce_time))
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

    @property
    def member_count(self) -> int:
        """How many members (this node included) the buckets are assigned to."""
        return len(self._assigned)

    @property
    def counted_peers(self) -> frozenset[int]:
        """The other members buckets are assigned to (as of the last full tick; the same
        object while they do not change)."""
        if self._counted.keys() != self._others.keys():
            self._counted = {n: None for n in self._others}
            self._counted_set = frozenset(self._others)
        return self._counted_set

    def owned_buckets(self) -> frozenset[int]:
        """Buckets (1-based) this node accepts new connections for (as of the last `tick`)."""
        return self._holdings.held

    def peers_draining(self) -> bool:
        """Whether a live peer keeps flows of buckets it handed over."""
        return any(p.draining for p in self._table.peers.values())

    def draining_peers(self) -> frozenset[int]:
        """The live peers that keep flows of buckets they handed over."""
        return frozenset(n for n, p in self._table.peers.items() if p.draining)

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
            for _, p in sorted(self._table.peers.items())
        ]
        members += [
            MemberInfo(n, inc, "", NodeState.ACTIVE, w, heard, False, n in self._assigned, via)
            for n, (inc, w, via, heard, _lag, _frozen) in sorted(self._table.relayed.items())
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
        since the last call. A full tick runs only when an input changed something or a
        threshold (`_thresholds`) was crossed since the last one: unchanged heartbeats and
        timers that turn out early (every heartbeat heard pushes thresholds later) cost a
        look at the thresholds, no more; that look is also taken before each heartbeat we
        send, so that timers seldom fire on their own. Received changes that follow a full
        tick within `coalesce_time` wait for the end of it (a cluster of 64 changing its
        view sends 63 changed heartbeats within an interval: a few full ticks, not 63);
        local commands (carrier, weight, drain, leave) never wait."""
        t = self._table
        if t.changed and (
            now >= self._last_full + self.params.coalesce_time or now >= self._next_check
        ):
            self._dirty = True  # inputs that arrive in a burst wait a moment, to be taken together
        elif not (self._dirty or t.changed) and (now >= self._next_check or self.due(now)):
            times = self._thresholds()
            if any(self._last_full < x <= now for x in times):
                self._dirty = True
            else:
                self._next_check = min((x for x in times if x > now), default=math.inf)
        if self._dirty:
            self._dirty = t.changed = False
            self._last_full = now
            self._full_tick(now)
            times = self._thresholds(tick=True)
            self._next_check = min((x for x in times if x > now), default=math.inf)
        events = t.events + self._events  # what arrived, then what the tick made of it
        self._events, t.events = [], []
        return events

    def _full_tick(self, now: float) -> None:
        t = self._table
        for event in t.events:
            if isinstance(event, PeerContinued):
                self._holdings.continued(event.node_id, event.old, event.new)
                self._incs[event.node_id] = event.new
        for node in t.left:
            self._quorum.left(node)
        t.left = []
        if t.hello:
            t.hello = False
            self._send_soon = True
        t.expire(now)
        t.relay(now)
        t.mourn(now)
        self._update_state(now)
        self._update_view(now)
        self._update_holdings(now)
        t.changed = False  # what the tick itself changed in the table is taken in

    def _thresholds(self, tick: bool = False) -> list[float]:
        """Every time at which a full tick may decide otherwise with no new input: peers and
        relays expiring, timers of the quorum, refusals, holdings, listening and gathering.
        Suspects (two intervals silent) count only while a view change waits; quiet peers
        only at the first instant their silence would cost quorum (`_losing_quorum`)."""
        p = self.params
        t = self._table
        times = [peer.expires for peer in t.peers.values()]
        t.next_expiry = min(times, default=math.inf)
        times += t.relay_expiries()
        if self._hold_until is not None:
            times += [self._hold_until, self._hold_until + p.dead_after]
            times += [
                peer.last_heard + 2 * p.interval + EPS
                for n, peer in t.peers.items()
                if n in self._others
            ]
        # (Right after a full tick, its figure holds: nobody was heard since.)
        quiet = self._quiet_at if tick else self._quiet_threshold()
        if quiet is not None:
            times.append(quiet)
        times += self._refusals.deadlines(self._last_full)
        times += self._holdings.deadlines()
        base_move = self._quorum.deadline()
        if base_move is not None:
            times.append(base_move)
        if self._quorum.isolated_since is not None:
            times.append(self._quorum.isolated_since + p.isolation_limit)
        listen_end = self._started + p.listen_time
        times += [listen_end, listen_end + defaults.FOREIGN_WAIT, self._back_until]
        return times

    def _update_state(self, now: float) -> None:
        t = self._table
        self._others = {n: p.weight for n, p in t.peers.items() if p.counted(now)}
        for n, r in t.relayed.items():
            self._others.setdefault(n, r.weight)
        has_valid_peer = any(p.verified and p.acks_us for p in t.peers.values())
        listen_end = self._started + self.params.listen_time
        passive = self._refusals.passive_reason(
            now,
            has_valid_peer=has_valid_peer,
            served=t.served,
            wait_until=listen_end + defaults.FOREIGN_WAIT,
            incarnation=self.incarnation,
        )
        reach = self._reach = self._reachable()
        quorum = self._quorum.judge(reach, now)
        self._quiet_at = self._quiet_threshold()
        if self._quiet_at is not None and now >= self._quiet_at - EPS:
            # Counted peers that have been silent for a detection time less two intervals
            # would, lost, cost quorum: this node is on the cut-off side, and gives up its
            # share before the majority takes it over (at the full detection time).
            quorum = False
        if quorum:
            self._quorum.isolated_since = None
        elif self._quorum.give_up_waiting(reach, now, self.params.isolation_limit):
            quorum = True
            self._back_until = -math.inf  # it listened all along: what it hears is all there is
            self._notice(
                "isolation_limit",
                now,
                f"cut off for {self.params.isolation_limit:g} s with carrier: the members it "
                "cannot reach are taken to be gone; serving with those it reaches",
            )
        if self._resuming and (has_valid_peer or now >= listen_end):
            self._resuming = False
        if not quorum:
            self._back_until = math.inf
        elif self._back_until == math.inf:
            # Heard again after being cut off: the others may be serving what we had, and
            # their heartbeats come within an interval; listen as a node that starts does,
            # and take nothing before (the cut-off side gives up first and comes back last).
            self._back_until = now + self.params.listen_time
        if self._leaving:
            state, why = NodeState.LEAVING, "leaving"
        elif self._suspended:
            state, why = NodeState.RESTARTING, "handing over to a successor"
        elif passive is not None:
            state, why = NodeState.PASSIVE, passive
        elif not quorum:
            state, why = NodeState.ISOLATED, self._isolation_reason()
        elif now < self._back_until:
            # Still ISOLATED to the others: cut-off peers that hear us count for quorum.
            state, why = (
                NodeState.ISOLATED,
                "heard again: listening for peers before taking buckets",
            )
        elif self._resuming:
            state, why = NodeState.RESTARTING, "continuing its predecessor"
        elif now < listen_end and not self._continues:
            state, why = NodeState.STARTING, "listening for peers before taking buckets"
        elif self._draining or self._weight == 0:
            state, why = NodeState.DRAINING, "draining: owns no bucket"
        else:
            state, why = NodeState.ACTIVE, "active"
        if state in (NodeState.ISOLATED, NodeState.PASSIVE, NodeState.LEAVING):
            self._resuming = False  # a successor cut off gives up what it continued, at once
        if state == NodeState.ACTIVE:
            t.served = True
        if state != self._state:
            self._events.append(StateChanged(self._state, state, why))
            level: Level = "warning" if state in (NodeState.PASSIVE, NodeState.ISOLATED) else "info"
            self._events.append(
                Notice(level, "state", f"{self._state.name.lower()} -> {state.name.lower()}: {why}")
            )
            self._send_soon = True
        self._state, self._reason = state, why

    def _reachable(self) -> frozenset[int]:
        # Quorum is about who we reach, not who serves: cut-off peers that hear us again count,
        # or nodes isolated together (every group of a partition a minority) never recover.
        return frozenset({self.node_id, *self._others, *self._cut_off()})

    def _cut_off(self) -> frozenset[int]:
        """Isolated peers that hear us: reachable, but not serving (yet)."""
        return frozenset(
            n
            for n, p in self._table.peers.items()
            if p.state == NodeState.ISOLATED and p.verified and p.acks_us and p.weight > 0
        )

    def _quiet_peers(self) -> list[Peer]:
        """Counted peers heard directly, the longest silent first."""
        peers = self._table.peers
        quiet = [peers[n] for n in self._others if n in peers]
        return sorted((p for p in quiet if p.restart_until is None), key=_LAST_HEARD)

    def _quiet_threshold(self) -> float | None:
        """The first time `_losing_quorum` can turn true: peers turn quiet in the order they
        were last heard, so the first prefix of that order whose loss costs quorum says when."""
        through: dict[int, set[int]] = {}  # peer -> the nodes we count through it
        for n, r in self._table.relayed.items():
            through.setdefault(r.via, set()).add(n)
        order = self._quiet_peers()
        if not order or not self._quorum.carrier:
            return None  # nobody to lose (without carrier there is no quorum to lose either)
        losses = ({p.node_id, *through.get(p.node_id, ())} for p in order)
        first = self._quorum.first_loss(self._reach, losses)
        if first is None:
            return None
        quiet_for = self.params.dead_after - 2 * self.params.interval
        return order[first].last_heard + quiet_for + EPS

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
        # (An adopted holding is a target no view gave: it goes when we are out of the view.)
        adopted = self.node_id not in assigned and self._holdings.target
        if (assigned == self._assigned and not adopted) or self._resuming or self._suspended:
            self._hold_until = None
            return
        if self.node_id in assigned:  # gather changes; releasing everything never waits
            if self._hold_until is None:
                self._hold_until = now + self.params.hold_time
            if now < self._hold_until:
                return
            late = now - 2 * self.params.interval
            peers = self._table.peers
            suspects = [n for n, p in peers.items() if n in assigned and p.last_heard < late]
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
        self._table.assigned = assigned
        self._incs = {n: self._incarnation_of(n) for n in assigned if n != self.node_id}
        self._digest = view_digest(assigned)
        self._holdings.reassign(assigned, previous_incs, now)
        self._send_soon = True  # peers waiting for our release hear about it at once

    def _incarnation_of(self, node: int) -> int:
        peer = self._table.peers.get(node)
        if peer is not None:
            return peer.incarnation
        relayed = self._table.relayed.get(node)
        return relayed.incarnation if relayed is not None else -1

    def _status(self, p: Peer, verified: bool) -> PeerStatus:
        """What holdings need to know of a peer (cached until that changes)."""
        losing = self._losing_us(p)
        key = (verified, losing)  # the rest changes only with a heartbeat, which resets it
        if p.status is not None and p.status_key == key:
            return p.status
        buckets = self.params.buckets
        owns: frozenset[int] = frozenset()
        view: tuple[tuple[int, int], ...] = ()
        digest = None
        # Deaf to us only if it acked this incarnation of ours before and no longer does (not
        # yet having acked a new one is no deafness; a successor's node heard us before).
        hears_us = p.acks_us or p.continuing or not p.verified
        if p.view_unknown:
            # A successor serves what its predecessor held; when we never heard what that was
            # (we knew it only through others, or not at all), it blocks every take until it
            # announces a view of its own (a claim to wait for, no reason to step back).
            owns, hears_us = frozenset(range(1, buckets + 1)), True
        elif p.state not in (NodeState.ACTIVE, NodeState.RESTARTING) or not p.members:
            pass  # (RESTARTING: its node serves on, frozen, what its latest view gave it)
        elif losing:
            # A two-node view whose other node has not heard us for two intervals: it is
            # about to take our buckets (nobody can tell it we live): step back first.
            alone = {m: w for m, w in p.members if m != self.node_id}
            owns, view, hears_us = claims(alone, buckets, p.node_id), tuple(alone.items()), False
            digest = view_digest(alone)
        else:
            owns, view, digest = p.claims(buckets), p.members, p.digest
        # Active without a view yet, or a successor holding what we never heard of: takes
        # wait for its view (verified or not: the wait is bounded).
        forming = p.view_unknown or (p.state == NodeState.ACTIVE and not p.members)
        status = PeerStatus(p.incarnation, owns, hears_us, verified, view, digest, forming)
        p.status_key, p.status = key, status
        return p.status

    def _losing_us(self, p: Peer) -> bool:
        """The other node of a two-node view has not heard us for a detection time less two
        intervals (as `_quiet_threshold` judges our own silence): it takes our buckets one
        interval or two from now. Not sooner: a loop step or two of delay on either side (a
        takeover's nft transaction) must not make us drop everything for a heartbeat."""
        interval = self.params.interval
        return (
            len(p.members) == 2
            and p.acks_us
            and p.our_age >= max(2 * interval, self.params.dead_after - 2 * interval)
            and {n for n, _w in p.members} == {p.node_id, self.node_id}
        )

    def _update_holdings(self, now: float) -> None:
        t = self._table
        # A peer that has not acked us yet is no recording when a counted peer relays it with
        # the same incarnation (it just heard us again), or when it is the successor of one we
        # knew (a planned restart): what it claims is held now.
        peers = {}
        for n, p in t.peers.items():  # all fresh: expired ones were dropped by this tick
            relayed = t.relayed.get(n)
            verified = p.verified or p.continuing
            verified = verified or (relayed is not None and relayed.incarnation == p.incarnation)
            peers[n] = self._status(p, verified)
        alive = t.alive
        unsure = frozenset(
            n for n, p in t.peers.items() if p.draining and p.kept_known < p.kept_said
        )
        frozen = any(r.frozen for r in t.relayed.values())
        settled = self._holdings.settle(now, peers, alive, unsure, frozen)
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

    def _notice(self, cause: str, now: float, text: str) -> None:
        notice = self._refusals.notice(cause, now, text)
        if notice is not None:
            self._events.append(notice)
