"""Who may still hold established flows of a bucket: the agent's flow-keeping bookkeeping.

Pure (the clock is passed in). The membership says which buckets this node owns; this decides
how the datapath treats them:
- draining: buckets we lost to a live node keep our established TCP flows until conntrack shows
  none left (a measurement taken after the drain began) or the drain timeout passes;
- orphaned: buckets taken over from a node that died get mid-flow TCP answered with a RST (so
  its clients reconnect at once), but only ORPHAN_RESET_DELAY after the takeover (a node
  declared dead by a stalled machine is back before that) and never where another live node
  may still keep flows: one that handed the bucket over, alive, within the drain window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from clusterip.agent.assign import assign
from clusterip.agent.events import OwnershipChanged
from clusterip.render import Ownership

ORPHAN_RESET_DELAY = 0.3
MIN_HOLD = 1.0  # an owner that held a bucket less than this has no flows worth keeping


@dataclass
class Handover:
    node_id: int
    buckets: int
    drain_window: float  # drain timeout + detection time
    drain: bool = True  # keep established flows of lost buckets (False: the naive move)
    draining: dict[int, float] = field(default_factory=dict)  # bucket (1-based) -> since
    orphaned: dict[int, float] = field(default_factory=dict)  # bucket (1-based) -> taken at
    orphaned_by: dict[int, tuple[int, int]] = field(default_factory=dict)  # -> (node, inc)
    gained_from: dict[int, tuple[int, float]] = field(default_factory=dict)  # -> (node, t)
    moved_from: dict[int, dict[int, float]] = field(default_factory=dict)  # 0-based -> {node: t}
    owners: tuple[int, ...] = ()  # the cluster-wide assignment last seen (0-based buckets)
    members: frozenset[tuple[int, int]] = frozenset()  # what `owners` was computed from
    orphaned_at: float = -1e18  # when buckets were last added to `orphaned`
    tenure: dict[int, float] = field(default_factory=dict)  # 0-based -> owner holds it since
    last_tenure: dict[int, tuple[int, float, float]] = field(default_factory=dict)  # (o, s, end)

    def peer_up(self, node: int, incarnation: int, now: float) -> None:
        # The same incarnation back (it was only silent for a while): its draining flows are
        # alive, so the buckets it handed us must not reset them after all.
        for b, who in list(self.orphaned_by.items()):
            if who == (node, incarnation):
                del self.orphaned_by[b]
                self.orphaned.pop(b, None)

    def peer_down(self, node: int, incarnation: int, now: float, alive: set[int]) -> None:
        """Buckets we took from `node` while it lived may carry the flows it was draining:
        they have no server now, so they get the orphan treatment."""
        for b, (prev, t) in list(self.gained_from.items()):
            if (
                prev == node
                and now - t <= self.drain_window
                and b not in self.orphaned
                and not self.others_may_hold(b - 1, now, alive, dead=node)
            ):
                self.orphaned[b] = now
                self.orphaned_at = now
                self.orphaned_by[b] = (node, incarnation)

    def others_may_hold(self, bucket: int, now: float, alive: set[int], dead: int = 0) -> bool:
        """Whether another live node may keep established flows of `bucket` (0-based)."""
        return any(
            node not in (self.node_id, dead) and node in alive and now - t <= self.drain_window
            for node, t in self.moved_from.get(bucket, {}).items()
        )

    def track(self, assigned: Mapping[int, int], alive: set[int], now: float) -> None:
        """Remember which buckets moved from a live member to another, and when.

        A move counts only if the old owner held the bucket for MIN_HOLD: not the instant
        after a cold start (everyone owns everything until they hear each other), not the
        moment a node held a bucket during someone's false alarm. A bucket that comes back to
        its owner soon after such a flap keeps that owner's original tenure.
        """
        if frozenset(assigned.items()) == self.members:
            return
        owners = assign(assigned, self.buckets) if assigned else ()
        if self.owners and owners:
            for b, (old, new) in enumerate(zip(self.owners, owners, strict=True)):
                if old == new:
                    continue
                since = self.tenure.get(b, now)
                if old in alive and now - since >= MIN_HOLD:
                    self.moved_from.setdefault(b, {})[old] = now
                back = self.last_tenure.get(b)
                self.last_tenure[b] = (old, since, now)
                if back is not None and back[0] == new and now - back[2] < MIN_HOLD:
                    self.tenure[b] = back[1]  # a flap undone: the tenure goes on
                else:
                    self.tenure[b] = now
        elif owners:
            self.tenure = dict.fromkeys(range(len(owners)), now)
        self.owners = owners
        self.members = frozenset(assigned.items())

    def changed(
        self, event: OwnershipChanged, assigned: Mapping[int, int], alive: set[int], now: float
    ) -> set[int]:
        """Take in an ownership change; returns the buckets (0-based) orphaned by it."""
        # "Nobody owned it" in our own view happens when we start or join: the bucket was
        # someone else's in the cluster's view without us. A live holder keeps its flows (not
        # orphaned); a cold start has no flows to reset anyway.
        others = {m: w for m, w in assigned.items() if m != self.node_id}
        without_us = assign(others, self.buckets) if others else ()
        fresh = {
            b
            for b in event.orphaned
            if event.gained.get(b) is not None and not self.others_may_hold(b, now, alive)
        }
        for b0, new_owner in event.lost.items():
            b = b0 + 1
            self.orphaned.pop(b, None)
            self.orphaned_by.pop(b, None)
            self.gained_from.pop(b, None)
            if new_owner is not None and self.drain:
                self.draining[b] = now  # moved to a live node: keep our established flows
        for b0, prev in event.gained.items():
            b = b0 + 1
            self.draining.pop(b, None)
            if b0 in fresh:
                self.orphaned.setdefault(b, now)
                self.orphaned_at = now
                continue
            holder = prev if prev is not None else (without_us[b0] if without_us else None)
            if holder is not None and holder in alive:
                self.gained_from[b] = (holder, now)
        return fresh

    def waiting(self, now: float) -> bool:
        """Whether an orphan's RST delay may expire soon (the datapath must be rechecked)."""
        return now - self.orphaned_at < ORPHAN_RESET_DELAY + 0.1

    def ownership(
        self,
        owned0: frozenset[int],
        now: float,
        flows: tuple[float, Mapping[int, int]] | None,
        timeout: float,
    ) -> Ownership:
        """What the datapath should hold now, given the membership's owned buckets (0-based)
        and the latest flow measurement (taken at, flows per 1-based bucket)."""
        owned = {b + 1 for b in owned0}
        for b in owned:
            self.draining.pop(b, None)
        if self.draining:
            taken, live = flows or (-1e18, {})
            for b, since in list(self.draining.items()):
                if (taken > since and live.get(b, 0) == 0) or now - since >= timeout:
                    del self.draining[b]
        resetting = {b for b, t in self.orphaned.items() if now - t >= ORPHAN_RESET_DELAY}
        return Ownership(
            self.buckets, frozenset(owned), frozenset(self.draining), frozenset(resetting & owned)
        )
