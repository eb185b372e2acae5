"""IPv6 VIPs without a kernel: config, hash layout, rendered rules (golden), the ND rewrite's
checksum arithmetic, the unsolicited NA, state read back, static-mode link handling, CLI."""

from __future__ import annotations

import ipaddress
import random
import struct
import subprocess
import sys

import pytest

from clusterip import config, nd
from clusterip.config import ConfigError
from clusterip.core.ownership import Ownership
from clusterip.hashing import flow_bucket, flow_key, jhash
from clusterip.link import FakeLink
from clusterip.nft import RecordingFirewall
from clusterip.node import Node
from clusterip.render import render, render_delete, render_live, render_update, table_name
from clusterip.state import _vip_of, parse_tables
from tests.conftest import check_golden

VIP6 = "2001:db8::10"
NIC = "02:c1:00:00:00:01"


def cfg6(**kw: object) -> config.VipConfig:
    kw.setdefault("local_nodes", [1])
    return config.build(vip=VIP6, interface="eth0", total_nodes=3, **kw)  # type: ignore[arg-type]


def test_derived_mac_and_prefix() -> None:
    c = cfg6()
    assert c.clustermac == "03:b6:00:00:00:10" and c.prefixlen == 128 and c.version == 6
    v4 = config.build(vip="192.0.2.16", interface="eth0", total_nodes=1)
    assert v4.clustermac == "03:bf:c0:00:02:10"  # never the same prefix as an IPv6 VIP's
    assert config.derive_seed(c.vip) != config.derive_seed(v4.vip)
    assert config.build(vip="2001:db8::10/64", interface="eth0", total_nodes=1).prefixlen == 64
    assert config.dump_toml([c]).splitlines()[1] == 'vip = "2001:db8::10"'
    assert config.parse_document(config.tomllib.loads(config.dump_toml([c])))[0] == c


def test_source_address_family_must_match() -> None:
    assert config.parse_ip("2001:db8::7", "source address", 6).version == 6
    with pytest.raises(ConfigError, match="an IPv4 address, but the VIP is IPv6"):
        config.parse_ip("192.0.2.7", "source address", 6)
    with pytest.raises(ConfigError, match="an IPv6 address, but the VIP is IPv4"):
        config.parse_ip("2001:db8::7", "source address", 4)


def test_ipv6_hash_key_is_four_registers_then_padded_ports() -> None:
    src = ipaddress.IPv6Address("2001:db8:1::7")
    key = flow_key("sourceip-sourceport-destport", src, 40312, 443)
    assert key == src.packed + b"\x9d\x78\0\0" + b"\x01\xbb\0\0" and len(key) == 24
    assert len(flow_key("sourceip-sourceport", src, 1)) == 20
    # jhash of 16, 20, 24 bytes: one full round then a tail (or a 12-byte final block).
    for n in (16, 20, 24):
        assert 0 <= jhash(bytes(range(n)), 7) <= 0xFFFFFFFF
    rng = random.Random(6)
    counts = [0, 0, 0]
    for _ in range(3000):
        a = ipaddress.IPv6Address(rng.getrandbits(128))
        counts[flow_bucket("sourceip", 0x1234, 3, a) - 1] += 1
    assert all(900 <= c <= 1100 for c in counts), counts


@pytest.mark.parametrize(
    ("name", "kw", "mode"),
    [
        ("v6-steady", {}, "static"),
        ("v6-tcp-dport", {"protocol": "tcp", "dports": [80, 443]}, "static"),
        ("v6-agent", {"protocol": "all"}, "agent"),
    ],
)
def test_render_golden_ipv6(name: str, kw: dict[str, object], mode: str) -> None:
    c = cfg6(**kw)
    own = Ownership.of(3, [1, 3], [2])
    live = mode == "agent"
    mine = [("2001:db8:1::7", 40001, 80)]
    text = render(c, own, mode=mode, live=live, nic_mac=NIC, mine=mine)
    check_golden(f"render/{name}.nft", text)
    assert "ip saddr" not in text and "arp" not in text and "icmp type" not in text
    assert "table ip6 clusterip_2001_db8__10" in text and "ip6 daddr 2001:db8::10 jump vip" in text
    assert "packet-too-big" in text and "exthdr frag exists" in text


