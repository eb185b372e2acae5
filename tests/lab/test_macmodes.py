"""MAC modes in the lab, on switches and routers modelled as real ones (clusterip.lab.topo):
an IGMP-snooping switch with a querier, a router that refuses multicast MACs in ARP.

- every mode, static: each flow answered by exactly the node `which` predicts (every
  hashmode), the client's neighbour entry is the cluster MAC, a take/release move keeps its
  connections;
- igmp on the snooping switch: a port that joined nothing receives no VIP frame, the members
  receive all of them; multicast mode: every port receives them;
- the router: multicast and igmp modes get no answer through it, unicast does;
- agents in igmp and unicast mode: serve, a join moves buckets without breaking a connection,
  failover after kill -9; an agent with another MAC mode is a foreign-fingerprint peer.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clusterip.config import VipConfig
from clusterip.core.holdings import claims, owner_of
from clusterip.hashing import flow_bucket
from clusterip.lab import snoop
from clusterip.lab.agents import Agents
from clusterip.lab.net import Lab
from clusterip.lab.snoop import count_port_frames, port_frames
from clusterip.lab.traffic import PortPicker, Traffic
from tests.lab.clients import udp_once
from tests.lab.conftest import MakeLab, start_agents

MODES = ("multicast", "igmp", "unicast")


def cip(lab: Lab, k: int, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = lab.run(lab.topo.node_ns(k), [sys.executable, "-m", "clusterip", *args], timeout=30)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def up(lab: Lab, nodes: range | list[int], total: int, mode: str, *extra: str) -> None:
    for k in nodes:
        base = ["up", "--vip", lab.topo.vip, "-i", "eth0", "--total-nodes", str(total)]
        cip(lab, k, *base, "--local-node", str(k), "--mac-mode", mode, *extra)


def status(lab: Lab, k: int) -> dict[str, Any]:
    (vip,) = json.loads(cip(lab, k, "status", "--json").stdout)["vips"]
    return vip  # type: ignore[no-any-return]


def wait_for(cond: Any, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def hold(lab: Lab, cfg: VipConfig, buckets: int, groups: dict[str, tuple[Any, int]]) -> Traffic:
    """Long-lived echo connections (port 7) from client ports chosen by bucket."""
    traffic = Traffic(lab)
    picked = PortPicker(lab.topo.client_addrs()).pick(cfg, buckets, 7, groups)
    for label, sources in picked.items():
        traffic.hold(label, sources, http=False)
    return traffic


def unbroken(traffic: Traffic) -> dict[str, list[dict[str, Any]]]:
    seen = traffic.finish().held
    broken = {k: [r for r in v if r["broken"]] for k, v in seen.items()}
    assert not any(broken.values()), {k: v[:3] for k, v in broken.items()}
    assert all(r["ok"] >= 2 for v in seen.values() for r in v), "connections that never spoke"
    return seen


# ----- static mode --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_static_serves_each_flow_on_its_node_and_moves_keep_connections(
    make_lab: MakeLab, mode: str
) -> None:
    lab = make_lab(nodes=3, clients=120, snooping=True)
    up(lab, lab.topo.node_indexes, 3, mode)
    st = status(lab, 1)
    cfg = lab.topo.vip_config(mac_mode=mode)
    assert st["mac_mode"] == mode and st["clustermac"] == cfg.clustermac
    assert (st["group"] == "239.255.0.100") == (mode == "igmp")
    seed = int(st["seed"], 16)
    res = lab.probe(proto="tcp", port=80, per_source=2)
    assert res.errors == 0, res.error_kinds()
    src = ipaddress.IPv4Address
    wrong = [
        r
        for r in res.results
        if r.node != f"n{flow_bucket(cfg.hashmode, seed, 3, src(r.src), r.sport, r.dport)}"
    ]
    assert not wrong, wrong[:5]
    assert set(res.by_node) == {"n1", "n2", "n3"}
    for r in res.results[:3]:  # and `which` says the same
        args = ["which", "--vip", lab.topo.vip, "--src", r.src, "--sport", str(r.sport), "--json"]
        assert f"n{json.loads(cip(lab, 2, *args).stdout)['node']}" == r.node
    answers = udp_once(lab, list(lab.topo.client_addrs())[:100])
    assert all(len(a) == 1 for a in answers.values()), {
        k: v for k, v in answers.items() if len(v) != 1
    }
    assert lab.neighbour("client", lab.topo.vip) == cfg.clustermac
    # The other hashmodes (the default's done above): each flow on its node too.
    for hashmode in ("sourceip", "sourceip-sourceport-destport"):
        up(lab, lab.topo.node_indexes, 3, mode, "--hashmode", hashmode)
        res = lab.probe(proto="tcp", port=80, per_source=2)
        assert res.errors == 0, (hashmode, res.error_kinds())
        wrong = [
            r
            for r in res.results
            if r.node != f"n{flow_bucket(hashmode, seed, 3, src(r.src), r.sport, r.dport)}"
        ]
        assert not wrong, (hashmode, wrong[:5])
    up(lab, lab.topo.node_indexes, 3, mode)
    # A move: node 3's bucket to node 1, under long-lived connections in every bucket.
    traffic = hold(lab, cfg, 3, {"moved": ({3}, 30), "other": ({1, 2}, 15)})
    try:
        time.sleep(0.6)
        cip(lab, 3, "release", "3", "--vip", lab.topo.vip)
        cip(lab, 1, "take", "3", "--vip", lab.topo.vip)
        after = lab.probe(proto="tcp", port=80, per_source=2)
        time.sleep(0.6)
    except BaseException:
        traffic.kill()
        raise
    seen = unbroken(traffic)
    assert {r["node"] for r in seen["moved"]} == {"n3"}  # they stayed where they were
    assert after.errors == 0
    moved = [
        r for r in after.results if flow_bucket(cfg.hashmode, seed, 3, src(r.src), r.sport, 80) == 3
    ]
    assert moved and {r.node for r in moved} == {"n1"}


def mdb_ports(lab: Lab, group: str = "239.255.0.100") -> set[str]:
    """The switch ports that joined `group` (the lab VIP's igmp group by default)."""
    return snoop.mdb_ports(lab, group)


def test_snooping_switch_igmp_reaches_members_only_multicast_every_port(make_lab: MakeLab) -> None:
    """Node 4 serves nothing: the port a switch should spare."""
    built = time.monotonic()
    lab = make_lab(nodes=4, clients=40, snooping=True)
    # The bridge's querier is established about 10 s after the bridge comes up: from then on a
    # Linux bridge alone would send the VIP's frames to router ports only (clusterip.lab.snoop).
    time.sleep(max(0.0, 15.0 - (time.monotonic() - built)))
    seen: dict[str, dict[str, int]] = {}
    for mode in ("igmp", "multicast"):
        up(lab, [1, 2, 3], 3, mode)
        if mode == "igmp":  # the switch learnt the members from the kernels' own reports
            wait_for(lambda: mdb_ports(lab) == {"n1", "n2", "n3"}, "the members' reports")
        count_port_frames(lab)
        res = lab.probe(proto="tcp", port=80, per_source=2)
        assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}, res.by_node
        seen[mode] = port_frames(lab)
    # Leaving igmp mode left the group: the kernels' leaves reached the switch.
    wait_for(lambda: mdb_ports(lab) == set(), "the members to leave the group")
    igmp, flood = seen["igmp"], seen["multicast"]
    requests = 80
    assert igmp["n4"] == 0, igmp
    assert igmp["n1"] == igmp["n2"] == igmp["n3"] >= 3 * requests, igmp  # SYN, ACK, GET, ...
    assert flood["n4"] == flood["n1"] == flood["n2"] == flood["n3"] >= 3 * requests, flood


