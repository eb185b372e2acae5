"""Regenerate agent-live.json and agent-suspended.json from the kernel: as root,
`python tests/golden/state/make_agent.py`.

An agent's tables in a throwaway namespace: read back while its live (owner) table exists, then
after it suspended (a lease for its successor) and its netlink socket closed.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.nft import NftFirewall
from clusterip.render import render, render_lease

NS = f"cipgolden{os.getpid()}"


def write(name: str, fw: NftFirewall) -> None:
    out = Path(__file__).with_name(name)
    out.write_text(json.dumps({"nftables": fw.ruleset()}, indent=1, sort_keys=True) + "\n")


def main() -> None:
    if sys.argv[1:] != ["--inside"]:
        subprocess.run(["ip", "netns", "add", NS], check=True)
        try:
            inside = ["ip", "netns", "exec", NS, sys.executable, __file__, "--inside"]
            subprocess.run(inside, check=True)
        finally:
            subprocess.run(["ip", "netns", "del", NS], check=True)
        return
    subprocess.run(["ip", "link", "add", "eth0", "type", "veth"], check=True)
    cfg = config.build(vip="198.18.0.100", interface="eth0", total_nodes=16, protocol="all")
    own = Ownership.of(16, [1, 2, 3, 4], draining=[5], orphaned=[2], guarded=[3])
    own = Ownership(
        own.modulus, own.owned, own.draining, own.orphaned, frozenset({("198.18.1.9", 4242)}),
        own.guarded,
    )  # fmt: skip
    agent = NftFirewall()
    agent.apply(render(cfg, own, mode="agent", live=True, note_extra="addr=1", flow_timeout=300))
    write("agent-live.json", agent)
    agent.apply(render_lease(cfg, 600_000, "node=7 inc=1767225600000000 until=1767226200.000"))
    del agent
    gc.collect()  # the binding's context (and its netlink socket) goes: so does the live table
    write("agent-suspended.json", NftFirewall())


if __name__ == "__main__":
    main()
