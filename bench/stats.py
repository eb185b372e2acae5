"""Small statistics for repeated, noisy measurements (pure)."""

from __future__ import annotations

import math
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
    ci_low: float = 0.0  # 95% confidence interval of the median (order statistics)
    ci_high: float = 0.0

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
            "ci95": [self.ci_low, self.ci_high],
        }


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    xs = sorted(float(v) for v in values)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    lo, hi = median_ci(xs)
    return Summary(statistics.median(xs), xs[0], xs[-1], q1, q3, len(xs), lo, hi)


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the order statistics x(j), x(k)
    (1-based) with j the largest rank such that P(Binomial(n, 1/2) < j) <= (1 - level) / 2,
    and k = n + 1 - j. With fewer than 6 values no such pair reaches 95%: min and max."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    alpha = (1.0 - level) / 2
    j, below = 0, 0.0
    for r in range(n + 1):  # below = P(B < r + 1)
        below += math.comb(n, r) / 2**n
        if below > alpha:
            break
        j = r + 1
    if j < 1:
        return xs[0], xs[-1]
    return xs[j - 1], xs[n - j]


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