def test_a_router_refusing_multicast_macs_reaches_the_vip_in_unicast_mode_only(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(nodes=3, clients=10, router=True)
    vip = lab.topo.vip
    refused_before = 0
    for mode, works in (("multicast", False), ("igmp", False), ("unicast", True)):
        up(lab, lab.topo.node_indexes, 3, mode)  # `up` in another mode replaces the setup
        lab.run("router", ["ip", "neigh", "flush", "all"], timeout=10)
        got = lab.run("router", ["curl", "-s", "-m", "2", f"http://{vip}/"], timeout=15)
        assert (got.returncode == 0) == works, (mode, got.returncode, got.stdout)
        if works:
            assert got.stdout.strip() in ("n1", "n2", "n3")
            assert lab.neighbour("router", vip) == "02:bf:c6:12:00:64"
        listing = lab.run("router", ["nft", "-j", "list", "counters"], timeout=10).stdout
        refused = sum(
            o["counter"]["packets"] for o in json.loads(listing)["nftables"] if "counter" in o
        )
        if not works:  # and why (in unicast mode the earlier modes' late replies may still come)
            assert refused > refused_before, (mode, refused)
        refused_before = refused
    # The unicast MAC sits in every node's unicast filter, never in its multicast list.
    for k in lab.topo.node_indexes:
        fdb = lab.run(f"n{k}", ["bridge", "fdb", "show", "dev", "eth0"], timeout=10).stdout
        assert "02:bf:c6:12:00:64 self permanent" in fdb
        mcast = lab.run(f"n{k}", ["cat", "/proc/net/dev_mcast"], timeout=10).stdout
        assert "03bfc6120064" not in mcast and "01005e7f0064" not in mcast  # the old modes' gone


# ----- agents -------------------------------------------------------------------------------


def predicted(a: Agents, cfg: VipConfig, results: list[Any]) -> list[Any]:
    """The results answered by another node than the agents' view says."""
    st = a.vip_status(1)
    view = {int(k): w for k, w in st["view"].items()}
    seed, buckets = int(st["seed"], 16), st["buckets"]
    bad = []
    for r in results:
        b = flow_bucket(cfg.hashmode, seed, buckets, ipaddress.IPv4Address(r.src), r.sport, r.dport)
        if r.node != f"n{owner_of(view, buckets, b)}":
            bad.append(r)
    return bad


@pytest.mark.parametrize("mode", ["igmp", "unicast"])
def test_agents_serve_move_without_breaking_and_fail_over(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents], mode: str
) -> None:
    lab = make_lab(nodes=3, clients=60, snooping=True)
    cfg = lab.topo.vip_config(mac_mode=mode)
    a = start_agents(lab, tmp_path, agents, [1, 2], "--mac-mode", mode)
    assert a.vip_status(1)["mac_mode"] == mode
    # Node 3 joins: its buckets move from 1 and 2 while connections in them are held.
    joining = claims({1: 1, 2: 1, 3: 1}, 4096, 3)
    traffic = hold(
        lab, cfg, 4096, {"moved": (joining, 30), "other": (set(range(1, 4097)) - joining, 10)}
    )
    try:
        time.sleep(0.6)
        a.start(3)
        a.wait_converged([1, 2, 3])
        time.sleep(0.6)
    except BaseException:
        traffic.kill()
        raise
    seen = unbroken(traffic)
    assert {r["node"] for r in seen["moved"]} <= {"n1", "n2"}
    res = lab.probe(proto="tcp", port=80, per_source=3)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}, res.by_node
    assert not predicted(a, cfg, res.results)
    # Failover: kill -9 node 3's agent; the survivors take its buckets.
    a.kill(3)
    a.wait_converged([1, 2])
    after = lab.probe(proto="tcp", port=80, per_source=3)
    assert after.errors == 0 and set(after.by_node) == {"n1", "n2"}, after.by_node
    assert not predicted(a, cfg, after.results)
    assert lab.neighbour("client", lab.topo.vip) == cfg.clustermac


