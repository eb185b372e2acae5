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

from collections.abc import Mapping
from dataclasses import dataclass

from clusterip.agent.events import OwnershipChanged

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


class Ownership:
    """Held and pending buckets of one node."""

    def __init__(self, node_id: int, handoff_time: float) -> None:
        self.node_id = node_id
        self.handoff_time = handoff_time
        self._owners: tuple[int, ...] | None = None
        self._digest = b""
        self._history: dict[bytes, tuple[int, ...]] = {}  # digest -> owners (() = nobody)
        self._target: frozenset[int] = frozenset()
        self._held: set[int] = set()
        self._pending: dict[int, _Pending] = {}

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self._pending)

    @property
    def owners(self) -> tuple[int, ...] | None:
        """The current assignment (owner per bucket), None when nobody is assigned."""
        return self._owners

    def deadlines(self) -> list[float]:
        return [w.since + self.handoff_time for w in self._pending.values()]

    def reassign(
        self,
        owners: tuple[int, ...] | None,
        digest: bytes,
        incarnations: Mapping[int, int],
        now: float,
    ) -> None:
        """The assignment changed to `owners` (of the view `digest`); `incarnations` are those
        of the *previous* owners, as they were when the previous assignment was made."""
        previous = self._owners
        self._owners = owners
        self._digest = digest
        self._history.pop(digest, None)
        self._history[digest] = owners or ()
        while len(self._history) > HISTORY:
            del self._history[next(iter(self._history))]
        me = self.node_id
        self._target = frozenset(b for b, o in enumerate(owners or ()) if o == me)
        for b in [b for b in self._pending if b not in self._target]:
            del self._pending[b]
        for b in self._target - self._held - self._pending.keys():
            prev = previous[b] if previous is not None else NOBODY
            if prev == me:  # we were assigned it but never took it: treat as unowned
                prev = NOBODY
            self._pending[b] = _Pending(prev, incarnations.get(prev, -1), now)

    def settle(self, now: float, peers: Mapping[int, PeerStatus]) -> Settled:
        """Release what is no longer ours; take what may be taken now (see module doc)."""
        owners = self._owners
        lost = {b: (owners[b] if owners else None) for b in self._held - self._target}
        self._held -= lost.keys()
        gained: dict[int, int | None] = {}
        orphaned: set[int] = set()
        timed_out: dict[int, int] = {}
        for b, wait in list(self._pending.items()):
            blockers = [q for q, st in peers.items() if self._may_hold(q, st, b)]
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
        self._held |= gained.keys()
        change = None
        if gained or lost:
            change = OwnershipChanged(frozenset(self._held), gained, frozenset(orphaned), lost)
        return Settled(change, timed_out)

    def _may_hold(self, node: int, peer: PeerStatus, bucket: int) -> bool:
        if not peer.active or peer.view_digest == self._digest:
            return False
        owners = self._history.get(peer.view_digest)
        return owners is None or (bool(owners) and owners[bucket] == node)
