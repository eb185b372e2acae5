"""Rejection counters and a rate limiter for log lines (pure: the caller passes `now`).

Like keepalived's per-cause counters: every refused datagram increments the counter of its
cause; the log line for a cause is emitted at most once per period, carrying how many were
suppressed since the last one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

from clusterip.core import defaults
from clusterip.core.wire import REJECT_CAUSES

DEFAULT_LOG_EVERY = defaults.LOG_EVERY


class RejectStats:
    """Count of refused messages per cause; every known cause is reported, zeros included."""

    def __init__(self, causes: Iterable[str] = REJECT_CAUSES) -> None:
        self._counts: Counter[str] = Counter(dict.fromkeys(causes, 0))

    def record(self, cause: str) -> int:
        """Count one rejection; returns the new count for that cause."""
        self._counts[cause] += 1
        return self._counts[cause]

    def count(self, cause: str) -> int:
        return self._counts[cause]

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> Mapping[str, int]:
        return dict(self._counts)


class RateLimiter:
    """At most one event per key per `period` seconds; counts the ones it suppresses."""

    def __init__(self, period: float = DEFAULT_LOG_EVERY) -> None:
        if period < 0:
            raise ValueError("period must not be negative")
        self._period = period
        self._last: dict[Hashable, float] = {}
        self._suppressed: Counter[Hashable] = Counter()

    def allow(self, key: Hashable, now: float) -> int | None:
        """If an event for `key` may go out now: how many were suppressed before it; else None."""
        last = self._last.get(key)
        if last is not None and now < last + self._period:
            self._suppressed[key] += 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def with_suppressed(text: str, suppressed: int) -> str:
    """`text`, plus "(N suppressed)" when some similar lines were held back."""
    return f"{text} ({suppressed} suppressed)" if suppressed else text
