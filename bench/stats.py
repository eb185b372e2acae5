"""Small statistics for repeated, noisy measurements (pure)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated measurements."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the repeats were."""
        return (self.high - self.low) / self.median if self.median else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "q1": self.q1,
            "q3": self.q3,
            "n": self.n,
        }


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    xs = sorted(float(v) for v in values)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return Summary(statistics.median(xs), xs[0], xs[-1], q1, q3, len(xs))


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios num[i] / den[i]: measured back to back, so slow drift cancels."""
    if len(num) != len(den):
        raise ValueError(f"unpaired series: {len(num)} and {len(den)} values")
    return [a / b for a, b in zip(num, den, strict=True) if b > 0]


def max_over_mean(counts: Sequence[int | float]) -> float:
    """Evenness of a distribution: the fullest share over the mean share (1.0 = perfect)."""
    if not counts:
        raise ValueError("no counts")
    mean = sum(counts) / len(counts)
    return max(counts) / mean if mean else 0.0
