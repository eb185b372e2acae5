"""Refused messages: per-cause counters, rate-limited log lines, the refused-senders report,
and whether what was refused must make this node passive. Pure: `now` is passed in.

Passive causes. Nothing that cannot be authenticated, nor a valid message of another cluster
configuration, ever changes what a node serves once it has served: such messages are counted
and reported, never obeyed. Only a *new* node (one that has not served yet in this
incarnation) that hears them, and no valid member, holds back, and for a bounded time: until
`wait_until` (its listen period plus defaults.FOREIGN_WAIT), after which it serves, unless it
has reason to believe it is the odd one: a sender that claims to be active and started before
it (an older incarnation) is already serving this VIP with another configuration or key, so
the newcomer is the misconfigured one and stays passive (saying so) for as long as it hears
that sender (a forged header, a bad MAC under our own key id, is no such reason). An older
sender not serving yet gets one hold time past `wait_until` to start, so that two newcomers
started together do not both serve. A sender counts for `max(detection time, its interval x
tolerance)` after its last message. A node with our node id and a newer, authenticated
incarnation makes us passive for as long, whatever else holds (two processes must not serve
as one node).
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterip.core.events import Level, Notice, RefusedInfo
from clusterip.core.stats import RateLimiter, RejectStats, with_suppressed
from clusterip.core.wire import BadMac, ForeignFingerprint, NodeState, Rejected

MAX_REFUSED = 256  # senders remembered in the report (the oldest is dropped first)
LEVELS: dict[str, Level] = {
    "foreign_fingerprint": "error",
    "duplicate_node_id": "error",
    "bad_mac": "warning",
    "replay": "warning",
    "malformed": "warning",
}


@dataclass
class _Refusal:
    node_id: int | None
    cause: str
    detail: str
    count: int
    last_seen: float
    until: float  # counts towards passivity until then (0: never)
    incarnation: int = 0  # as its (possibly unauthenticated) header says
    active: bool = False  # its header claims it serves
    differs: str = ""  # which settings differ, where its configuration was readable


class Refusals:
    """What was refused, from whom, and the notices to log."""

    def __init__(
        self, *, dead_after: float, tolerance: int, log_every: float, key_id: bytes = b""
    ) -> None:
        self.stats = RejectStats()
        self._key_id = key_id  # ours: a bad MAC under it is corrupted or forged
        self._dead_after = dead_after
        self._tolerance = tolerance
        self._limiter = RateLimiter(log_every)
        self._refused: dict[tuple[str, int | None], _Refusal] = {}
        self._duplicate: tuple[float, str] | None = None  # (until, why)

    def refuse(
        self,
        exc: Rejected,
        src: str,
        now: float,
        node_id: int | None = None,
        interval_ms: int | None = None,
    ) -> tuple[bool, Notice | None]:
        """Count and record a refusal: (whether it may change passivity, the log line if due)."""
        cause = exc.cause
        self.stats.record(cause)
        header = exc.header
        if header is not None:
            node_id = header.node_id if node_id is None else node_id
            interval_ms = header.interval_ms if interval_ms is None else interval_ms
        key = (src, node_id)
        rec = self._refused.get(key)
        if rec is None:
            if len(self._refused) >= MAX_REFUSED:
                oldest = min(self._refused, key=lambda k: self._refused[k].last_seen)
                del self._refused[oldest]
            rec = self._refused[key] = _Refusal(node_id, cause, exc.detail, 0, now, 0.0)
        rec.cause, rec.detail, rec.count, rec.last_seen = cause, exc.detail, rec.count + 1, now
        passive = isinstance(exc, BadMac | ForeignFingerprint)
        if passive:
            rec.until = now + self._hold(interval_ms)
            # A bad MAC under our own key id is corrupted or forged: its header is a claim
            # nobody signed, never a reason to think this node is the odd one.
            forged = (
                isinstance(exc, BadMac) and header is not None and header.key_id == self._key_id
            )
            if header is not None and not forged:
                rec.incarnation = header.incarnation
                rec.active = header.state == NodeState.ACTIVE
        who = src if node_id is None else f"{src} (node {node_id})"
        detail = exc.detail + (f"; differs in {rec.differs}" if rec.differs else "")
        return passive, self.notice(cause, now, f"refused a message from {who}: {cause}: {detail}")

    def differs(self, src: str, node_id: int, what: str) -> None:
        """Which settings a refused sender has otherwise (from its CONFIG message)."""
        rec = self._refused.get((src, node_id))
        if rec is not None:
            rec.differs = what

    def duplicate(self, why: str, interval_ms: int, now: float) -> None:
        """Another node uses our id with a newer incarnation: passive for a while."""
        self._duplicate = (now + self._hold(interval_ms), why)

    def _hold(self, interval_ms: int | None) -> float:
        return max(self._dead_after, (interval_ms or 0) / 1000 * self._tolerance)

    def notice(self, cause: str, now: float, text: str) -> Notice | None:
        """The log line for `cause`, unless one went out less than the period ago."""
        suppressed = self._limiter.allow(cause, now)
        if suppressed is None:
            return None
        return Notice(LEVELS.get(cause, "warning"), cause, with_suppressed(text, suppressed))

    def passive_reason(
        self,
        now: float,
        *,
        has_valid_peer: bool,
        served: bool,
        wait_until: float,
        incarnation: int,
    ) -> str | None:
        """Why this node must stay passive now, or None (see the module doc)."""
        if self._duplicate is not None and now < self._duplicate[0]:
            return self._duplicate[1]
        if has_valid_peer or served:
            return None
        waiting = None
        for (addr, _), r in self._refused.items():
            if now >= r.until:
                continue
            differs = "; " + r.differs if r.differs else ""
            what = f"{r.cause.replace('_', ' ')} ({r.detail}{differs})"
            if r.active and 0 < r.incarnation < incarnation:
                return (
                    f"hears {addr} (node {r.node_id}), which serves this VIP since before this "
                    f"node started, with {what}: this node must be the misconfigured one"
                )
            # An older sender not serving yet will serve at its own wait_until, no later than
            # ours: wait one of its hold times more, to see it serve (and stay out) rather than
            # start serving at the same instant.
            until = wait_until + (r.until - r.last_seen if 0 < r.incarnation < incarnation else 0)
            if now < until and waiting is None:
                waiting = (
                    f"hears {addr} (node {r.node_id}) for this VIP with {what} and no valid "
                    f"member: waiting {until - now:.1f} s more before serving alone"
                )
        return waiting

    def deadlines(self, now: float) -> list[float]:
        """When a passive cause stops counting."""
        times = [r.until for r in self._refused.values() if r.until > now]
        if self._duplicate is not None and self._duplicate[0] > now:
            times.append(self._duplicate[0])
        return times

    def report(self) -> tuple[RefusedInfo, ...]:
        """Refused senders, the most recent first (with which settings differ, where known)."""
        return tuple(
            RefusedInfo(
                addr,
                r.node_id,
                r.cause,
                r.detail + (f"; differs in {r.differs}" if r.differs else ""),
                r.count,
                r.last_seen,
            )
            for (addr, _), r in sorted(self._refused.items(), key=lambda kv: -kv[1].last_seen)
        )