def test_render_needs_the_nic_mac_for_ipv6_only() -> None:
    with pytest.raises(ValueError, match="own MAC"):
        render(cfg6(), Ownership.of(3, [1]))
    v4 = config.build(vip="192.0.2.10", interface="eth0", total_nodes=3)
    assert "arp saddr ether set" in render(v4, Ownership.of(3, [1]))


def test_ipv6_tables_deletes_and_updates() -> None:
    c = cfg6()
    assert table_name(c) == "clusterip_2001_db8__10"
    assert _vip_of(table_name(c)) == c.vip and str(_vip_of("clusterip_10_0_0_1")) == "10.0.0.1"
    text = render_delete(c, owner=True)
    assert [line.split()[2] for line in text.splitlines() if line.startswith("delete")] == [
        "netdev",
        "ip6",
        "inet",
    ]
    assert "ip6 daddr 2001:db8::10 meta mark set" in render_live(c)
    kept = Ownership(3, frozenset({1}), kept=frozenset({("2001:db8:1::7", 4000)}))
    update = render_update(c, Ownership.of(3, [1]), kept, live=True)
    assert "ip6 saddr . th sport @kept drop" in update and "ip6 daddr != @lease" in update
    assert "{ 2001:db8:1::7 . 4000 }" in update


def _na(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, mac: str, kind: int) -> bytes:
    """An NS or NA as Linux sends it: reserved zero, the link-layer option first."""
    opt = nd.OPT_TLLA if kind == nd.NA else nd.OPT_SLLA
    body = struct.pack("!BBHB3x", kind, 0, 0, 0x60 if kind == nd.NA else 0) + src.packed
    body += bytes([opt, 1]) + nd.mac_bytes(mac)
    cks = nd.checksum(src, dst, body)
    return body[:2] + struct.pack("!H", cks) + body[4:]


@pytest.mark.parametrize("seed", range(200))
def test_the_rewrite_keeps_the_checksum_valid(seed: int) -> None:
    """What the output rule does (MAC at 26, compensation at 6), checked by the receiver's
    arithmetic, for random MACs and addresses."""
    rng = random.Random(seed)
    mac = lambda first: ":".join([f"{first:02x}"] + [f"{rng.randrange(256):02x}" for _ in range(5)])  # noqa: E731
    nic, cluster = mac(2), mac(3)
    src = ipaddress.IPv6Address(rng.getrandbits(128))
    dst = ipaddress.IPv6Address(rng.getrandbits(128))
    for kind in (nd.NS, nd.NA):
        msg = bytearray(_na(src, dst, nic, kind))
        assert nd.checksum(src, dst, bytes(msg)) == 0  # valid before
        msg[26:32] = nd.mac_bytes(cluster)
        assert nd.checksum(src, dst, bytes(msg)) != 0 or nic == cluster  # broken by the MAC
        msg[6:8] = nd.compensation(nic, cluster).to_bytes(2, "big")
        assert nd.checksum(src, dst, bytes(msg)) == 0  # valid again, checksum untouched


def test_output_rules_match_exactly_what_they_rewrite() -> None:
    rules = nd.output_rules(ipaddress.IPv6Address(VIP6), NIC, "03:b6:00:00:00:10")
    na, ns, leak_na, leak_ns = rules
    target = "@th,64,128 0x20010db8000000000000000000000010"
    assert target in na and "@th,192,16 0x0201" in na and "@th,48,16 0x0000" in na
    assert "@th,208,48 0x02c100000001 @th,208,48 set 0x03b600000010" in na
    assert "ip6 saddr 2001:db8::10 icmpv6 type nd-neighbor-solicit @th,192,16 0x0101" in ns
    assert leak_na.endswith('counter name "nd_leaks" drop') and "!= 0x03b600000010" in leak_ns


