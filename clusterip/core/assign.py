"""Bucket assignment: which live member owns each bucket, computed identically on every node.

`assign(members, buckets)` is a pure, deterministic function of the live members (node id ->
weight) and the bucket count. It returns a tuple `owners` of length `buckets`: `owners[b]` is
the node id that accepts new connections hashed into bucket `b` (0-based: the datapath's
`jhash ... mod B` value).

Design: capacitated rendezvous hashing, i.e. the unique stable matching of buckets to members
under one fixed preference per (member, bucket) pair.

1. Quotas: member `m` gets `B * w_m / W` buckets rounded by the largest-remainder method, so
   every member is within one bucket of its exact share (equal weights: counts differ by at most
   one). Ties in the remainder go by a fixed hash of the id (not to the lowest ids).
2. Preferences: every bucket has a fixed pseudo-random ranking of all ids 1..255, independent of
   who is a member: the order in which ids first appear in that bucket's stream, which is 512
   bytes of SHAKE-128 (zero bytes dropped) followed by all ids in a rotated order. `pos(m, b)`
   is the offset where m first appears in bucket b's stream (`positions()`). Buckets prefer a
   lower `pos`; members prefer buckets with a lower `(pos, bucket)`.
3. Matching: both sides rank by the same pair order, so the stable matching is unique: it is
   what "take pairs in ascending (pos, bucket) order, skip full members and taken buckets"
   gives. It is computed by deferred acceptance (buckets propose), the rankings scanned by a
   compiled regular expression: about one C-level scan per bucket, not members x buckets
   Python operations (about 5 ms for 64 members x 4096 buckets; the rankings table, 3 MB, is
   built once in about 50 ms).

Why not plain rendezvous hashing: it moves only the leaver's buckets, but its counts are
multinomial: with 64 members and 4096 buckets the fullest member holds about 1.3 x its share.
Why not exact minimal movement: "only the leaver's buckets move, for every member set" forces a
fixed per-bucket ranking of the ids (a choice that stays the same when another option is
removed is a ranking), and keeping every subset of ids within one bucket of its share then
asks for a min-wise independent family of permutations (rounded). Exact min-wise families on n
elements need lcm(1..n) permutations (Broder et al. 1998); a brute-force search finds rounded
ones only for toy sizes (5 ids, 8 buckets), and none is known for 255 ids in a few thousand
buckets. With quotas, a leave or join moves the necessary buckets plus a cascade between the
others of about 0.75 x sqrt(B) buckets (measured by `python -m bench.assign_stats`);
a move between two live members costs established flows nothing (the old owner keeps them),
only where new connections go changes.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from clusterip.core import defaults

DEFAULT_BUCKETS = defaults.BUCKETS
"""Any member count up to 64 stays within one bucket of its share: 64/4096 = 1.6% (< 2%)."""

MAX_BUCKETS = defaults.MAX_BUCKETS
MIN_NODE_ID = 1
MAX_NODE_ID = 255
_STREAM = 512  # bytes of SHAKE-128 per bucket ranking: an id is missing with p ~ 13%
_COST_SHIFT = 16  # heap entries: pos << 16 | bucket
_BUCKET_MASK = (1 << _COST_SHIFT) - 1


def _check(members: Mapping[int, int], buckets: int) -> tuple[tuple[int, int], ...]:
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"bucket count {buckets} out of range 1..{MAX_BUCKETS}")
    items: list[tuple[int, int]] = []
    for node, weight in members.items():
        if not MIN_NODE_ID <= node <= MAX_NODE_ID:
            raise ValueError(f"node id {node} out of range {MIN_NODE_ID}..{MAX_NODE_ID}")
        if weight < 0:
            raise ValueError(f"node {node}: negative weight {weight}")
        if weight > 0:
            items.append((node, weight))
    if not items:
        raise ValueError("no member with a positive weight: nobody can own the buckets")
    items.sort()
    return tuple(items)


def _rank(node: int) -> bytes:
    """Fixed per-id tie-break for the largest-remainder quotas (not biased to low ids)."""
    return hashlib.sha256(b"clusterip-quota-v1\0" + bytes([node])).digest()[:8]


def _quotas(items: tuple[tuple[int, int], ...], buckets: int) -> dict[int, int]:
    total = sum(w for _, w in items)
    out = {m: buckets * w // total for m, w in items}
    left = buckets - sum(out.values())
    by_remainder = sorted(items, key=lambda mw: (-(buckets * mw[1] % total), _rank(mw[0])))
    for m, _ in by_remainder[:left]:
        out[m] += 1
    return out


def quotas(members: Mapping[int, int], buckets: int = DEFAULT_BUCKETS) -> dict[int, int]:
    """Buckets per member: largest-remainder rounding of `buckets * weight / total weight`.

    Members with weight 0 are left out. Raises ValueError if no member has a positive weight or
    an id, weight or bucket count is out of range.
    """
    return _quotas(_check(members, buckets), buckets)


@dataclass(frozen=True)
class _Table:
    """All bucket rankings in one byte string: b"\\0" + ranking of bucket 0 + b"\\0" + ..."""

    data: bytes
    starts: tuple[int, ...]  # offset of the first id of each bucket's ranking
    ends: tuple[int, ...]  # offset just past it


@lru_cache(maxsize=4)
def _table(buckets: int) -> _Table:
    stream = hashlib.shake_128(b"clusterip-assign-v1\0").digest(buckets * (_STREAM + 1))
    every = bytes(range(MIN_NODE_ID, MAX_NODE_ID + 1))
    parts: list[bytes] = []
    starts: list[int] = []
    ends: list[int] = []
    offset = 0
    for b in range(buckets):
        chunk = stream[b * (_STREAM + 1) : (b + 1) * (_STREAM + 1)]
        turn = chunk[_STREAM] % len(every)
        ranking = chunk[:_STREAM].replace(b"\0", b"") + every[turn:] + every[:turn]
        parts.append(b"\0" + ranking)
        starts.append(offset + 1)
        offset += 1 + len(ranking)
        ends.append(offset)
    return _Table(b"".join(parts), tuple(starts), tuple(ends))


def positions(bucket: int, buckets: int = DEFAULT_BUCKETS) -> dict[int, int]:
    """`pos(m, bucket)` for every id m: where m first appears in the bucket's ranking stream
    (lower is preferred, by the bucket and by m). For tests and diagnostics."""
    table = _table(buckets)
    start = table.starts[bucket]
    out: dict[int, int] = {}
    for offset, node in enumerate(table.data[start : table.ends[bucket]]):
        out.setdefault(node, offset)
    return out


def preference(bucket: int, buckets: int = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """Bucket `bucket`'s fixed ranking of all ids 1..255 (best first)."""
    return tuple(positions(bucket, buckets))


