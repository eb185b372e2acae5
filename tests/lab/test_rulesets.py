"""Every golden ruleset loads into the real kernel, and what it says there is what it does.

Each golden file (tests/golden/render) is loaded with `nft -f` in a private namespace with an
`eth0`, as a node would load it; the incremental one (update.nft) over the ruleset it updates.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.render import render

GOLDEN = Path(__file__).parent.parent / "golden" / "render"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"cipg-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run = ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]
        subprocess.run(run, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], input=script, capture_output=True, text=True
    )


def test_every_golden_file_is_here() -> None:
    names = {p.name for p in GOLDEN.glob("*.nft")}
    assert {"steady.nft", "transition.nft", "agent-orphaned.nft", "update.nft"} <= names


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.nft")), ids=lambda p: p.stem)
def test_golden_ruleset_loads(netns: str, path: Path) -> None:
    if path.name == "update.nft":  # the change tests/unit/test_render.py renders
        c = config.build(vip="198.18.0.100", interface="eth0", total_nodes=3, local_nodes=[1])
        base = render(c, Ownership.of(4096, range(1, 100), [200], [5]))
        done = nft(netns, "-f", "-", script=base)
        assert done.returncode == 0, done.stderr
    done = nft(netns, "-f", str(path))
    assert done.returncode == 0, done.stderr
    listing = nft(netns, "list", "ruleset").stdout
    text = path.read_text()
    name = re.search(r"netdev (clusterip_\S+)", text).group(1)  # type: ignore[union-attr]
    mac = re.search(r" mac=([0-9a-f]{12}) ", text)
    assert f"table netdev {name}" in listing
    if path.name.startswith("v6-"):  # the ND rewrite, as tests/unit/test_ipv6.py renders it
        assert f"table ip6 {name}" in listing
        assert mac is not None and f"@th,208,48 set 0x{int(mac.group(1), 16):x}" in listing
    if "mm=unicast" in text and not path.name.startswith("v6-"):  # ARP to the shared MAC
        assert "ether daddr 02:bf:c6:12:00:64 meta pkttype set host accept" in listing
    if "flags owner" in path.read_text():
        # `nft -f` exits at once: its live table goes with it, as an agent's does.
        assert f"table inet {name}" not in listing
