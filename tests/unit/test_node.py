"""Static mode with fakes: what each command sends to the kernel, in which order."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from clusterip import config
from clusterip.config import ConfigError
from clusterip.flows import FakeSockets
from clusterip.link import FakeLink
from clusterip.nft import RecordingFirewall
from clusterip.node import Node
from clusterip.sockdiag import ESTABLISHED, Sock

STATE = Path(__file__).parent.parent / "golden" / "state"
VIP = ipaddress.IPv4Address("198.18.0.100")


def objects(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((STATE / name).read_text())["nftables"]
    return data


class Journal:
    """Firewall and link calls in one list, to check their order."""

    def __init__(self, fw: RecordingFirewall, link: FakeLink) -> None:
        self.calls: list[str] = []
        apply, del_address = fw.apply, link.del_address

        def logged_apply(script: str) -> None:
            self.calls.append("nft: " + script.splitlines()[0])
            apply(script)

        def logged_del(ifname: str, addr: ipaddress.IPv4Address, plen: int) -> None:
            self.calls.append(f"del address {addr}")
            del_address(ifname, addr, plen)

        fw.apply = logged_apply  # type: ignore[method-assign]
        link.del_address = logged_del  # type: ignore[method-assign]


def node(name: str) -> tuple[Node, RecordingFirewall, FakeLink]:
    fw, link = RecordingFirewall(objects(name)), FakeLink()
    sockets = FakeSockets({str(VIP): [Sock("198.18.1.5", 40000, 80, ESTABLISHED)]})
    return Node(fw, link, sockets), fw, link


def test_release_puts_this_nodes_flows_in_the_same_transaction() -> None:
    n, fw, _link = node("two-vips.json")  # 198.18.0.100: owned 1,3,4; draining 2; guarded 4
    n.release(VIP, 1)
    (script,) = fw.scripts
    assert script.startswith("flush set netdev clusterip_198_18_0_100 mine\n")
    assert "mine { 198.18.1.5 . 40000 . 80 }" in script and "1 : jump keep" in script
    n.take(VIP, 2)  # a bucket that leaves the transition: no snapshot
    assert "mine" not in fw.scripts[-1]


def test_up_replaces_what_a_stopped_agent_left_but_not_a_running_agent() -> None:
    cfg = config.build(vip=str(VIP), interface="eth0", total_nodes=3, local_nodes=[1])
    n, fw, _link = node("agent-suspended.json")
    n.up(cfg)
    (script,) = fw.scripts
    assert script.index("delete table netdev clusterip_198_18_0_100") < script.index(
        'comment "clusterip/2 mode=static'
    )
    running, fw, _link = node("agent-live.json")
    with pytest.raises(ConfigError, match="run by an agent"):
        running.up(cfg)
    with pytest.raises(ConfigError, match="run by an agent"):
        running.down(VIP)
    assert fw.scripts == []


def test_down_stops_answering_before_the_address_goes() -> None:
    n, fw, link = node("agent-suspended.json")  # addr=1: the agent had added the address
    link.addresses["eth0"].add((str(VIP), 32))
    journal = Journal(fw, link)
    assert "stopped agent" in n.down(VIP)
    assert journal.calls == [
        "nft: flush map netdev clusterip_198_18_0_100 buckets",
        f"del address {VIP}",
        "nft: add table netdev clusterip_198_18_0_100",
    ]
