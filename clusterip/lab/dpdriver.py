"""Drive an agent's datapath by hand, without the agent's core: restarts in tests and benches.

    python -m clusterip.lab.dpdriver VIP [--buckets 16] [--interface eth0]

Reads one command per line on stdin and answers each with one JSON line on stdout:

    start [NODE_ID]            AgentDatapath.start(node_id=...): {"adopted", "owned", "lease"}
    apply all|none|B,B-B,...   apply an Ownership owning those buckets: {"changed", "ms"}
    drain B,B-B,...            move those buckets from owned to draining: {"changed", "ms"}
    suspend GRACE NODE INC     AgentDatapath.suspend: {"ok"}
    stop                       AgentDatapath.stop: {"ok"}
    exit                       leave without a word to the kernel (what follows a suspend)

The process holds the datapath's netlink socket (and so its live table) until it exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.link import NetlinkLink
from clusterip.nft import NftFirewall
from clusterip.reactor.datapath import AgentDatapath


def buckets_of(text: str, modulus: int) -> set[int]:
    if text == "all":
        return set(range(1, modulus + 1))
    if text == "none":
        return set()
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clusterip.lab.dpdriver")
    parser.add_argument("vip")
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--interface", default="eth0")
    args = parser.parse_args(argv)
    cfg = config.build(vip=args.vip, interface=args.interface, total_nodes=1, protocol="all")
    dp = AgentDatapath(cfg, args.buckets, NftFirewall(), NetlinkLink())

    def answer(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, rest = words[0], words[1:]
        try:
            if cmd == "start":
                adopted = dp.start(node_id=int(rest[0]) if rest else None)
                lease = asdict(adopted.lease) if adopted else None
                owned = len(dp.current.owned)
                answer({"adopted": adopted is not None, "owned": owned, "lease": lease})
            elif cmd in ("apply", "drain"):
                chosen = buckets_of(rest[0], args.buckets)
                if cmd == "apply":
                    own = Ownership.of(args.buckets, chosen)
                else:
                    cur = dp.current
                    own = replace(cur, owned=cur.owned - chosen, draining=cur.draining | chosen)
                began = time.perf_counter()
                changed = dp.apply(own)
                answer({"changed": changed, "ms": (time.perf_counter() - began) * 1000})
            elif cmd == "suspend":
                dp.suspend(float(rest[0]), node_id=int(rest[1]), incarnation=int(rest[2]))
                answer({"ok": True})
            elif cmd == "stop":
                dp.stop()
                answer({"ok": True})
            elif cmd == "exit":
                return 0
            else:
                answer({"error": f"unknown command {cmd!r}"})
        except Exception as exc:  # report and go on: the test decides
            answer({"error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
