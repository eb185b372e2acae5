"""Time `NftFirewall().apply(render(...))` in-process; run inside a node namespace.

    python bench/applytime.py --vip 198.18.0.100 --interface eth0 --modulus 3 --count 30

Alternates between two ownerships that differ by one bucket (a take, then a release), each
one nft transaction, and prints JSON: {"modulus", "owned", "seconds": [...]}. Leaves the VIP's
tables in place; the caller removes them. Standalone on purpose: it imports only clusterip.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from clusterip.config import build
from clusterip.core.ownership import Ownership
from clusterip.nft import NftFirewall
from clusterip.render import render, render_delete


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vip", required=True)
    p.add_argument("--interface", required=True)
    p.add_argument("--modulus", type=int, required=True, help="buckets (3: static; 4096: agent)")
    p.add_argument("--nodes", type=int, default=3, help="the node owns 1/nodes of the buckets")
    p.add_argument("--count", type=int, default=30)
    args = p.parse_args(argv)
    cfg = build(
        vip=args.vip,
        interface=args.interface,
        total_nodes=min(args.modulus, 64),
        local_nodes=[1],
        protocol="all",
        dports=[],
        hashmode="sourceip-sourceport",
        clustermac=None,
        seed=None,
    )
    owned = [b for b in range(1, args.modulus + 1) if b % args.nodes == 1 % args.nodes]
    moving = next(b for b in range(1, args.modulus + 1) if b not in owned)
    base = Ownership.of(args.modulus, owned)
    states = (base.take(moving), base.take(moving).release(moving))
    fw = NftFirewall()
    fw.apply(render(cfg, base))
    seconds: list[float] = []
    try:
        for i in range(args.count):
            script = render(cfg, states[i % 2])
            t0 = time.perf_counter()
            fw.apply(script)
            seconds.append(time.perf_counter() - t0)
    finally:
        fw.apply(render_delete(cfg))
    json.dump({"modulus": args.modulus, "owned": len(owned), "seconds": seconds}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