def test_an_agent_with_another_mac_mode_is_a_foreign_fingerprint_peer(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=20)
    a = start_agents(lab, tmp_path, agents, [1, 2])
    a.start(3, args=("--mac-mode", "unicast"))
    a.wait_for(lambda: a.vip_status(3)["state"] == "passive", "node 3 to hold back", timeout=15)
    # Which setting differs comes with the peers' CONFIG (every 2 s).
    a.wait_for(lambda: "mac_mode" in a.vip_status(3)["reason"], "node 3's reason", timeout=10)
    st3 = a.vip_status(3)
    assert st3["owned_count"] == 0 and "mac_mode 'multicast' (ours 'unicast')" in st3["reason"], st3
    a.wait_for(
        lambda: any("mac_mode" in r["detail"] for r in a.vip_status(1)["refused"]),
        "node 1 to report it, and what differs",
        timeout=10,
    )
    (r,) = [r for r in a.vip_status(1)["refused"] if r["node_id"] == 3]
    assert (
        r["cause"] == "foreign_fingerprint"
        and "mac_mode 'unicast' (ours 'multicast')" in r["detail"]
    ), r
    res = lab.probe(proto="tcp", port=80, per_source=3)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2"}


# ----- IPv6 ---------------------------------------------------------------------------------


def test_ipv6_igmp_mode_is_mld_and_unicast_passes_the_router(make_lab: MakeLab) -> None:
    """An IPv6 VIP: igmp mode joins ff05::b6XX:XXXX through MLD (node 4, a member of nothing,
    receives no VIP frame); the router refuses an NA with a multicast MAC, not unicast's."""
    lab = make_lab(nodes=4, clients=20, ipv6=True, snooping=True, router=True)
    vip6 = lab.topo.vip6
    for mode in ("igmp", "unicast"):
        for k in (1, 2, 3):
            args = ["up", "--vip", vip6, "-i", "eth0", "--total-nodes", "3", "--local-node"]
            cip(lab, k, *args, str(k), "--mac-mode", mode)
        cfg = lab.topo.vip_config(vip=vip6, mac_mode=mode)
        if mode == "igmp":
            group = str(cfg.mac_plan.group)
            assert group == "ff05::b600:100"
            members = {"n1", "n2", "n3"}
            wait_for(lambda g=group, m=members: mdb_ports(lab, g) == m, "the MLD reports")
        count_port_frames(lab, [vip6])
        res = lab.probe(proto="tcp", port=80, vip=vip6, sources=lab.topo.client_range6())
        assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}, res.by_node
        frames = port_frames(lab)
        assert lab.neighbour("client", vip6) == cfg.clustermac
        lab.run("router", ["ip", "-6", "neigh", "flush", "all"], timeout=10)
        url = f"http://[{vip6}]/"
        got = lab.run("router", ["curl", "-s", "-m", "2", "-g", url], timeout=15)
        for host, args in (("n1", ["--vip", vip6]), ("client", ["--client", "--vip", vip6])):
            argv = [sys.executable, "-m", "clusterip", "doctor", "--json", *args]
            done = lab.run(host, argv, timeout=60)
            checks = json.loads(done.stdout)["checks"]
            assert not [c for c in checks if c["status"] == "FAIL"], (mode, host, checks)
            heard = " ".join(c["message"] for c in checks if c["name"].endswith(("segment", "nd")))
            assert "2 other node(s) answer" in heard or "every answer carries" in heard, heard
        if mode == "igmp":
            assert frames["n4"] == 0 and frames["n1"] == frames["n2"] == frames["n3"] > 0, frames
            assert got.returncode != 0, got.stdout  # 33:33:b6:00:01:00 in the NA: refused
        else:
            assert frames["n4"] == frames["n1"] > 0, frames  # unicast floods
            assert got.returncode == 0 and got.stdout.strip() in ("n1", "n2", "n3"), got


