"""Measure the assignment: balance, buckets moved on leave and join, speed.

`python -m bench.assign_stats [--buckets B] [--trials T] [--max-nodes N]` prints one
line per member count. Pure computation (no I/O except printing in `main`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clusterip.core.assign import DEFAULT_BUCKETS, MAX_NODE_ID, MIN_NODE_ID, assign, preference


def moved(before: Sequence[int], after: Sequence[int]) -> int:
    """Number of buckets whose owner differs."""
    return sum(1 for a, b in zip(before, after, strict=True) if a != b)


@dataclass(frozen=True)
class Movement:
    """One membership change: buckets that had to move (ideal) and those that did."""

    ideal: int  # leave: the leaver's buckets; join: the joiner's buckets
    moved: int  # all buckets whose owner changed
    between_others: int  # moves between two members that stayed (the cascade)

    @property
    def ratio(self) -> float:
        return self.moved / self.ideal if self.ideal else 1.0


def leave(members: Mapping[int, int], node: int, buckets: int) -> Movement:
    before = assign(members, buckets)
    after = assign({m: w for m, w in members.items() if m != node}, buckets)
    ideal = before.count(node)
    return Movement(ideal, moved(before, after), moved(before, after) - ideal)


def join(members: Mapping[int, int], node: int, weight: int, buckets: int) -> Movement:
    before = assign(members, buckets)
    after = assign({**members, node: weight}, buckets)
    ideal = after.count(node)
    return Movement(ideal, moved(before, after), moved(before, after) - ideal)


def hrw_max_over_mean(members: Sequence[int], buckets: int) -> float:
    """Plain rendezvous hashing (first choice of each bucket, no quotas): max count / mean."""
    allowed = set(members)
    counts = Counter(
        next(n for n in preference(b, buckets) if n in allowed) for b in range(buckets)
    )
    return max(counts[m] for m in members) / (buckets / len(members))


@dataclass(frozen=True)
class Row:
    nodes: int
    max_over_mean: float
    leave_mean: float
    leave_max: float
    join_mean: float
    join_max: float
    hrw_max_over_mean: float
    ms_median: float


def measure(nodes: int, buckets: int, trials: int, rng: random.Random) -> Row:
    leaves: list[float] = []
    joins: list[float] = []
    spreads: list[float] = []
    hrw: list[float] = []
    times: list[float] = []
    for _ in range(trials):
        ids = rng.sample(range(MIN_NODE_ID, MAX_NODE_ID + 1), nodes + 1)
        members = dict.fromkeys(ids[:nodes], 1)
        t0 = time.perf_counter()
        owners = assign(members, buckets)
        times.append(time.perf_counter() - t0)
        counts = Counter(owners)
        spreads.append(max(counts.values()) / (buckets / nodes))
        hrw.append(hrw_max_over_mean(ids[:nodes], buckets))
        if nodes > 1:
            leaves.append(leave(members, rng.choice(ids[:nodes]), buckets).ratio)
        joins.append(join(members, ids[nodes], 1, buckets).ratio)
    return Row(
        nodes=nodes,
        max_over_mean=max(spreads),
        leave_mean=statistics.fmean(leaves) if leaves else 1.0,
        leave_max=max(leaves, default=1.0),
        join_mean=statistics.fmean(joins),
        join_max=max(joins),
        hrw_max_over_mean=max(hrw),
        ms_median=statistics.median(times) * 1000,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--max-nodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    print(
        f"B={args.buckets}, {args.trials} random id sets per row; moved/ideal: 1.00 = only "
        "the necessary buckets moved"
    )
    print(" N  max/mean  leave mean/max  join mean/max  (plain HRW max/mean)  assign ms")
    sizes = sorted({*range(3, 17), *range(16, args.max_nodes + 1, 8), args.max_nodes})
    for n in (s for s in sizes if s <= args.max_nodes):
        row = measure(n, args.buckets, args.trials, rng)
        print(
            f"{row.nodes:2d}  {row.max_over_mean:8.4f}  {row.leave_mean:5.3f} {row.leave_max:5.3f}"
            f"     {row.join_mean:5.3f} {row.join_max:5.3f}        {row.hrw_max_over_mean:6.3f}"
            f"              {row.ms_median:5.1f}"
        )


if __name__ == "__main__":
    main()