def test_unsolicited_na_frame() -> None:
    frame = nd.unsolicited_na(NIC, ipaddress.IPv6Address(VIP6), "03:b6:00:00:00:10")
    assert frame[:6] == bytes.fromhex("333300000001") and frame[6:12] == nd.mac_bytes(NIC)
    assert frame[14 + 7] == 255  # hop limit: receivers drop ND with any other
    msg = nd.parse(frame)
    assert msg is not None and msg["checksum_ok"] and msg["type"] == "NA"
    assert msg["src"] == VIP6 and msg["dst"] == "ff02::1" and msg["target"] == VIP6
    assert msg["flags"] == 0x20 and msg["options"] == [(2, "03:b6:00:00:00:10")]


def test_state_reads_an_ipv6_vip_back() -> None:
    c = cfg6(protocol="tcp", dports=[80])
    objects = [
        {"table": {"family": "netdev", "name": table_name(c)}},
        {"table": {"family": "ip6", "name": table_name(c)}},
        {"chain": {"family": "netdev", "table": table_name(c), "name": "ingress",
                   "comment": "clusterip/2 mode=static if=eth0 mac=03b600000010 hash=1 n=3 "
                              f"seed={c.seed:08x} proto=tcp plen=128"}},
        {"set": {"family": "netdev", "table": table_name(c), "name": "dports", "elem": [80]}},
        {"counter": {"family": "ip6", "table": table_name(c), "name": "nd", "packets": 4,
                     "bytes": 288}},
    ]  # fmt: skip
    (st,) = parse_tables(objects)
    assert st.config == cfg6(protocol="tcp", dports=[80], local_nodes=[]) and st.config.version == 6
    assert st.counters["nd"]["packets"] == 4


def test_static_up_and_down_an_ipv6_vip_with_a_shared_mac() -> None:
    fw, link = RecordingFirewall(), FakeLink({"eth0": NIC})
    node = Node(fw, link)
    c = cfg6(clustermac="03:bf:00:00:00:99")
    node.up(c)
    assert link.addresses["eth0"] == {(VIP6, 128)} and link.mcast["eth0"] == ["03:bf:00:00:00:99"]
    assert link.garps == [("eth0", VIP6, "03:bf:00:00:00:99")]
    assert "@th,208,48 0x02c100000001" in fw.scripts[-1]  # this node's own MAC, from the link
    # An IPv4 VIP with the same MAC is up too: taking the IPv6 one down keeps the MAC.
    v4 = config.build(
        vip="192.0.2.10", interface="eth0", total_nodes=3, local_nodes=[1], clustermac=c.clustermac
    )
    fw.objects = _objects(c) + _objects(v4)
    node.down(c.vip)
    assert link.mcast["eth0"] == ["03:bf:00:00:00:99"]
    fw.objects = _objects(v4)
    node.down(v4.vip)
    assert link.mcast["eth0"] == []


def _objects(c: config.VipConfig) -> list[dict[str, object]]:
    note = (
        f"clusterip/2 mode=static if=eth0 mac={c.clustermac.replace(':', '')} hash=1 n=3 "
        f"seed={c.seed:08x} proto=all plen={c.prefixlen} addr=1"
    )
    return [
        {"table": {"family": "netdev", "name": table_name(c)}},
        {"chain": {"family": "netdev", "table": table_name(c), "name": "ingress", "comment": note}},
        {"map": {"family": "netdev", "table": table_name(c), "name": "buckets", "elem": []}},
    ]


