"""Evenness: how equal the nodes' shares are (max/mean; 1.0 is perfect).

Flows per node are computed with `clusterip.hashing.flow_bucket`, the kernel's jhash bit for
bit, over a fixed pseudo-random set of flows, and a sample is confirmed in the lab (each
request's answering node against the prediction). Buckets per node come from the agent's
`clusterip.core.assign.assign` when it is importable, else the rows are marked pending.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bench.setups import SERVING, cip, lab_config, up_args
from bench.stats import max_over_mean
from clusterip.config import HASHMODES
from clusterip.hashing import flow_bucket, flow_key, jhash, reciprocal_scale
from clusterip.lab.net import Lab, LabError

NODE_COUNTS = (2, 3, 4, 8, 16, 32, 64)
ASSIGN_COUNTS = tuple(range(2, 65))
DPORT = 80
Flow = tuple[ipaddress.IPv4Address, int, int]
AssignFn = Callable[..., tuple[int, ...]]


def make_flows(count: int, *, one_source: bool = False, seed: int = 1) -> list[Flow]:
    """`count` flows to port 80 from random ephemeral ports; from random addresses (in
    100.64.0.0/10, only computed, never sent), or all from one address (clients behind NAT)."""
    rng = random.Random(seed)
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    nat = ipaddress.IPv4Address("100.64.0.1")
    flows: list[Flow] = []
    for _ in range(count):
        src = nat if one_source else ipaddress.IPv4Address(base + rng.randrange(1 << 22))
        flows.append((src, rng.randrange(32768, 61000), DPORT))
    return flows


def hashes_of(flows: Sequence[Flow], hashmode: str, seed: int) -> list[int]:
    """The 32-bit jhash of each flow's key (what `flow_bucket` scales onto 1..N)."""
    return [jhash(flow_key(hashmode, s, sp, dp), seed) for s, sp, dp in flows]


def buckets_of(hashes: Sequence[int], modulus: int) -> list[int]:
    """`jhash ... mod modulus offset 1` from precomputed hashes: equals `flow_bucket`."""
    return [reciprocal_scale(h, modulus) + 1 for h in hashes]


def per_node(buckets: Sequence[int], nodes: int, owner: Callable[[int], int]) -> list[int]:
    counts = Counter(owner(b) for b in buckets)
    return [counts.get(k, 0) for k in range(1, nodes + 1)]


def owner_of(owners: Sequence[int]) -> Callable[[int], int]:
    """The datapath's bucket b (offset 1) is `assign`'s index b - 1."""

    def owner(bucket: int) -> int:
        return owners[bucket - 1]

    return owner


def load_assign() -> AssignFn | None:
    try:
        from clusterip.core.assign import assign
    except ImportError:
        return None
    fn: AssignFn = assign
    return fn


def agent_buckets() -> int:
    try:
        from clusterip.core.assign import DEFAULT_BUCKETS
    except ImportError:
        return 4096
    return int(DEFAULT_BUCKETS)


def ideal_max_over_mean(count: int, nodes: int, trials: int = 20, seed: int = 7) -> float:
    """The reference: median max/mean when `count` flows land uniformly at random (what a
    perfect hash gives; with few flows per node, chance alone leaves some nodes fuller)."""
    rng = random.Random(seed)
    values = sorted(
        max_over_mean(per_node([rng.randrange(nodes) + 1 for _ in range(count)], nodes, int))
        for _ in range(trials)
    )
    return values[len(values) // 2]


def flows_table(seed: int, count: int) -> dict[str, Any]:
    """max/mean of flows per node: static mode (bucket k = node k), every hashmode and node
    count; random clients and one NAT'ed client."""
    out: dict[str, Any] = {"flows": count, "node_counts": list(NODE_COUNTS), "static": {}}
    for label, one in (("random", False), ("nat", True)):
        flows = make_flows(count, one_source=one)
        rows: dict[str, list[float]] = {}
        for mode in HASHMODES:
            hashes = hashes_of(flows, mode, seed)
            rows[mode] = [
                max_over_mean(per_node(buckets_of(hashes, n), n, lambda b: b)) for n in NODE_COUNTS
            ]
        out["static"][label] = rows
    out["ideal"] = [ideal_max_over_mean(count, n) for n in NODE_COUNTS]
    return out


def agent_tables(seed: int, count: int) -> dict[str, Any]:
    """With the agent's assignment: buckets per node, and flows per node (random clients)."""
    assign = load_assign()
    if assign is None:
        return {"status": "pending", "reason": "clusterip.core.assign is not importable"}
    buckets = agent_buckets()
    flows = make_flows(count)
    by_mode = {m: buckets_of(hashes_of(flows, m, seed), buckets) for m in HASHMODES}
    bucket_rows: list[dict[str, Any]] = []
    for n in ASSIGN_COUNTS:
        owners = assign(dict.fromkeys(range(1, n + 1), 1), buckets)
        counts = [c for _, c in sorted(Counter(owners).items())]
        row: dict[str, Any] = {
            "nodes": n,
            "buckets_max_over_mean": max_over_mean(counts),
            "buckets_min": min(counts),
            "buckets_max": max(counts),
        }
        for mode, bs in by_mode.items():
            row[f"flows_{mode}"] = max_over_mean(per_node(bs, n, owner_of(owners)))
        bucket_rows.append(row)
    return {"status": "ok", "buckets": buckets, "rows": bucket_rows}


def predict(mode: str, seed: int, src: str, sport: int, dport: int) -> int:
    return flow_bucket(mode, seed, len(SERVING), ipaddress.IPv4Address(src), sport, dport)


def lab_sample(lab: Lab, *, per_source: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Per hashmode: bring the VIP up with it, request from every client address, compare
    each answer with flow_bucket's prediction."""
    out: dict[str, Any] = {}
    seed = lab_config(lab, 1).seed
    for mode in HASHMODES:
        for k in SERVING:
            cip(lab, k, *up_args(lab, k, mode))
        try:
            res = lab.probe(proto="tcp", port=DPORT, per_source=per_source, concurrency=32)
        finally:
            for k in SERVING:
                cip(lab, k, "down", "--vip", lab.topo.vip)
        ok = [r for r in res.results if r.node and r.sport is not None and not r.error]
        wrong = [r for r in ok if r.node != f"n{predict(mode, seed, r.src, r.sport or 0, r.dport)}"]
        counts = Counter(r.node for r in ok)
        shares = [counts.get(lab.topo.node_name(k), 0) for k in SERVING]
        if not ok:
            raise LabError(f"lab sample for {mode}: no request succeeded ({res.error_kinds()})")
        out[mode] = {
            "requests": len(res.results),
            "answered": len(ok),
            "errors": res.errors,
            "as_predicted": len(ok) - len(wrong),
            "per_node": shares,
            "max_over_mean": max_over_mean(shares),
        }
        log(
            f"  {mode:<29} {len(ok)} answered, {len(ok) - len(wrong)} as predicted, "
            f"per node {shares}"
        )
    return out
