"""Whether this node may go on serving when it loses contact with peers: the isolation rule.

A node cut off from the others (its link down, its switch port down, a partition) must not take
the others' buckets, or both sides answer the same clients when the link comes back. It must
instead give up its own share before the majority takes it over, so that a heal never finds a
bucket owned twice. Pure: the caller passes `now` and what it sees.

- The *base* is the last known membership: the voters (this node and the members of its view)
  once they have been unchanged for `settle` seconds while this node had quorum; a larger set,
  all of it reached, is taken at once (so that a node that has just started is not a majority
  of itself). Graceful leaves shrink it at once (they said so); silence does not.
- Quorum: more than half of the base is reachable (in the view, directly or relayed by a peer,
  or cut off as well but heard: nodes isolated together must be able to recover together).
  Exactly half: in a two-node base, the node whose interface kept its carrier keeps quorum (a
  two-node cluster cannot tell a dead peer from a cut one without a third party; the node that
  lost its own carrier knows it is the cut one, and stays so until it hears its peer again, so
  that a link flap does not end with both serving); otherwise the half holding the lowest
  node id of the base keeps it (both halves decide the same without talking).
- No carrier on the cluster interface: never quorum.
- A node cut off for `isolation_limit` seconds with carrier (time without carrier does not
  count) concludes that the members it cannot reach are gone (a rack that lost power, not a
  partition) and starts over from what it reaches: availability after a bounded time, at the
  price that a partition of the heartbeat network lasting longer, with clients on both sides,
  is served twice.
- Suspects: a peer not heard for more than two intervals (but not yet dead) may be about to
  time out as well. When one peer has just died, the view change waits while the suspects'
  loss would cost quorum: an isolated node sees all its peers time out within one interval of
  each other (their heartbeats are spread over that interval), and must not take the first
  one's buckets just before it learns it is alone. A healthy survivor's other peers are not
  suspects, so its failover is not delayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def has_quorum(
    reachable: frozenset[int], base: frozenset[int], *, carrier: bool, was_cut: bool = False
) -> bool:
    """Whether `reachable` (this node included) may serve, given the last known `base`;
    `was_cut`: this node lost its carrier since it last reached a majority of the base."""
    if not carrier:
        return False
    if not base:
        return True
    alive = len(reachable & base)
    if alive * 2 > len(base):
        return True
    if alive * 2 == len(base):
        if len(base) == 2:  # the one that kept its carrier all along is not the cut one
            return not was_cut
        return min(base) in reachable
    return False


@dataclass
class Quorum:
    """The base and its bookkeeping for one node."""

    node_id: int
    settle: float
    base: frozenset[int] = frozenset()
    carrier: bool = True
    was_cut: bool = False  # lost carrier since it last reached a majority of the base
    _candidate: frozenset[int] = frozenset()
    _since: float = 0.0

    def __post_init__(self) -> None:
        self.base = self.base or frozenset({self.node_id})

    def left(self, node: int) -> None:
        """A node said goodbye (LEAVE): it no longer counts in the base."""
        if node != self.node_id and node in self.base:
            self.base = self.base - {node}

    def set_carrier(self, up: bool) -> None:
        self.carrier = up
        if not up:
            # Back with carrier and its peer timed out meanwhile, a node of a two-node base
            # must not think itself the survivor: it was the cut one, until it hears the peer.
            self.was_cut = True

    def judge(self, reachable: frozenset[int], now: float) -> bool:
        """Quorum for `reachable` now; moves the base on when the membership has settled."""
        if self.carrier and len(reachable & self.base) * 2 > len(self.base):
            self.was_cut = False
        ok = has_quorum(reachable, self.base, carrier=self.carrier, was_cut=self.was_cut)
        if ok and reachable > self.base:
            # More voters, all of them reached: no reason to wait (a node that just started
            # must not count as a majority of itself for a detection time after it listened).
            self.base = reachable
        if reachable != self._candidate:
            self._candidate, self._since = reachable, now
        elif ok and now >= self._since + self.settle and reachable != self.base:
            self.base = reachable
        return ok

    def judge_only(self, reachable: frozenset[int]) -> bool:
        """Quorum for `reachable`, without moving the base."""
        return has_quorum(reachable, self.base, carrier=self.carrier, was_cut=self.was_cut)

    def first_loss(self, reachable: frozenset[int], losses: Iterable[Iterable[int]]) -> int | None:
        """The index of the first of `losses` (each lost on top of those before it) after
        which `reachable` no longer has quorum; None if it keeps it throughout. Counts, so
        that a long list costs one pass (`judge_only` after each loss would be quadratic)."""
        if not self.carrier:
            return 0
        base = self.base
        if not base:
            return None
        reach = set(reachable)
        alive = len(reach & base)
        lowest = min(base)
        has_lowest = lowest in reach
        for i, lost in enumerate(losses):
            for n in lost:
                if n in reach:
                    reach.discard(n)
                    if n in base:
                        alive -= 1
                    if n == lowest:
                        has_lowest = False
            tie_kept = (not self.was_cut) if len(base) == 2 else has_lowest
            if alive * 2 > len(base) or (alive * 2 == len(base) and tie_kept):
                continue
            return i
        return None

    def deadline(self) -> float | None:
        """When the base may next move (for the caller's timer), if it may."""
        if self._candidate != self.base:
            return self._since + self.settle
        return None

    def must_wait(self, reachable: frozenset[int], suspects: Iterable[int]) -> bool:
        """Whether losing the suspects too would cost quorum (so a view change should wait)."""
        pessimistic = reachable - frozenset(suspects)
        return pessimistic != reachable and not has_quorum(
            pessimistic, self.base, carrier=self.carrier, was_cut=self.was_cut
        )

    isolated_since: float | None = None

    def give_up_waiting(self, reachable: frozenset[int], now: float, limit: float) -> bool:
        """Track how long quorum has been missing; after `limit` with carrier, reset the base
        to what is reachable (True when that happened now). Only time cut off *with* carrier
        counts: a node whose own link was down has no reason to think the others are gone."""
        if self.isolated_since is None or not self.carrier:
            self.isolated_since = now if self.carrier else None
            return False
        if now >= self.isolated_since + limit:  # the very sum the caller's timer was set to
            self.force(reachable)
            return True
        return False

    def force(self, reachable: frozenset[int]) -> None:
        """An operator's word that the missing members are gone for good."""
        self.base = reachable
        self._candidate = reachable
        self.isolated_since = None
        self.was_cut = False
