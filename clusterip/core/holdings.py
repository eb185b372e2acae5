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
  heard steps back).

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
        self._target: frozenset[int] = frozenset()
        self._held: frozenset[int] = frozenset()  # replaced, never mutated
        self._pending: dict[int, _Pending] = {}

    @property
    def held(self) -> frozenset[int]:
        return self._held

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self._pending)

    @property
    def waiting(self) -> bool:
        """Whether some assigned bucket is still waiting to be taken."""
        return bool(self._pending)

    def deadlines(self) -> list[float]:
        return [w.since + self.handoff_time for w in self._pending.values()]

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
    ) -> Settled:
        """Release what is no longer ours; take what may be taken now (see module doc).

        `peers`: the peers heard directly; `alive`: every live node this node knows of,
        directly or relayed (node id -> incarnation); `unsure`: peers that drain and whose
        latest announcement of the flows they keep we do not have whole yet: their buckets
        wait for it (for `handoff_time` + KEPT_TTL at most), so that nothing they keep is
        answered here first.
        """
        lost: dict[int, int | None] = {}
        for b in self._held - self._target:
            owner = owner_of(self._members, self.buckets, b) if self._members else NOBODY
            lost[b] = owner or None
        for node, peer in peers.items():
            if peer.verified and not peer.hears_us and peer.claims:
                for b in (self._held - lost.keys()) & peer.claims:
                    lost[b] = node  # it cannot hear us, so it keeps it: we step back,
                    self._pending[b] = _Pending(node, peer.incarnation, now)  # until it lets go
        if lost:
            self._held = self._held - frozenset(lost)
        gained: dict[int, int | None] = {}
        orphaned: set[int] = set()
        overdue: dict[int, int] = {}
        claimed = [(n, p.claims) for n, p in peers.items() if p.claims and p.verified]
        # Views that differ from ours: while one gives a bucket to another live node, that node
        # may be taking it right now under that view (two gainers, neither has announced yet).
        elsewhere: list[tuple[int, ...]] = []
        if self._pending:
            mine = tuple(sorted(self._members.items()))
            views = {p.view for p in peers.values() if p.verified and p.view and p.view != mine}
            elsewhere = [_owners(v, self.buckets) for v in views]
        for b, wait in list(self._pending.items()):
            if b in lost:
                continue
            blockers = [n for n, c in claimed if b in c]
            if blockers:
                if now >= wait.since + self.handoff_time:
                    for n in blockers:
                        overdue[n] = overdue.get(n, 0) + 1
                continue
            if now < wait.since + self.handoff_time and any(
                owners[b - 1] not in (NOBODY, self.node_id) and owners[b - 1] in alive
                for owners in elsewhere
            ):
                continue  # views still differ: wait for them to agree (at most handoff_time)
            prev = wait.previous
            if prev in unsure and now < wait.since + self.handoff_time + KEPT_TTL:
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
