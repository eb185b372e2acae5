"""Regenerate two-vips.json from the kernel: as root, `python tests/golden/state/make_two_vips.py`.

Applies two rendered VIPs (one in transition, one steady) in a throwaway namespace and writes
what NftFirewall.ruleset() reads back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.nft import NftFirewall
from clusterip.render import render

NS = f"cipgolden{os.getpid()}"


def main() -> None:
    a = config.build(
        vip="198.18.0.100",
        interface="eth0",
        total_nodes=4,
        protocol="tcp",
        dports=[80, 8080],
        hashmode="sourceip-sourceport-destport",
        seed="1a2b3c4d",
    )
    b = config.build(vip="198.18.0.101", interface="eth0", total_nodes=2, hashmode="sourceip")
    script = render(a, Ownership.of(4, [1, 3, 4], [2], [3], [4]), note_extra="addr=1")
    script += render(b, Ownership.of(2, [2]))
    if sys.argv[1:] != ["--inside"]:
        subprocess.run(["ip", "netns", "add", NS], check=True)
        try:
            inside = ["ip", "netns", "exec", NS, sys.executable, __file__, "--inside"]
            subprocess.run(inside, check=True)
        finally:
            subprocess.run(["ip", "netns", "del", NS], check=True)
        return
    subprocess.run(["ip", "link", "add", "eth0", "type", "veth"], check=True)
    fw = NftFirewall()
    fw.apply(script)
    out = Path(__file__).with_name("two-vips.json")
    out.write_text(json.dumps({"nftables": fw.ruleset()}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
