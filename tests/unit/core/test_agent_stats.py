"""Rejection counters and the rate-limited log helper."""

from __future__ import annotations

import pytest

from clusterip.core.stats import RateLimiter, RejectStats, with_suppressed
from clusterip.core.wire import REJECT_CAUSES


def test_counts_per_cause_with_zeros() -> None:
    s = RejectStats()
    assert s.as_dict() == dict.fromkeys(REJECT_CAUSES, 0)
    assert s.record("bad_mac") == 1
    assert s.record("bad_mac") == 2
    s.record("replay")
    assert s.count("bad_mac") == 2
    assert s.count("malformed") == 0
    assert s.total == 3
    assert s.as_dict()["replay"] == 1


def test_rate_limiter_one_per_period_per_key_and_counts_suppressed() -> None:
    r = RateLimiter(10.0)
    assert r.allow("bad_mac", 0.0) == 0
    assert r.allow("bad_mac", 1.0) is None
    assert r.allow("bad_mac", 9.99) is None
    assert r.allow("replay", 5.0) == 0  # keys are independent
    assert r.allow("bad_mac", 10.0) == 2
    assert r.allow("bad_mac", 10.5) is None
    assert r.allow("bad_mac", 25.0) == 1


def test_with_suppressed() -> None:
    assert with_suppressed("bad MAC from 10.0.0.9", 0) == "bad MAC from 10.0.0.9"
    assert with_suppressed("bad MAC from 10.0.0.9", 4) == "bad MAC from 10.0.0.9 (4 suppressed)"


def test_negative_period_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1)