def test_igmp_membership_outlives_an_agents_planned_restart(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    """The group is joined through an autojoin address, held by the kernel: while no agent
    runs on node 2 (a planned restart, its lease serving), the switch still delivers the VIP's
    frames there. A membership held by the agent's socket would have left with it."""
    lab = make_lab(nodes=3, clients=30, snooping=True)
    a = start_agents(lab, tmp_path, agents, [1, 2, 3], "--mac-mode", "igmp")
    assert mdb_ports(lab) == {"n1", "n2", "n3"}
    before = a.owned([1, 2, 3])
    assert a.stop(2) == 0  # SIGTERM: a planned stop
    time.sleep(2.5)  # a leave would have been processed by now (last member query: 2 x 1 s)
    assert mdb_ports(lab) == {"n1", "n2", "n3"}
    res = lab.probe(proto="tcp", port=80, per_source=2)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}, res.by_node
    a.start(2)
    a.wait_converged([1, 2, 3])
    assert a.owned([1, 2, 3]) == before


def test_a_snooping_linux_bridge_alone_starves_the_multicast_modes(make_lab: MakeLab) -> None:
    """What the README warns of: a Linux bridge with snooping and a querier, its ports not
    router ports (the lab's switch without its MAC-table model), forwards multicast by the IP
    destination inside. Once its querier is up, a multicast-MAC frame carrying a unicast IP
    packet goes to router ports only: no node gets the VIP's frames in multicast (or igmp)
    mode; unicast mode is unaffected."""
    built = time.monotonic()
    lab = make_lab(nodes=3, clients=20, snooping=True)
    for port, _ns in lab.topo.ports():  # back to the bridge's default: learnt router ports
        lab.run("switch", ["bridge", "link", "set", "dev", port, "mcast_router", "1"],
                timeout=10, check=True)  # fmt: skip
    lab.run("switch", ["nft", "delete", "table", "bridge", "lab_snoop"], timeout=10, check=True)
    up(lab, lab.topo.node_indexes, 3, "multicast")
    time.sleep(max(0.0, 16.0 - (time.monotonic() - built)))  # the querier is up by then
    res = lab.probe(proto="tcp", port=80, timeout=0.5)
    assert res.errors == len(res.results), res.by_node  # nobody answers
    up(lab, lab.topo.node_indexes, 3, "unicast")
    lab.run("client", ["ip", "neigh", "flush", "all"], timeout=10)
    res = lab.probe(proto="tcp", port=80)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}, res.by_node
