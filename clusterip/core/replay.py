"""Replay protection: per sender, the newest incarnation seen and the highest sequence in it.

Pure: the caller passes `now` (a monotonic clock, seconds).

Rules for an authenticated message (sender, incarnation, seq):
- unknown sender: accepted;
- same incarnation: accepted only if seq is higher than any accepted before (a late or
  duplicated datagram is dropped too: the newer one already said more);
- newer incarnation: accepted (the sender restarted), its sequence starts over;
- older incarnation: refused ("old incarnation"), unless the sender has been silent for
  `forget_after` seconds (the incarnation freshness window): then its state is forgotten, so a
  node whose clock stepped back across a restart can rejoin after that long.

What this cannot see by itself, traffic recorded before this node started, is handled by the
membership: a peer counts only once its heartbeats ack this node's own incarnation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from clusterip.core import defaults
from clusterip.core.wire import Replay

DEFAULT_FORGET_AFTER = defaults.REPLAY_FORGET_AFTER


class Freshness(Enum):
    NEW_SENDER = "new sender"
    NEW_INCARNATION = "new incarnation"
    NEXT = "next in sequence"


@dataclass
class _Sender:
    incarnation: int
    seq: int
    last_seen: float


class ReplayGuard:
    """Remembers, per sender id, the incarnation and highest sequence accepted."""

    def __init__(self, *, forget_after: float = DEFAULT_FORGET_AFTER) -> None:
        if forget_after <= 0:
            raise ValueError("forget_after must be positive")
        self._forget_after = forget_after
        self._senders: dict[int, _Sender] = {}

    def check(self, sender: int, incarnation: int, seq: int, now: float) -> Freshness:
        """Classify a message without recording it; raises Replay if it must be refused."""
        known = self._senders.get(sender)
        if known is None:
            return Freshness.NEW_SENDER
        if incarnation == known.incarnation:
            if seq > known.seq:
                return Freshness.NEXT
            raise Replay(f"node {sender}: seq {seq} not above {known.seq} (late or replayed)")
        if incarnation > known.incarnation:
            return Freshness.NEW_INCARNATION
        if now - known.last_seen >= self._forget_after:
            return Freshness.NEW_INCARNATION
        raise Replay(
            f"node {sender}: old incarnation {incarnation} (current {known.incarnation}); "
            "replayed, or restarted with its clock stepped back"
        )

    def admit(self, sender: int, incarnation: int, seq: int, now: float) -> Freshness:
        """Check and record; raises Replay (and records nothing) if refused."""
        fresh = self.check(sender, incarnation, seq, now)
        known = self._senders.get(sender)
        if known is None:
            self._senders[sender] = _Sender(incarnation, seq, now)
        else:
            known.incarnation, known.seq, known.last_seen = incarnation, seq, now
        return fresh

    def current(self, sender: int) -> tuple[int, int] | None:
        """(incarnation, highest seq) accepted from `sender`, if any."""
        known = self._senders.get(sender)
        return None if known is None else (known.incarnation, known.seq)
