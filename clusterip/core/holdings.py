"""Which buckets this node holds, and the release-before-acquire rule for taking new ones.

Pure bookkeeping driven by the membership state machine. Buckets are 1-based, as the datapath
numbers them (`jhash ... offset 1`); `assign()` returns a tuple indexed from 0, and `claims()`
is the one place that converts.

- `reassign(members, digest, incarnations, now)` after the view changed: the buckets the view
  assigns to us are the target; each newly targeted bucket remembers who owned it before (and
  that owner's incarnation), or that nobody did.
- `settle(now, peers, alive)` every full tick: release every held bucket outside the target at
  once; take a pending bucket as soon as no peer we hear claims it. Every heartbeat carries its
  sender's member list, so its claims are known exactly: the buckets its view assigns to it (a
  node holds only buckets its own view gives it, and releases before announcing a view). A
  bucket whose previous owner we know only through other nodes (we cannot hear it) waits
  `handoff_time` first.
- A held bucket claimed by an active peer that does not hear us is given up: that peer cannot
  know about us and keeps it (with one-way loss in a two-node cluster, the node that is not
  heard steps back). Its flows are not kept (lost to nobody): the peer takes the bucket as
  from a dead node and cannot hear what we would announce as kept.

A gained bucket is *orphaned* when its previous owner is gone (dead, left) or there was none:
its established flows have no server any more. Otherwise it came from a live node, which keeps
serving its established flows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from clusterip.core.assign import assign
from clusterip.core.defaults import KEPT_TTL
from clusterip.core.events import OwnershipChanged
from clusterip.core.fingerprint import view_digest

NOBODY = 0  # node ids are 1..255


@lru_cache(maxsize=64)
def _owners(members: tuple[tuple[int, int], ...], buckets: int) -> tuple[int, ...]:
    return assign(dict(members), buckets) if members else ()


@lru_cache(maxsize=512)
def _claims(members: tuple[tuple[int, int], ...], buckets: int, node: int) -> frozenset[int]:
    return frozenset(b for b, o in enumerate(_owners(members, buckets), start=1) if o == node)


def claims(members: Mapping[int, int], buckets: int, node: int) -> frozenset[int]:
    """The buckets (1-based) that the view `members` (node id -> weight) gives `node`."""
    return _claims(tuple(sorted(members.items())), buckets, node)


def owner_of(members: Mapping[int, int], buckets: int, bucket: int) -> int:
    """Who the view `members` gives `bucket` (1-based) to; NOBODY for an empty view."""
    owners = _owners(tuple(sorted(members.items())), buckets)
    return owners[bucket - 1] if owners else NOBODY


@dataclass(frozen=True)
class PeerStatus:
    """What `settle` needs to know about a peer it hears directly."""

    incarnation: int
    claims: frozenset[int]  # buckets its announced view gives it (empty unless it is active)
    hears_us: bool  # its heartbeats ack our incarnation
    verified: bool  # this incarnation has acked ours at least once (not a recording)
    view: tuple[tuple[int, int], ...] = ()  # the member list it announced (empty unless active)
    digest: bytes | None = None  # view_digest(view), as its heartbeat says (None: compute)
    forming: bool = False  # no view announced yet, but about to take or hold buckets

    def view_id(self) -> bytes:
        return self.digest if self.digest is not None else view_digest(dict(self.view))


@dataclass(frozen=True)
class _Pending:
    previous: int  # NOBODY: nobody owned it
    incarnation: int
    since: float


@dataclass(frozen=True)
class Settled:
    """The outcome of `settle`: the change to apply (if any), and buckets still waiting for a
    peer that claims them although `handoff_time` passed (node -> count)."""

    change: OwnershipChanged | None
    overdue: Mapping[int, int]


class Holdings:
    """Held and pending buckets of one node."""

    def __init__(self, node_id: int, buckets: int, handoff_time: float) -> None:
        self.node_id = node_id
        self.buckets = buckets
        self.handoff_time = handoff_time
        self._members: Mapping[int, int] = {}
        self._digest = view_digest({})
        self._target: frozenset[int] = frozenset()
        self._held: frozenset[int] = frozenset()  # replaced, never mutated
        self._pending: dict[int, _Pending] = {}

    @property
    def held(self) -> frozenset[int]:
        return self._held

    @property
    def target(self) -> frozenset[int]:
        """What this node should hold (its share of the view, or what it adopted)."""
        return self._target

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self._pending)

    @property
    def waiting(self) -> bool:
        """Whether some assigned bucket is still waiting to be taken."""
        return bool(self._pending)

    def deadlines(self) -> list[float]:
        """When a pending bucket's waits end: the handoff time, and the longer wait for a
        draining peer's announcement of what it keeps (`settle`'s `unsure`)."""
        times = [w.since + self.handoff_time for w in self._pending.values()]
        return times + [t + KEPT_TTL for t in times]

    def adopt(self, held: frozenset[int]) -> None:
        """Continue a predecessor (planned restart): hold what it held, as it held it."""
        self._held = frozenset(held)
        self._target = self._held

    def reassign(
        self,
        members: Mapping[int, int],
        incarnations: Mapping[int, int],
        now: float,
    ) -> None:
        """The view (node id -> weight) changed to `members`; `incarnations` are those of the
        previous members, as they were then."""
        previous = self._members
        self._members = dict(members)
        self._digest = view_digest(self._members)
        me = self.node_id
        self._target = claims(members, self.buckets, me) if me in members else frozenset()
        for b in [b for b in self._pending if b not in self._target]:
            del self._pending[b]
        for b in self._target - self._held - self._pending.keys():
            prev = owner_of(previous, self.buckets, b) if previous else NOBODY
            if prev == me:  # assigned to us before but never taken: nobody had it
                prev = NOBODY
            self._pending[b] = _Pending(prev, incarnations.get(prev, -1), now)

    def continued(self, node: int, old: int, new: int) -> None:
        """A peer's successor continues it under a new incarnation (planned restart)."""
        for b, wait in list(self._pending.items()):
            if wait.previous == node and wait.incarnation == old:
                self._pending[b] = _Pending(node, new, wait.since)

    def settle(
        self,
        now: float,
        peers: Mapping[int, PeerStatus],
        alive: Mapping[int, int],
        unsure: frozenset[int] = frozenset(),
        frozen: bool = False,
    ) -> Settled:
        """Release what is no longer ours; take what may be taken now (see module doc).

        `peers`: the peers heard directly; `alive`: every live node this node knows of,
        directly or relayed (node id -> incarnation); `unsure`: peers that drain and whose
        latest announcement of the flows they keep we do not have whole yet: their buckets
        wait for it (for `handoff_time` + KEPT_TTL at most), so that nothing they keep is
        answered here first. `frozen`: a node we only know through others is in a planned
        restart, and serves on, unknown to us, what it held: buckets that nobody had in our
        view wait for it to be heard (its successor) or gone.
        """
        lost: dict[int, int | None] = {}
        for b in self._held - self._target:
            owner = owner_of(self._members, self.buckets, b) if self._members else NOBODY
            # A new owner that cannot hear us cannot hear what we keep either (step back below)
            deaf = owner in peers and not peers[owner].hears_us
            lost[b] = None if owner == NOBODY or deaf else owner
        for node, peer in peers.items():
            if peer.verified and not peer.hears_us and peer.claims:
                for b in (self._held - lost.keys()) & peer.claims:
                    # It cannot hear us, so it keeps it: we step back until it lets go. It
                    # takes it as from a dead node (our flows are orphans there, and what we
                    # would announce as kept never reaches it): nobody to keep flows for.
                    lost[b] = None
                    self._pending[b] = _Pending(node, peer.incarnation, now)
        if lost:
            self._held = self._held - frozenset(lost)
        gained: dict[int, int | None] = {}
        orphaned: set[int] = set()
        overdue: dict[int, int] = {}
        claimed: list[tuple[int, frozenset[int]]] = []
        # Views that differ from ours: while one gives a bucket to another live node, that node
        # may be taking it right now under that view (two gainers, neither has announced yet).
        elsewhere: list[tuple[int, ...]] = []
        forming = False
        if self._pending:
            forming = any(p.forming for p in peers.values())  # (bounded: no proof needed)
            claimed = [(n, p.claims) for n, p in peers.items() if p.claims and p.verified]
            views = {
                d: p.view
                for p in peers.values()
                if p.verified and p.view and (d := p.view_id()) != self._digest
            }
            elsewhere = [_owners(v, self.buckets) for v in views.values()]
        for b, wait in list(self._pending.items()):
            if b in lost:
                continue
            blockers = [n for n, c in claimed if b in c]
            if blockers and wait.previous not in blockers:
                # Our previous view says another node (or nobody) had it, but this live peer
                # holds it now: it is the owner we take it from (it keeps its flows).
                n = blockers[0]
                self._pending[b] = wait = _Pending(n, peers[n].incarnation, wait.since)
            if blockers:
                if now >= wait.since + self.handoff_time:
                    for n in blockers:
                        overdue[n] = overdue.get(n, 0) + 1
                continue
            if now < wait.since + self.handoff_time and (
                forming
                or any(
                    owners[b - 1] not in (NOBODY, self.node_id) and owners[b - 1] in alive
                    for owners in elsewhere
                )
            ):
                # Views still differ (or a peer's is not known yet: it turned active and takes
                # its share in a moment): wait for them to agree (at most handoff_time).
                continue
            if unsure and now < wait.since + self.handoff_time + KEPT_TTL:
                # A peer drains and we lack its latest announcement of what it keeps: it may
                # keep flows of this bucket (it may have had it before the owner we know of,
                # or while we were cut off), which we must not answer.
                continue
            prev = wait.previous
            if frozen and prev == NOBODY:
                continue
            unheard = prev not in (NOBODY, self.node_id) and prev in alive and prev not in peers
            if unheard and now < wait.since + self.handoff_time:
                continue  # a live owner we cannot hear: time to see the new view and release
            gained[b] = None if prev == NOBODY else prev
            if alive.get(prev) != wait.incarnation:
                orphaned.add(b)
            del self._pending[b]
        if gained:
            self._held = self._held | frozenset(gained)
        change = None
        if gained or lost:
            change = OwnershipChanged(self._held, gained, frozenset(orphaned), lost)
        return Settled(change, overdue)
