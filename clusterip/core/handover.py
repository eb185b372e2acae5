"""Who may still hold established flows of a bucket: the agent's flow-keeping bookkeeping.

Pure (the clock is passed in). The membership says which buckets this node owns; this decides
how the datapath treats them:
- draining: buckets we lost to a live node keep our established flows until none is left (a
  count of this node's sockets and UDP flows taken after the drain began) or the drain timeout
  passes;
- guarded: buckets we gained from a live node, which keeps its flows of them: mid-flow TCP with
  no socket here is dropped, never reset (the flows it announced are dropped before that, at
  ingress). Guarded for GUARD_TIME after the gain, and as long as any node announces kept
  flows;
- orphaned: buckets taken over from a node that died get mid-flow TCP answered with a RST (so
  its clients reconnect at once), but only ORPHAN_RESET_DELAY after the takeover (a node
  declared dead by a stalled machine is back before that). Flows another live node keeps
  there are safe: it announced them (clusterip.core.kept) and every node drops them at
  ingress, so they never reach the RST.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from clusterip.core import defaults
from clusterip.core.events import OwnershipChanged
from clusterip.core.ownership import Ownership

ORPHAN_RESET_DELAY = defaults.ORPHAN_RESET_DELAY
GUARD_TIME = 10.0  # a gained bucket's socket check lasts at least this long
AFTER_DEATH = defaults.AFTER_DEATH


@dataclass
class Handover:
    node_id: int
    buckets: int
    drain_window: float  # drain timeout + detection time
    drain: bool = True  # keep established flows of lost buckets (False: the naive move)
    draining: dict[int, float] = field(default_factory=dict)  # bucket (1-based) -> since
    orphaned: dict[int, float] = field(default_factory=dict)  # bucket (1-based) -> taken at
    orphaned_by: dict[int, tuple[int, int]] = field(default_factory=dict)  # -> (node, inc)
    guarded: dict[int, float] = field(default_factory=dict)  # bucket (1-based) -> gained at
    orphaned_at: float = -1e18  # when buckets were last added to `orphaned`
    death: tuple[int, int, float] = (0, 0, -1e18)  # the last node that died: (id, inc, when)

    def peer_up(self, node: int, incarnation: int, now: float) -> None:
        # The same incarnation back (it was only silent for a while): its draining flows are
        # alive, so the buckets it handed us must not reset them after all.
        for b, who in list(self.orphaned_by.items()):
            if who == (node, incarnation):
                del self.orphaned_by[b]
                self.orphaned.pop(b, None)

    def peer_down(self, node: int, incarnation: int, now: float, owned: set[int]) -> None:
        """A node died: the flows it kept anywhere (it may have been draining a bucket that
        has since moved on, through several owners) have no server now. Every bucket we own
        (1-based) gets the orphan treatment: a mid-flow packet with no socket here
        that no live node announced as kept can only be the dead node's."""
        for b in owned:
            if b not in self.orphaned:
                self.orphaned[b] = now
                self.orphaned_by[b] = (node, incarnation)
        self.orphaned_at = now
        self.death = (node, incarnation, now)

    def changed(self, event: OwnershipChanged, now: float) -> set[int]:
        """Take in an ownership change; returns the buckets (0-based) orphaned by it.

        "Nobody owned it" in our own view (we start or join) is no orphan: the bucket was
        someone else's, who keeps and announces its flows; a cold start has none to reset.
        """
        fresh = {b for b in event.orphaned if event.gained.get(b) is not None}
        for b0, new_owner in event.lost.items():
            b = b0 + 1
            self.orphaned.pop(b, None)
            self.orphaned_by.pop(b, None)
            self.guarded.pop(b, None)
            if new_owner is not None and self.drain:
                self.draining[b] = now  # moved to a live node: keep our established flows
        node, incarnation, died = self.death
        for b0 in event.gained:
            b = b0 + 1
            self.draining.pop(b, None)
            if b0 in fresh:
                self.orphaned.setdefault(b, now)
                self.orphaned_at = now
            elif now - died <= AFTER_DEATH and b not in self.orphaned:
                # The survivors' assignment settles in a few moves after a death: a bucket
                # that reaches us from a live node may still carry the dead node's flows.
                self.orphaned[b] = now
                self.orphaned_by[b] = (node, incarnation)
                self.orphaned_at = now
            else:
                self.guarded[b] = now
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
        kept: bool = False,
    ) -> Ownership:
        """What the datapath should hold now, given the membership's owned buckets (0-based),
        the latest flow measurement (taken at, flows per 1-based bucket) and whether any other
        node announces kept flows."""
        owned = {b + 1 for b in owned0}
        for b in owned:
            self.draining.pop(b, None)
        if self.draining:
            taken, live = flows or (-1e18, {})
            for b, since in list(self.draining.items()):
                if (taken > since and live.get(b, 0) == 0) or now - since >= timeout:
                    del self.draining[b]
        resetting = {b for b, t in self.orphaned.items() if now - t >= ORPHAN_RESET_DELAY}
        for b, t in list(self.guarded.items()):
            if b not in owned or (now - t >= GUARD_TIME and not kept):
                del self.guarded[b]
        # An orphan waiting for its RST delay is guarded: mid-flow packets are dropped meanwhile.
        waiting = (set(self.orphaned) - resetting) & owned
        guarded = (set(self.guarded) | waiting) - resetting
        return Ownership(
            self.buckets,
            frozenset(owned),
            frozenset(self.draining),
            frozenset(resetting & owned),
            guarded=frozenset(guarded & owned),
        )
