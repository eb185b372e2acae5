"""The XDP pre-filter around the nft datapath, with fakes: the order of XDP map writes and nft
transactions on every change (docs/xdp.md), static and agent mode, and the fallbacks.

The same against the kernel: tests/lab/test_xdp_wired.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from clusterip import config
from clusterip.config import ConfigError
from clusterip.core.ownership import Ownership
from clusterip.flows import FakeSockets
from clusterip.link import FakeLink
from clusterip.nft import FirewallError, RecordingFirewall
from clusterip.node import Node
from clusterip.reactor.datapath import AgentDatapath
from clusterip.render import fast_rule
from clusterip.xdp.agentside import AgentXdp
from clusterip.xdp.fake import FakeKernel
from clusterip.xdp.spec import XdpError, parse_cli_mode
from clusterip.xdp.static import StaticXdp, split_note

VIP = "198.18.0.100"


class LoggedFirewall(RecordingFirewall):
    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    def apply(self, script: str) -> None:
        super().apply(script)
        first = next(line for line in script.splitlines() if line and not line.startswith("#"))
        self.journal.append("nft " + first)


def static_node(kernel: FakeKernel) -> tuple[Node, LoggedFirewall]:
    fw = LoggedFirewall(kernel.journal)
    xdp = StaticXdp(adopt=kernel.adopt, make=kernel.make, detach=kernel.detach)
    return Node(fw, FakeLink(), FakeSockets({}), xdp=xdp), fw


def cfg(k: int = 1) -> config.VipConfig:
    return config.build(vip=VIP, interface="eth0", total_nodes=3, local_nodes=[k])


def test_static_up_attaches_before_nft_and_sets_buckets_after() -> None:
    kernel = FakeKernel()
    node, fw = static_node(kernel)
    node.up(cfg(1))
    assert kernel.journal == [
        f"xdp attach native {VIP}",  # every bucket of the VIP passes: nft decides
        'nft add table netdev clusterip_198_18_0_100 { comment "clusterip/2 mode=static '
        'if=eth0 mac=03bfc6120064 hash=1 n=3 seed=aa6f48bc proto=all plen=32 addr=1"; }',
        f"xdp {VIP} pass - owned 1 of 3",  # steady: the fast path
    ]
    assert fast_rule(cfg()) in fw.scripts[0] and "add counter netdev" in fw.scripts[0]
    assert node.xdp_outcome is not None and node.xdp_outcome.code == "native"


def test_static_moves_open_xdp_before_nft_and_close_it_after() -> None:
    kernel = FakeKernel()
    node, fw = static_node(kernel)
    node.up(cfg(1))
    # What the kernel holds now, read back by the next command:
    fw.objects = _state_objects(fw.scripts[0], owned=[1])
    del kernel.journal[:]
    node.take(ipaddress.IPv4Address(VIP), 3)
    assert kernel.journal == [
        f"xdp {VIP} pass 3 owned 1 of 3",  # 3 passes XDP before nft takes it
        "nft flush set netdev clusterip_198_18_0_100 mine",  # snapshot + bucket 3, one batch
        f"xdp {VIP} pass 3 owned 1 of 3",  # guarded: through nft, not the fast path
    ]
    del kernel.journal[:]
    node.release(ipaddress.IPv4Address(VIP), 1)
    # XDP held 3 (take) and 1 (owned): both pass while nft changes (1 leaves the fast path).
    assert kernel.journal[0] == f"xdp {VIP} pass 1,3 owned - of 3"
    assert kernel.journal[1].startswith("nft ")  # nft releases it (draining: its flows stay)
    assert kernel.journal[2] == f"xdp {VIP} pass 1 owned - of 3"  # draining passes on


def test_static_down_drops_in_xdp_first_and_detaches_last() -> None:
    kernel = FakeKernel()
    node, fw = static_node(kernel)
    node.up(cfg(1))
    fw.objects = _state_objects(fw.scripts[0], owned=[1])
    del kernel.journal[:]
    node.down(ipaddress.IPv4Address(VIP))
    assert kernel.journal[0] == f"xdp {VIP} pass - owned - of 3"
    assert kernel.journal[1] == "nft flush map netdev clusterip_198_18_0_100 buckets"
    assert kernel.journal[-1] == "xdp detach eth0" and kernel.attached == {}


def test_static_on_refused_changes_nothing_auto_falls_back() -> None:
    kernel = FakeKernel()
    kernel.refuse = "cannot attach XDP (native) to eth0: it already has another XDP program"
    node, fw = static_node(kernel)
    with pytest.raises(XdpError):
        node.up(cfg(1), xdp="on")
    assert fw.scripts == []
    node.up(cfg(1), xdp="auto")
    assert node.xdp_outcome is not None and node.xdp_outcome.code == "busy"
    assert fast_rule(cfg()) not in fw.scripts[0] and "xdp_busy" in fw.scripts[0]
    kernel.refuse = None
    kernel.native = False
    node.up(cfg(1), xdp="auto")
    out = node.xdp_outcome
    assert out is not None and out.code == "nodrv" and "has no native XDP" in out.text
    assert fast_rule(cfg()) not in fw.scripts[-1]


def test_static_nft_failure_restores_the_previous_program() -> None:
    kernel = FakeKernel()
    node, fw = static_node(kernel)
    fw.fail_with = "Error: no"
    with pytest.raises(FirewallError):
        node.up(cfg(1))
    assert kernel.journal[-1] == "xdp detach eth0" and kernel.attached == {}


def test_split_note() -> None:
    code, rest = split_note({"accepted": {"packets": 1}, "xdp_nodrv": {"packets": 0}})
    assert code == "nodrv" and rest == {"accepted": {"packets": 1}}
    assert split_note({}) == (None, {})
    assert parse_cli_mode("ON") == "on"
    with pytest.raises(ConfigError, match="bad XDP mode 'fast': allowed are auto, on, off"):
        parse_cli_mode("fast")


# --- agent mode ---------------------------------------------------------------------------------
def agent_dp(kernel: FakeKernel, mode: str = "auto") -> tuple[AgentDatapath, LoggedFirewall]:
    fw = LoggedFirewall(kernel.journal)
    c = replace(config.build(vip=VIP, interface="eth0", total_nodes=1), total_nodes=16)
    x = AgentXdp("eth0", mode, make=kernel.make)
    x.open([c])
    dp = AgentDatapath(c, 16, fw, FakeLink(), FakeSockets({}), flow_timeout=300, xdp=x)
    return dp, fw


def test_agent_every_apply_is_ordered_around_nft() -> None:
    kernel = FakeKernel()
    dp, fw = agent_dp(kernel)
    assert kernel.journal == [f"xdp attach native {VIP}"]
    dp.start()
    assert fast_rule(dp.cfg, live=True) in fw.scripts[0]
    assert kernel.journal[-1] == f"xdp {VIP} pass - owned - of 16"  # owns nothing yet
    del kernel.journal[:]
    dp.apply(Ownership.of(16, [1, 2]))
    assert kernel.journal == [
        f"xdp {VIP} pass 1,2 owned - of 16",
        "nft add element netdev clusterip_198_18_0_100 buckets { 1 : jump own, 2 : jump own }",
        f"xdp {VIP} pass - owned 1,2 of 16",
    ]
    del kernel.journal[:]
    # 2 moves away (draining here) while another node announces kept flows: no fast path.
    kept = replace(Ownership.of(16, [1], [2]), kept=frozenset({("198.18.1.9", 4242)}))
    dp.apply(kept)
    assert kernel.journal[0] == f"xdp {VIP} pass 1,2 owned - of 16"
    assert kernel.journal[1].startswith("nft ")
    assert kernel.journal[2] == f"xdp {VIP} pass 1,2 owned - of 16"
    del kernel.journal[:]
    fw.fail_with = "Error: refused"
    with pytest.raises(FirewallError):
        dp.apply(Ownership.of(16, [1, 3]))
    assert kernel.journal == [
        f"xdp {VIP} pass 1,2,3 owned - of 16",
        f"xdp {VIP} pass 1,2 owned - of 16",  # back to what it was
    ]


def test_agent_stop_ends_the_fast_path_before_nft() -> None:
    kernel = FakeKernel()
    dp, _fw = agent_dp(kernel)
    dp.start()
    dp.apply(Ownership.of(16, [1, 2]))
    del kernel.journal[:]
    dp.stop()
    assert kernel.journal[0] == f"xdp {VIP} pass - owned - of 16"
    assert kernel.journal[1] == "nft flush map netdev clusterip_198_18_0_100 buckets"


def test_agent_without_native_xdp_renders_no_fast_rule_and_says_why() -> None:
    kernel = FakeKernel(native=False)
    dp, fw = agent_dp(kernel)
    dp.start()
    assert dp.xdp is not None and not dp.xdp.active
    assert "ether saddr" not in fw.scripts[0]
    assert dp.xdp.describe() == "off: driver fake of eth0 has no native XDP"
    assert dp.xdp.report(dp.cfg)["counters"] is None
    off, fw_off = agent_dp(FakeKernel(), mode="off")
    off.start()
    assert off.xdp is not None and off.xdp.describe() == "off: --xdp off"
    assert "ether saddr" not in fw_off.scripts[0]


def test_agent_reload_swaps_the_program_and_keeps_buckets() -> None:
    kernel = FakeKernel()
    dp, _fw = agent_dp(kernel)
    dp.start()
    dp.apply(Ownership.of(16, [1, 2]))
    x = dp.xdp
    assert x is not None
    other = config.build(vip="198.18.0.101", interface="eth0", total_nodes=1)
    x.reconfigure([dp.cfg, other])
    assert kernel.journal[-1] == f"xdp swap {VIP},198.18.0.101"
    assert x.filter.buckets(VIP).owned == {1, 2}
    assert x.filter.buckets("198.18.0.101").modulus == 0  # passes all until its start


def _state_objects(script: str, owned: list[int]) -> list[dict[str, object]]:
    """The nft JSON objects `parse_tables` reads back for the VIP, as the kernel would list
    them after `script` (its comment, and the bucket map with `owned`)."""
    comment = script.split('comment "', 1)[1].split('"', 1)[0]
    name = "clusterip_198_18_0_100"
    return [
        {"table": {"family": "netdev", "name": name}},
        {"chain": {"family": "netdev", "table": name, "name": "ingress", "comment": comment}},
        {
            "map": {
                "family": "netdev",
                "table": name,
                "name": "buckets",
                "elem": [[b, {"jump": {"target": "own"}}] for b in owned],
            }
        },
    ]