def test_which_for_an_ipv6_vip_and_mixed_families() -> None:
    def cip(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "clusterip", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    args = ["which", "--vip", VIP6, "-i", "eth0", "--total-nodes", "3", "--sport", "40312"]
    done = cip(*args, "--src", "2001:db8:1::7")
    c, src = cfg6(), ipaddress.IPv6Address("2001:db8:1::7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(flow_bucket(c.hashmode, c.seed, 3, src, 40312))
    bad = cip(*args, "--src", "192.0.2.7")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1
    assert "an IPv4 address, but the VIP is IPv6" in bad.stderr


def test_an_agent_announces_the_vip_when_it_takes_over_a_dead_nodes_buckets() -> None:
    from dataclasses import replace

    from clusterip.flows import FakeSockets
    from clusterip.reactor.datapath import AgentDatapath

    fw, link = RecordingFirewall(), FakeLink({"eth0": NIC})
    c = replace(config.build(vip=VIP6, interface="eth0", total_nodes=1), total_nodes=16)
    dp = AgentDatapath(c, 16, fw, link, FakeSockets(), flow_timeout=300)
    dp.start()
    assert link.garps == [("eth0", VIP6, c.clustermac)]  # the start's unsolicited NA
    dp.apply(Ownership.of(16, range(1, 9)))
    assert len(link.garps) == 1  # buckets from nobody: no news for the neighbours
    dp.apply(Ownership.of(16, range(1, 13), orphaned=range(9, 13)))
    assert link.garps[1:] == [("eth0", VIP6, c.clustermac)]
    dp.apply(Ownership.of(16, range(1, 13)))  # the orphans settled: nothing new
    assert len(link.garps) == 2


def test_dual_stack_lab_topology_and_build(tmp_path: object) -> None:
    import json
    from pathlib import Path

    from clusterip.lab.net import Lab
    from clusterip.lab.netops import MemoryNetOps
    from clusterip.lab.probe import ProbeSpec, format_sources, parse_sources
    from clusterip.lab.topo import LabTopo, in_lab_net

    topo = LabTopo("f6", 2, 300, ipv6=True)
    assert topo.node_addr6(2) == "fdc1::2" and topo.vip6 == "fdc1::100"
    addrs = topo.client_addrs6()
    assert addrs[0] == "fdc1:0:0:1::1" and addrs[-1] == "fdc1:0:0:1::12c" and len(addrs) == 300
    assert parse_sources(topo.client_range6()) == addrs
    assert format_sources(addrs) == topo.client_range6()
    with pytest.raises(ConfigError, match="lab traffic stays inside fdc1::/48"):
        in_lab_net("2001:db8::1", "VIP")
    with pytest.raises(ConfigError, match="first address must come first"):
        parse_sources("fdc1::1-198.18.1.1")
    spec = ProbeSpec.make(vip=topo.vip6, sources=topo.client_range6())
    assert spec.to_args()[1] == "fdc1::100"
    ops, state = MemoryNetOps(), Path(str(tmp_path))
    lab = Lab.build(topo, servers=False, state_dir=str(state), ops=ops)
    n2 = ops.links["f6-n2"]["eth0"]
    assert n2["addrs6"] == ["fdc1::2/64"] and n2["routes6"] == [("fdc1:0:0:1::/64", "fdc1::fe")]
    client = ops.links["f6-c"]
    assert client["eth0"]["addrs6"] == ["fdc1::fe/64"] and len(client["lo"]["addrs6"]) == 300
    for ns in topo.host_namespaces:  # IPv6 back on, no DAD, in the hosts only
        assert ops.sysctl_values[ns]["net.ipv6.conf.default.disable_ipv6"] == "0"
        assert ops.sysctl_values[ns]["net.ipv6.conf.default.accept_dad"] == "0"
    assert ops.sysctl_values["f6-sw"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    assert json.loads((state / "lab-f6.json").read_text())["topo"]["ipv6"] is True
    assert Lab.load("f6", state_dir=str(state), ops=ops).topo == topo
    lab.teardown()
