"""`clusterip doctor` without a kernel: each decision over facts, the ruleset scan, the frames
it sends and parses."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from clusterip import nd
from clusterip.doctor import checks as chk
from clusterip.doctor import rules, wire
from clusterip.doctor.clientchecks import client_checks
from clusterip.doctor.facts import ClientFacts, KernelFacts, VipFacts

VIP = "198.18.0.100"
CMAC = "03:bf:c6:12:00:64"
GOOD = VipFacts(
    vip=VIP, interface="eth0", version=4, mac_mode="multicast", clustermac=CMAC, group=None,
    mode="static", own_mac="02:c1:00:00:00:01", counters_before={"accepted": 5, "foreign": 9},
    counters_after={"accepted": 8, "foreign": 15}, rp_filter=0,
    answers=(("02:c1:00:00:00:02", CMAC), ("02:c1:00:00:00:03", CMAC)),
)  # fmt: skip


def statuses(checks: list[chk.Check]) -> dict[str, str]:
    return {c.name.replace(f"{VIP} ", ""): c.status for c in checks}


def test_a_healthy_node_is_all_ok_and_exits_0() -> None:
    got = chk.node_checks(GOOD) + chk.segment_checks(VIP, CMAC, GOOD.answers)
    assert {c.status for c in got} == {chk.OK}, [c.line() for c in got if c.status != chk.OK]
    assert chk.exit_code(got) == 0
    assert "2 other node(s) answer with 03:bf:c6:12:00:64" in got[-1].message


@pytest.mark.parametrize(
    ("change", "name", "status", "says"),
    [
        (dict(mac_held=False), "mac filter", chk.FAIL, "ip maddr add 03:bf:c6:12:00:64 dev eth0"),
        (dict(mac_held=False, mac_mode="unicast", clustermac="02:bf:c6:12:00:64"), "mac filter",
         chk.FAIL, "bridge fdb add 02:bf:c6:12:00:64 dev eth0 self permanent"),
        (dict(mac_held=False, mac_mode="igmp", group="239.255.0.100"), "mac filter", chk.FAIL,
         "ip addr add 239.255.0.100/32 dev eth0 autojoin"),
        (dict(has_address=False), "address", chk.FAIL, "not on eth0"),
        (dict(tables=False), "tables", chk.FAIL, "netdev table is missing"),
        (dict(rp_filter=1, rp_drops=12), "rp_filter", chk.FAIL, "rp_filter=1 on eth0 dropped 12"),
        (dict(rp_filter=1, rp_drops=0), "rp_filter", chk.OK, "rp_filter=1"),
        (dict(arp_ignore=2), "arp_ignore", chk.FAIL, "hides the VIP"),
        (dict(arp_ignore=8), "arp_ignore", chk.FAIL, "never answered"),
        (dict(counters_before={}, counters_after={}), "counters", chk.WARN,
         "no VIP packet has ever reached this node"),
        (dict(counters_after=dict(GOOD.counters_before)), "counters", chk.OK,
         "idle: no VIP packet in 1 s, 14 since the tables were made"),
        (dict(counters_after={**GOOD.counters_after, "down": 4}), "counters", chk.FAIL,
         "the agent is gone"),
        (dict(other_drops=("table inet filter chain input handle 7: drops 198.18.0.100",)),
         "other tables", chk.FAIL, "table inet filter chain input handle 7"),
        (dict(other_policies=("table ip filter chain INPUT (input)",)), "other tables",
         chk.WARN, "policy drop"),
        (dict(offloads=("flowtable ft in table inet f",)), "offloads", chk.WARN, "flowtable"),
        (dict(mac_mode="unicast", promiscuous=True), "promiscuous", chk.WARN,
         "a NIC without a unicast filter"),
    ],
)  # fmt: skip
def test_each_finding_is_named_with_its_fix(
    change: dict[str, object], name: str, status: str, says: str
) -> None:
    got = [c for c in chk.node_checks(replace(GOOD, **change)) if c.name == f"{VIP} {name}"]
    assert len(got) == 1 and got[0].status == status, [c.line() for c in got]
    assert says in got[0].line()
    assert "\n" not in got[0].line()


def test_ipv6_nodad() -> None:
    v6 = replace(GOOD, vip="fdc1::100", version=6, rp_filter=None)
    assert {
        c.name: c.status for c in chk.node_checks(replace(v6, addr_flags=frozenset({"nodad"})))
    }["fdc1::100 nodad"] == chk.OK
    bad = chk.node_checks(replace(v6, addr_flags=frozenset({"nodad", "dadfailed"})))
    (c,) = [c for c in bad if c.name == "fdc1::100 nodad"]
    assert c.status == chk.FAIL and "dadfailed" in c.message and "nodad" in c.fix


def test_segment_names_a_conflicting_host_and_a_differently_configured_node() -> None:
    host = chk.segment_checks(VIP, CMAC, [("02:c1:00:00:00:02", CMAC), ("0a:00:00:00:00:09",) * 2])
    assert host[0].status == chk.FAIL and "address conflict" in host[0].message
    assert "0a:00:00:00:00:09" in host[0].message
    node = chk.segment_checks(VIP, CMAC, [("02:c1:00:00:00:03", "02:bf:c6:12:00:64")])
    assert node[0].status == chk.FAIL and "another cluster MAC" in node[0].message
    assert chk.segment_checks(VIP, CMAC, [], probed=False)[0].status == chk.WARN


def test_agent_peers() -> None:
    doc = {
        "vip": VIP,
        "state": "active",
        "members": [{"id": 1, "counted": True}, {"id": 2, "counted": True}],
        "refused": [
            {"address": "198.18.0.3", "node_id": 3, "cause": "foreign_fingerprint", "count": 9,
             "detail": "cluster fingerprint aa, ours bb; differs in seed 1 (ours 2)"},
            {"address": "198.18.0.4", "node_id": 2, "cause": "duplicate_node_id", "count": 1,
             "detail": ""},
        ],
    }  # fmt: skip
    got = chk.agent_checks(doc)
    assert got[0].status == chk.OK and "members heard: 1, 2" in got[0].message
    lines = [c.line() for c in got if c.status == chk.FAIL]
    assert any(
        "foreign-fingerprint peer node 3 (198.18.0.3): differs in seed 1" in x for x in lines
    )
    assert any("duplicate node id: node 2 (198.18.0.4)" in x for x in lines)
    alone = chk.agent_checks({**doc, "refused": [], "state": "passive", "reason": "hears X"})
    assert alone[0].status == chk.FAIL and "hears X" in alone[0].message
    assert alone[1].status == chk.OK


CLIENT = ClientFacts(
    vip=VIP,
    interface="eth0",
    neighbour=CMAC,
    neighbour_state="reachable",
    answers=((("02:c1:00:00:00:01", CMAC)),),
    flows=((40001, ("02:c1:00:00:00:01",)), (40002, ("02:c1:00:00:00:02",))),
)


def test_client_checks() -> None:
    assert chk.exit_code(client_checks(CLIENT)) == 0
    router = replace(CLIENT, neighbour=None, neighbour_state="failed", flows=())
    (n,) = [c for c in client_checks(router) if c.name.endswith("neighbour")]
    assert n.status == chk.FAIL and "refuses a multicast MAC" in n.message
    assert "--mac-mode unicast" in n.fix
    leaked = replace(CLIENT, neighbour="02:c1:00:00:00:01")
    assert "leaked" in client_checks(leaked)[1].message
    twice = replace(
        CLIENT, flows=((40001, ("02:c1:00:00:00:01", "02:c1:00:00:00:02")), (40002, ()))
    )
    msgs = [c.message for c in client_checks(twice) if c.status == chk.FAIL]
    assert any("disagree on the hash" in m for m in msgs) and any("no node" in m for m in msgs)
    split = replace(CLIENT, predicted={40001: 2, 40002: 2})
    assert any("bucket 2" in c.message for c in client_checks(split) if c.status == chk.FAIL)
    conflict = replace(CLIENT, answers=(("a", CMAC), ("b", "0a:00:00:00:00:09")))
    assert client_checks(conflict)[0].status == chk.FAIL


def test_kernel_checks() -> None:
    k = KernelFacts("6.18.4", "", {"jhash": "", "netdev ingress": "", "socket": "No such file"})
    got = {c.name: c.status for c in chk.kernel_checks(k)}
    assert got == {"kernel": chk.OK, "libnftables": chk.OK, "nft jhash": chk.OK,
                   "nft netdev ingress": chk.OK, "nft socket": chk.WARN}  # fmt: skip
    old = chk.kernel_checks(KernelFacts("5.10.0-21-amd64", "no module named nftables"))
    assert [c.status for c in old] == [chk.FAIL, chk.FAIL]


def test_ruleset_scan() -> None:
    objects = [
        {"table": {"family": "inet", "name": "filter"}},
        {"chain": {"family": "inet", "table": "filter", "name": "input", "hook": "input",
                   "policy": "drop"}},
        {"chain": {"family": "ip", "table": "nat", "name": "post", "hook": "postrouting",
                   "policy": "drop"}},
        {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 7,
                  "expr": [{"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                      "right": VIP, "op": "=="}}, {"drop": None}]}},
        {"rule": {"family": "netdev", "table": "clusterip_198_18_0_100", "chain": "vip",
                  "expr": [{"match": {"right": VIP}}, {"drop": None}]}},
        {"flowtable": {"family": "inet", "table": "filter", "name": "ft"}},
    ]  # fmt: skip
    f = rules.scan(objects, VIP, 4, "eth0")
    assert f.drops == ("table inet filter chain input handle 7: drops 198.18.0.100",)
    assert f.policies == ("table inet filter chain input (input)",)
    assert f.offloads == ("flowtable ft in table inet filter",)
    assert rules.scan(objects, "fdc1::100", 6, "eth0").drops == ()


def test_frames_round_trip() -> None:
    vip4 = ipaddress.IPv4Address(VIP)
    req = wire.arp_request("02:c1:00:00:00:01", ipaddress.IPv4Address("198.18.0.1"), vip4)
    assert len(req) == 42 and req[:6] == b"\xff" * 6
    reply = bytearray(req)
    reply[:6] = req[6:12]
    reply[6:12] = bytes.fromhex("02c100000002")
    reply[20:22] = b"\x00\x02"
    reply[22:28] = nd.mac_bytes(CMAC)
    reply[28:32] = vip4.packed
    assert wire.parse_answer(bytes(reply), vip4) == ("02:c1:00:00:00:02", CMAC)
    assert wire.parse_answer(req, vip4) is None  # a request is no answer
    vip6 = ipaddress.IPv6Address("fdc1::100")
    ns = wire.neighbor_solicitation("02:c1:00:00:00:01", ipaddress.IPv6Address("fe80::1"), vip6)
    parsed = nd.parse(ns)
    assert parsed is not None and parsed["checksum_ok"] and parsed["target"] == str(vip6)
    na = nd.unsolicited_na("02:c1:00:00:00:02", vip6, "03:b6:00:00:01:00")
    assert wire.parse_answer(na, vip6) == ("02:c1:00:00:00:02", "03:b6:00:00:01:00")
