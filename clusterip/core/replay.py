"""Replay protection: per sender, the newest incarnation seen and the highest sequence in it.

Pure: the caller passes `now` (a monotonic clock, seconds).

Rules for an authenticated message (sender, incarnation, seq):
- unknown sender: accepted;
- same incarnation: accepted if seq is higher than any accepted before, or within the last
  WINDOW sequence numbers and not accepted before (every message type shares one sequence, so
  a KEPT sent right before a heartbeat may arrive after it: a sliding window, as IPsec's);
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
    LATE = "late, within the window"


WINDOW = 64


@dataclass
class _Sender:
    incarnation: int
    seq: int  # the highest accepted
    last_seen: float
    seen: int = 1  # bit i: seq - i was accepted


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
            behind = known.seq - seq
            if behind < WINDOW and not known.seen >> behind & 1:
                return Freshness.LATE
            raise Replay(f"node {sender}: seq {seq} already seen or too old (highest {known.seq})")
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
        if known is None or fresh is Freshness.NEW_INCARNATION:
            self._senders[sender] = _Sender(incarnation, seq, now)
        elif fresh is Freshness.LATE:
            known.seen |= 1 << (known.seq - seq)
            known.last_seen = now
        else:
            shift = seq - known.seq
            known.seen = ((known.seen << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            known.seq, known.last_seen = seq, now
        return fresh

    def advance(self, sender: int, incarnation: int, seq: int, now: float) -> bool:
        """Record `seq` if it is the next of the incarnation we know (the fast path); False
        (recording nothing) for anything else, which `admit` must judge."""
        known = self._senders.get(sender)
        if known is None or incarnation != known.incarnation or seq <= known.seq:
            return False
        shift = seq - known.seq
        known.seen = ((known.seen << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
        known.seq, known.last_seen = seq, now
        return True

    def current(self, sender: int) -> tuple[int, int] | None:
        """(incarnation, highest seq) accepted from `sender`, if any."""
        known = self._senders.get(sender)
        return None if known is None else (known.incarnation, known.seq)