def assign(members: Mapping[int, int], buckets: int = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """Owner node id of each bucket 0..buckets-1 for the live `members` (node id -> weight).

    Node ids are 1..255. Deterministic and identical on every node for the same input (the
    order of `members` does not matter). Members with weight 0 own nothing (draining).
    Guarantees: each bucket has exactly one owner among the members with a positive weight;
    each member owns exactly `quotas(members, buckets)[m]` buckets (its share rounded by largest
    remainder: equal weights differ by at most one bucket). Raises ValueError if no member has
    a positive weight or an input is out of range.
    """
    return _assign(_check(members, buckets), buckets)


@lru_cache(maxsize=32)
def _assign(items: tuple[tuple[int, int], ...], buckets: int) -> tuple[int, ...]:
    quota = {m: q for m, q in _quotas(items, buckets).items() if q > 0}
    table = _table(buckets)
    data, starts, ends = table.data, table.starts, table.ends
    klass = b"".join(b"\\x%02x" % m for m in quota)
    search = re.compile(b"[" + klass + b"]").search
    # Round 1: every bucket proposes to its first choice; each member keeps its best `quota`.
    offers: dict[int, list[int]] = {m: [] for m in quota}
    for b, start in enumerate(starts):
        hit = search(data, start)
        assert hit is not None  # every ranking lists every id
        i = hit.start()
        offers[data[i]].append(((i - start) << _COST_SHIFT) | b)
    held: dict[int, list[int]] = {}
    free: list[int] = []
    for m, entries in offers.items():
        if len(entries) > quota[m]:
            entries.sort()
            free.extend(entries[quota[m] :])
            del entries[quota[m] :]
        heap = [-e for e in entries]  # max-heap of cost: heap[0] is the worst bucket held
        heapq.heapify(heap)
        held[m] = heap
    # Deferred acceptance: a rejected bucket proposes to its next choice, which may bump one.
    while free:
        entry = free.pop()
        b = entry & _BUCKET_MASK
        start = starts[b]
        i = start + (entry >> _COST_SHIFT)
        while True:
            hit = search(data, i + 1, ends[b])
            if hit is None:  # pragma: no cover - total capacity equals the bucket count
                raise AssertionError(f"bucket {b} rejected by every member")
            i = hit.start()
            node = data[i]
            if data.find(node, start, i) == -1:  # first time this id appears: a new choice
                break
        new = ((i - start) << _COST_SHIFT) | b
        heap = held[node]
        if len(heap) < quota[node]:
            heapq.heappush(heap, -new)
        elif -heap[0] > new:
            free.append(-heapq.heapreplace(heap, -new))
        else:
            free.append(new)
    owners = [0] * buckets
    for m, heap in held.items():
        for e in heap:
            owners[-e & _BUCKET_MASK] = m
    return tuple(owners)
