"""Which buckets this node holds, and the release-before-acquire rule for taking new ones.

Pure bookkeeping driven by the membership state machine:
- `reassign(owners, digest, incarnations, now)` after the assignment changed: the buckets
  assigned to us are the target; each newly targeted bucket remembers who owned it before (and
  that owner's incarnation), or that nobody did. The last few views are kept by digest.
- `settle(now, peers)` every full tick: release every held bucket outside the target at once;
  take a pending bucket as soon as no live peer can still hold it: every active peer announces
  either our view or one of our recent views in which the bucket is not its own (a peer holds
  only buckets its own view gives it, and releases before announcing a view). A peer in a view
  we do not know blocks the bucket until `handoff_time` has passed.

A gained bucket is *orphaned* when its previous owner is gone (dead, left, restarted) or there
was none: its established flows have no server any more. Otherwise it came from a live node,
which keeps serving its established flows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from clusterip.core.assign import assign
from clusterip.core.events import OwnershipChanged

NOBODY = 0  # node ids are 1..255


HISTORY = 8  # recent views remembered by digest


@dataclass(frozen=True)
class PeerStatus:
    """What `settle` needs to know about a live peer."""

    incarnation: int
    active: bool  # only an active peer holds buckets
    view_digest: bytes  # the view its latest heartbeat announced


@dataclass(frozen=True)
class _Pending:
    previous: int  # NOBODY: nobody owned it
    incarnation: int
    since: float


@dataclass(frozen=True)
class Settled:
    """The outcome of `settle`: the change to apply (if any) and forced takeovers per node."""

    change: OwnershipChanged | None
    timed_out: Mapping[int, int]


class Holdings:
    """Held and pending buckets of one node. Assignments are computed only when needed (a node
    that is not a member itself never needs its view's assignment, however often it changes)."""

    def __init__(self, node_id: int, buckets: int, handoff_time: float) -> None:
        self.node_id = node_id
        self.buckets = buckets
        self.handoff_time = handoff_time
        self._members: Mapping[int, int] = {}
        self._digest = b""
        self._history: dict[bytes, Mapping[int, int]] = {}  # recent views: digest -> members
        self._target: frozenset[int] = frozenset()
        self._held: frozenset[int] = frozenset()  # replaced, never mutated: stable identity
        self._pending: dict[int, _Pending] = {}

    @property
    def held(self) -> frozenset[int]:
        """The same object until the held buckets change (callers may compare by identity)."""
        return self._held

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self._pending)

    @property
    def waiting(self) -> bool:
        """Whether some assigned bucket is still waiting to be taken."""
        return bool(self._pending)

    def owners(self, members: Mapping[int, int] | None = None) -> tuple[int, ...]:
        """The assignment of `members` (default: the current view); () when nobody."""
        members = self._members if members is None else members
        return assign(members, self.buckets) if members else ()

    def deadlines(self) -> list[float]:
        return [w.since + self.handoff_time for w in self._pending.values()]

    def reassign(
        self,
        members: Mapping[int, int],
        digest: bytes,
        incarnations: Mapping[int, int],
        now: float,
    ) -> None:
        """The member set (node id -> weight) changed to `members`, whose digest is `digest`;
        `incarnations` are those of the previous members, as they were then."""
        previous = self._members
        self._members = members
        self._digest = digest
        self._history.pop(digest, None)
        self._history[digest] = members
        while len(self._history) > HISTORY:
            del self._history[next(iter(self._history))]
        me = self.node_id
        owners = self.owners() if me in members else ()
        self._target = frozenset(b for b, o in enumerate(owners) if o == me)
        for b in [b for b in self._pending if b not in self._target]:
            del self._pending[b]
        fresh = self._target - self._held - self._pending.keys()
        before = self.owners(previous) if fresh else ()
        for b in fresh:
            prev = before[b] if before else NOBODY
            if prev == me:  # we were assigned it but never took it: treat as unowned
                prev = NOBODY
            self._pending[b] = _Pending(prev, incarnations.get(prev, -1), now)

    def settle(self, now: float, peers: Mapping[int, PeerStatus]) -> Settled:
        """Release what is no longer ours; take what may be taken now (see module doc)."""
        gone = self._held - self._target
        owners = self.owners() if gone else ()
        lost = {b: (owners[b] if owners else None) for b in gone}
        if lost:
            self._held = self._held - frozenset(lost)
        gained: dict[int, int | None] = {}
        orphaned: set[int] = set()
        timed_out: dict[int, int] = {}
        may_hold = self._holders(peers)
        for b, wait in list(self._pending.items()):
            blockers = may_hold(b)
            if blockers:
                if now < wait.since + self.handoff_time:
                    continue
                for q in blockers:
                    timed_out[q] = timed_out.get(q, 0) + 1
            prev = peers.get(wait.previous)
            gained[b] = None if wait.previous == NOBODY else wait.previous
            if prev is None or prev.incarnation != wait.incarnation:
                orphaned.add(b)
            del self._pending[b]
        if gained:
            self._held = self._held | frozenset(gained)
        change = None
        if gained or lost:
            change = OwnershipChanged(self._held, gained, frozenset(orphaned), lost)
        return Settled(change, timed_out)

    def _holders(self, peers: Mapping[int, PeerStatus]) -> Callable[[int], list[int]]:
        """A function: bucket -> the live peers that may still hold it."""
        unknown: list[int] = []  # active in a view we do not know: may hold anything
        known: dict[bytes, set[int]] = {}  # active in one of our recent views
        for node, peer in peers.items():
            if not peer.active or peer.view_digest == self._digest:
                continue
            if peer.view_digest in self._history:
                known.setdefault(peer.view_digest, set()).add(node)
            else:
                unknown.append(node)
        views = [(self.owners(self._history[d]), n) for d, n in known.items() if self._history[d]]

        def may_hold(bucket: int) -> list[int]:
            out = list(unknown)
            for owners, nodes in views:
                if owners[bucket] in nodes:
                    out.append(owners[bucket])
            return out

        return may_hold
