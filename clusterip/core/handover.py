"""Who may still hold established flows of a bucket: the agent's flow-keeping bookkeeping.

Pure (the clock is passed in); buckets 1-based. The membership says which buckets this node
holds; this decides how the datapath treats them (clusterip.core.ownership.Ownership):
- draining: buckets we handed to a live node keep our established flows (the datapath accepts
  their mid-flow packets only for flows this node owns) until none is left (a count of this
  node's flows taken after the drain began) or the drain timeout passes;
- guarded: buckets we gained from a live node, which keeps its flows of them: the datapath
  accepts their new connections, and their mid-flow packets only for flows this node owns, so
  the old owner's flows are neither accepted nor reset here. Guarded for GUARD_TIME after the
  gain, and as long as a live peer says it drains (its heartbeat flag);
- orphaned: buckets taken over from a node that died: unknown mid-flow TCP is answered with a
  RST (so its clients reconnect at once), but only ORPHAN_RESET_DELAY after the takeover (a
  node declared dead by a stalled machine is back before that). After a death, every bucket
  we hold is treated so: the dead node may have been draining any of them. Flows a live node
  keeps are safe: it announced them (clusterip.core.kept) and they are dropped at ingress
  before the RST. If a live peer drains but we have not heard what it keeps, no bucket resets
  (it stays guarded): a lost announcement delays a RST, it never resets a live node's flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from clusterip.core import defaults
from clusterip.core.events import OwnershipChanged
from clusterip.core.ownership import Ownership

ORPHAN_RESET_DELAY = defaults.ORPHAN_RESET_DELAY
GUARD_TIME = 10.0  # a gained bucket stays guarded at least this long
AFTER_DEATH = defaults.AFTER_DEATH
EPS = 1e-6  # timers are floats: a deadline met "exactly" must count as met
GONE = (0, 0)  # an orphan's cause: its previous owner is gone for good (left, or nobody)


@dataclass
class Handover:
    node_id: int
    buckets: int
    drain_window: float  # drain timeout + detection time
    drain: bool = True  # keep established flows of lost buckets (False: the naive move)
    draining: dict[int, float] = field(default_factory=dict)  # bucket -> since
    orphaned: dict[int, float] = field(default_factory=dict)  # bucket -> its latest cause since
    # bucket -> why: the deaths (node, incarnation) whose flows may be there, GONE when its
    # previous owner is gone for good. A cause that turns out alive is dropped (peer_up).
    orphaned_by: dict[int, set[tuple[int, int]]] = field(default_factory=dict)
    guarded: dict[int, float] = field(default_factory=dict)  # bucket -> gained at
    orphaned_at: float = -1e18  # when buckets were last added to `orphaned`
    death: tuple[int, int, float] = (0, 0, -1e18)  # the last node that died: (id, inc, when)

    def adopt(self, own: Ownership, now: float) -> None:
        """Continue a predecessor's datapath state (planned restart)."""
        self.draining = dict.fromkeys(own.draining, now)
        self.guarded = dict.fromkeys(own.guarded, now)
        self.orphaned = dict.fromkeys(own.orphaned, now - ORPHAN_RESET_DELAY)
        self.orphaned_by = {b: {GONE} for b in own.orphaned}

    def peer_up(self, node: int, incarnation: int, now: float) -> None:
        # The same incarnation back (it was only silent for a while): its draining flows are
        # alive, so the buckets it handed us must not reset them after all.
        for b, why in list(self.orphaned_by.items()):
            why.discard((node, incarnation))
            if not why:
                del self.orphaned_by[b]
                self.orphaned.pop(b, None)
        if self.death[:2] == (node, incarnation):
            self.death = (0, 0, -1e18)  # it did not die: what we gain next is no orphan

    def continued(self, node: int, old: int, new: int) -> None:
        for why in self.orphaned_by.values():
            if (node, old) in why:
                why.discard((node, old))
                why.add((node, new))

    def peer_down(self, node: int, incarnation: int, now: float, owned: frozenset[int]) -> None:
        """A node died: the flows it kept anywhere (it may have been draining a bucket that
        has since moved on, through several owners) have no server now. Every bucket we own
        gets the orphan treatment: a mid-flow packet that is not ours and that no live node
        announced as kept can only be the dead node's. Its delay starts now, also for buckets
        orphaned before: the new dead node's flows may be there, and it may only be stalled."""
        for b in owned:
            self.orphaned[b] = now
            self.orphaned_by.setdefault(b, set()).add((node, incarnation))
        self.orphaned_at = now
        self.death = (node, incarnation, now)

    def changed(self, event: OwnershipChanged, now: float) -> set[int]:
        """Take in an ownership change; returns the buckets orphaned by it.

        "Nobody owned it" in our own view (we start or join) is no orphan: the bucket was
        someone else's, who keeps and announces its flows; a cold start has none to reset.
        """
        fresh = {b for b in event.orphaned if event.gained.get(b) is not None}
        for b, new_owner in event.lost.items():
            self.orphaned.pop(b, None)
            self.orphaned_by.pop(b, None)
            self.guarded.pop(b, None)
            if new_owner is not None and self.drain and event.drain:
                self.draining[b] = now  # moved to a live node: keep our established flows
            else:
                self.draining.pop(b, None)
        if not event.drain:
            self.draining.clear()  # we stop serving altogether: others take the flows over
        node, incarnation, died = self.death
        for b in event.gained:
            self.draining.pop(b, None)
            if b in fresh:
                self.orphaned.setdefault(b, now)
                self.orphaned_by.setdefault(b, set()).add(GONE)
                self.orphaned_at = now
            elif now - died <= AFTER_DEATH and b not in self.orphaned:
                # The survivors' assignment settles in a few moves after a death: a bucket
                # that reaches us from a live node may still carry the dead node's flows.
                self.orphaned[b] = now
                self.orphaned_by[b] = {(node, incarnation)}
                self.orphaned_at = now
            else:
                self.guarded[b] = now
        return fresh

    def deadlines(self, now: float, timeout: float) -> list[float]:
        """When `ownership` may next give another answer with the same inputs."""
        times = [t + ORPHAN_RESET_DELAY for t in self.orphaned.values()]
        times += [t + GUARD_TIME for t in self.guarded.values()]
        times += [t + timeout for t in self.draining.values()]
        return [t + EPS for t in times if t + EPS > now]

    def ownership(
        self,
        owned: frozenset[int],
        now: float,
        flows: tuple[float, Mapping[int, int]] | None,
        timeout: float,
        *,
        kept: frozenset[tuple[str, int]] = frozenset(),
        others_draining: bool = False,
        unannounced: bool = False,
    ) -> Ownership:
        """What the datapath should hold now, given the membership's owned buckets, the latest
        flow measurement (taken at, flows per bucket), the flows other nodes announce as kept,
        whether a live peer drains, and whether one drains without having told us what."""
        for b in owned:
            self.draining.pop(b, None)
        if self.draining:
            taken, live = flows or (-1e18, {})
            for b, since in list(self.draining.items()):
                if (taken > since and live.get(b, 0) == 0) or now - since >= timeout - EPS:
                    del self.draining[b]
        resetting = set()
        if not unannounced:
            resetting = {b for b, t in self.orphaned.items() if now - t >= ORPHAN_RESET_DELAY - EPS}
        for b, t in list(self.guarded.items()):
            if b not in owned or (now - t >= GUARD_TIME - EPS and not others_draining):
                del self.guarded[b]
        for b in [b for b in self.orphaned if b not in owned]:
            del self.orphaned[b]
            self.orphaned_by.pop(b, None)
        # An orphan waiting for its RST delay is guarded: mid-flow packets are dropped meanwhile.
        waiting = (set(self.orphaned) - resetting) & owned
        guarded = (set(self.guarded) | waiting) - resetting
        return Ownership(
            self.buckets,
            owned,
            frozenset(self.draining),
            frozenset(resetting & owned),
            kept=kept,
            guarded=frozenset(guarded & owned),
        )
