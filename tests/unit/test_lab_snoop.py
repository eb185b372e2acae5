"""The lab's models of real networks, without a kernel: a snooping switch's MAC table, the
router, per-port frame counters, the topology's new hosts."""

from __future__ import annotations

import json

from clusterip.lab.net import Lab
from clusterip.lab.netops import MemoryNetOps
from clusterip.lab.snoop import members, parse_mdb, parse_port_counters, render_sync
from clusterip.lab.topo import LabTopo, router_rules

MDB = json.dumps(
    [
        {
            "mdb": [
                {"index": 5, "dev": "br0", "port": "n1", "grp": "239.255.0.100", "state": "temp"},
                {"index": 5, "dev": "br0", "port": "n2", "grp": "239.255.0.100", "state": "temp"},
                {"index": 5, "dev": "br0", "port": "n2", "grp": "ff05::b600:100", "state": "temp"},
                {"index": 5, "dev": "br0", "grp": "239.1.1.1", "state": "temp"},  # the bridge's
            ],
            "router": {},
        }
    ]
)


def test_memberships_become_group_macs_and_their_ports() -> None:
    got = members(parse_mdb(MDB))
    assert got == {
        "01:00:5e:7f:00:64": frozenset({"n1", "n2"}),
        "33:33:b6:00:01:00": frozenset({"n2"}),
    }
    script = render_sync(got)
    assert "flush set bridge lab_snoop groups" in script
    assert 'add element bridge lab_snoop members { 01:00:5e:7f:00:64 . "n1", ' in script
    assert render_sync({}).count("add element") == 0  # no member: the sets are empty
    assert members(parse_mdb("")) == {}


def test_port_counters_parse() -> None:
    doc = {
        "nftables": [
            {"metainfo": {}},
            {"counter": {"family": "bridge", "name": "port_n4", "packets": 0, "bytes": 0}},
            {"counter": {"family": "bridge", "name": "port_n1", "packets": 7, "bytes": 9}},
        ]
    }
    assert parse_port_counters(json.dumps(doc)) == {"n4": 0, "n1": 7}


def test_router_and_snooping_are_data_of_the_topology(tmp_path: object) -> None:
    t = LabTopo("mm", 3, 2, snooping=True, router=True)
    assert t.hosts()["router"] == "mm-r" and t.switch_port("mm-r") == "r"
    assert t.host_addrs("mm-r") == ("198.18.0.253",) and t.host_mac("mm-r") == "02:c1:00:00:02:00"
    assert "arp saddr ether & 01:00:00:00:00:00 == 01:00:00:00:00:00" in router_rules()
    ops = MemoryNetOps()
    lab = Lab.build(t, servers=False, state_dir=str(tmp_path), ops=ops, snoop=False)
    try:
        assert ops.links["mm-sw"]["br0"]["snooping"] is True
        assert ops.links["mm-r"]["nft"] == [router_rules()]
        assert Lab.load("mm", state_dir=str(tmp_path), ops=ops).topo == t
    finally:
        lab.teardown()
    plain = LabTopo("mm", 3, 2)
    assert "router" not in plain.hosts() and len(plain.host_namespaces) == 4
