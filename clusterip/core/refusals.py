"""Refused messages: per-cause counters, rate-limited log lines, the refused-senders report,
and whether what was refused must make this node passive. Pure: `now` is passed in.

Passive causes: a message for our VIP that we cannot authenticate (bad MAC) or that carries
another fingerprint counts for `max(detection time, its sender's interval x tolerance)`; the
membership goes passive while such a sender counts and no valid peer acks us. A node with our
node id and a newer incarnation makes us passive for as long, whatever the other peers say.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterip.core.events import Level, Notice, RefusedInfo
from clusterip.core.stats import RateLimiter, RejectStats, with_suppressed
from clusterip.core.wire import BadMac, ForeignFingerprint, Rejected

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


class Refusals:
    """What was refused, from whom, and the notices to log."""

    def __init__(self, *, dead_after: float, tolerance: int, log_every: float) -> None:
        self.stats = RejectStats()
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
        who = src if node_id is None else f"{src} (node {node_id})"
        return passive, self.notice(
            cause, now, f"refused a message from {who}: {cause}: {exc.detail}"
        )

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

    def passive_reason(self, now: float, has_valid_peer: bool) -> str | None:
        """Why this node must stay passive now, or None."""
        if self._duplicate is not None and now < self._duplicate[0]:
            return self._duplicate[1]
        if has_valid_peer:
            return None
        for (addr, _), r in self._refused.items():
            if now < r.until:
                return (
                    f"hears {addr} (node {r.node_id}) for this VIP with {r.cause.replace('_', ' ')}"
                    f" ({r.detail}) and no valid member: passive, so as not to answer alongside"
                    " the real members"
                )
        return None

    def deadlines(self, now: float) -> list[float]:
        """When a passive cause stops counting."""
        times = [r.until for r in self._refused.values() if r.until > now]
        if self._duplicate is not None and self._duplicate[0] > now:
            times.append(self._duplicate[0])
        return times

    def report(self) -> tuple[RefusedInfo, ...]:
        """Refused senders, the most recent first."""
        return tuple(
            RefusedInfo(addr, r.node_id, r.cause, r.detail, r.count, r.last_seen)
            for (addr, _), r in sorted(self._refused.items(), key=lambda kv: -kv[1].last_seen)
        )
