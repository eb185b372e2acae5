"""MAC modes without a kernel: derivations, validation, rendered rules (golden), what static
mode and the agent's datapath do to the link, the agents' fingerprint."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from clusterip import config, macmode
from clusterip.config import ConfigError
from clusterip.core.fingerprint import differences, fingerprint, fingerprint_fields
from clusterip.core.ownership import Ownership
from clusterip.link import FakeLink, holds_mac
from clusterip.nft import RecordingFirewall
from clusterip.node import Node
from clusterip.reactor.datapath import AgentDatapath
from clusterip.render import render, render_ingress
from clusterip.state import parse_tables
from tests.conftest import check_golden

V4 = "198.18.0.100"
V6 = "fdc1::100"


def cfg(vip: str = V4, **kw: object) -> config.VipConfig:
    return config.build(vip=vip, interface="eth0", total_nodes=3, local_nodes=[1], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vip", "mode", "mac", "group"),
    [
        (V4, "multicast", "03:bf:c6:12:00:64", None),
        (V4, "igmp", "01:00:5e:7f:00:64", "239.255.0.100"),
        (V4, "unicast", "02:bf:c6:12:00:64", None),
        ("192.0.2.10", "igmp", "01:00:5e:7f:02:0a", "239.255.2.10"),
        (V6, "multicast", "03:b6:00:00:01:00", None),
        (V6, "igmp", "33:33:b6:00:01:00", "ff05::b600:100"),
        (V6, "unicast", "02:b6:00:00:01:00", None),
        ("2001:db8::ab:cdef", "igmp", "33:33:b6:ab:cd:ef", "ff05::b6ab:cdef"),
    ],
)
def test_defaults_per_mode(vip: str, mode: str, mac: str, group: str | None) -> None:
    c = cfg(vip, mac_mode=mode)
    assert c.clustermac == mac and c.mac_mode == mode
    got = c.mac_plan.group
    assert (str(got) if got is not None else None) == group
    if got is not None:  # the MAC is the group's, as the kernel maps it when it joins
        assert macmode.group_mac(got) == mac
        assert got.is_multicast


def test_igmp_group_follows_a_given_mac() -> None:
    c = cfg(mac_mode="igmp", clustermac="01:00:5e:01:02:03")
    assert str(c.mac_plan.group) == "239.129.2.3"
    assert macmode.group_mac(ipaddress.IPv4Address("239.129.2.3")) == "01:00:5e:01:02:03"
    c6 = cfg(V6, mac_mode="igmp", clustermac="33:33:12:34:56:78")
    assert str(c6.mac_plan.group) == "ff05::1234:5678"


@pytest.mark.parametrize(
    ("vip", "kw", "named"),
    [
        (V4, dict(mac_mode="anycast"), "bad MAC mode 'anycast': allowed are multicast, igmp, "),
        (V4, dict(mac_mode="unicast", clustermac="03:bf:00:00:00:01"), "must be a unicast MAC"),
        (V4, dict(mac_mode="unicast", clustermac="00:00:00:00:00:00"), "all-zero"),
        (V4, dict(clustermac="02:bf:00:00:00:01"), "needs --mac-mode unicast"),
        (V4, dict(mac_mode="igmp", clustermac="03:bf:00:00:00:01"), "01:00:5e:00:00:00 to "),
        (V4, dict(mac_mode="igmp", clustermac="01:00:5e:80:00:01"), "01:00:5e:7f:ff:ff"),
        (V6, dict(mac_mode="igmp", clustermac="01:00:5e:00:00:01"), "an IPv6 group MAC, 33:33"),
    ],
)
def test_bad_mode_or_mac_is_named(vip: str, kw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(vip, **kw)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_toml_carries_the_mode_only_when_not_default(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "c.toml"
    cfgs = [cfg(), cfg("198.18.0.101", mac_mode="unicast"), cfg(V6, mac_mode="igmp")]
    text = config.dump_toml(cfgs)
    assert text.count("mac_mode") == 2
    p.write_text(text)
    assert config.load_toml(str(p)) == cfgs


MODES = {"igmp": dict(mac_mode="igmp"), "unicast": dict(mac_mode="unicast")}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("vip", [V4, V6])
def test_render_golden_per_mode(mode: str, vip: str) -> None:
    c = cfg(vip, **MODES[mode])
    nic = "02:c1:00:00:00:01"
    name = f"{'v6-' if vip == V6 else ''}macmode-{mode}"
    check_golden(f"render/{name}.nft", render(c, Ownership.of(3, [1]), nic_mac=nic))
    agent = render(c, Ownership.of(3, [1]), mode="agent", live=True, nic_mac=nic)
    check_golden(f"render/{name}-agent.nft", agent)


def test_unicast_mode_makes_arp_to_the_cluster_mac_the_hosts() -> None:
    """A frame to the shared unicast MAC is PACKET_OTHERHOST, which ARP and IP drop: ARP to
    it gets pkttype host at ingress (IPv4 only: ND to the VIP goes through the VIP chain)."""
    rule = "ether type arp ether daddr 02:bf:c6:12:00:64 meta pkttype set host accept"
    assert rule in render(cfg(mac_mode="unicast"), Ownership.of(3, [1]))
    assert rule in render_ingress(cfg(mac_mode="unicast"), xdp_fast=True)
    for other in ("multicast", "igmp"):
        assert "ether type arp" not in render(cfg(mac_mode=other), Ownership.of(3, [1]))
    v6 = render(cfg(V6, mac_mode="unicast"), Ownership.of(3, [1]), nic_mac="02:c1:00:00:00:01")
    assert "ether type arp" not in v6


def _state_objects(script_cfg: config.VipConfig) -> list[dict[str, object]]:
    """What `nft -j list ruleset` gives back for the tables `render` made, reduced to what
    state.parse_tables reads (the table and the ingress chain's comment)."""
    from clusterip.render import comment, table_name

    name = table_name(script_cfg)
    note = comment(script_cfg, 3)
    return [
        {"table": {"family": "netdev", "name": name}},
        {"chain": {"family": "netdev", "table": name, "name": "ingress", "comment": note}},
    ]


@pytest.mark.parametrize("mode", ["multicast", "igmp", "unicast"])
def test_the_kernels_tables_say_the_mode(mode: str) -> None:
    c = cfg(mac_mode=mode)
    (st,) = parse_tables(_state_objects(c))  # type: ignore[arg-type]
    assert st.config.mac_mode == mode and st.config.clustermac == c.clustermac
    doc = st.to_json()
    assert doc["mac_mode"] == mode
    assert doc["group"] == ("239.255.0.100" if mode == "igmp" else None)


@pytest.mark.parametrize("mode", ["multicast", "igmp", "unicast"])
def test_static_up_and_down_hold_the_mac_as_the_mode_wants(mode: str) -> None:
    c = cfg(mac_mode=mode)
    fw, link = RecordingFirewall([]), FakeLink()
    node = Node(fw, link)
    line = node.up(c)
    assert holds_mac(link, c)
    if mode == "unicast":
        assert link.ucast["eth0"] == [c.clustermac] and link.mcast["eth0"] == []
    elif mode == "igmp":
        assert link.joined["eth0"] == ["239.255.0.100"]  # the kernel holds the membership
        assert "group 239.255.0.100" in line
    else:
        assert link.mcast["eth0"] == [c.clustermac] and link.ucast["eth0"] == []
    fw.objects = _state_objects(c)  # what the kernel now holds
    node.down(c.vip)
    assert link.mcast["eth0"] == [] and link.ucast["eth0"] == [] and link.joined["eth0"] == []


def test_changing_the_mode_moves_the_mac() -> None:
    """`up` again with another mode: the old mode's hold goes, the new one's comes."""
    fw, link = RecordingFirewall([]), FakeLink()
    node = Node(fw, link)
    old = cfg()
    node.up(old)
    fw.objects = _state_objects(old)
    new = cfg(mac_mode="unicast")
    node.up(new)
    assert link.mcast["eth0"] == [] and link.ucast["eth0"] == [new.clustermac]


@pytest.mark.parametrize("mode", ["multicast", "igmp", "unicast"])
def test_agent_datapath_holds_and_releases_the_mac(mode: str) -> None:
    c = cfg(mac_mode=mode)
    fw, link = RecordingFirewall([]), FakeLink()
    dp = AgentDatapath(c, 64, fw, link)
    dp.start()
    assert holds_mac(link, c)
    dp.stop()
    assert link.mcast["eth0"] == [] and link.ucast["eth0"] == [] and link.joined["eth0"] == []


def test_fingerprint_covers_the_mode_and_names_it() -> None:
    kid = b"\x01" * 8
    base = cfg()
    # The default mode leaves the fingerprint as it was before MAC modes (rolling upgrade).
    assert "mac_mode" not in fingerprint_fields(base, buckets=64, key_id=kid)
    same_mac = cfg(mac_mode="igmp", clustermac="01:00:5e:7f:00:64")
    other = cfg(clustermac="01:00:5e:7f:00:64")  # same MAC, multicast mode
    fp = {fingerprint(c, buckets=64, key_id=kid) for c in (base, same_mac, other)}
    assert len(fp) == 3
    theirs = fingerprint_fields(same_mac, buckets=64, key_id=kid)
    ours = fingerprint_fields(other, buckets=64, key_id=kid)
    assert differences(theirs, ours) == "mac_mode 'igmp' (ours 'multicast')"


def test_a_peer_with_another_mode_is_refused_as_foreign_fingerprint() -> None:
    """In the pure core: a serving node refuses a newcomer with another MAC mode, counted as
    a foreign fingerprint; the newcomer holds back and says which setting differs."""
    from clusterip.core.wire import NodeState
    from tests.unit.core.test_agent_sim import CFG, SMALL, build, ready, with_clients

    sim = build(1)
    rng = random.Random(3)
    with_clients(sim, ready(), rng)
    sim.add_node(2, 1, cfg=replace(CFG, mac_mode="unicast", clustermac="02:bf:c0:00:02:0a"))
    sim.start(2)
    with_clients(sim, sim.clock.now() + 5.0, rng)
    one, two = sim.nodes[1].vip, sim.nodes[2].vip
    assert one is not None and two is not None
    assert len(sim.nodes[1].datapath.owned) == SMALL.buckets  # type: ignore[union-attr]
    assert one.membership.stats.as_dict()["foreign_fingerprint"] > 0
    assert two.membership.state == NodeState.PASSIVE
    assert "mac_mode 'multicast' (ours 'unicast')" in two.membership.reason
    assert sim.violations == []
