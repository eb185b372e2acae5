"""`clusterip doctor` in the lab: each failure it must name, made for real, named correctly.

A healthy cluster first (no FAIL, node and client), then one fault per test: a wrong seed on
one node, the cluster MAC missing from a node's filter, another host holding the VIP, rp_filter
dropping the clients' packets, a router refusing the multicast MAC, an agent with another
configuration (a foreign-fingerprint peer), an agent started with another node's id.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clusterip.lab.agents import Agents
from clusterip.lab.net import Lab
from tests.lab.clients import finish_loop, start_loop
from tests.lab.conftest import MakeLab, start_agents

CMAC = "03:bf:c6:12:00:64"


def cip(lab: Lab, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.run(host, [sys.executable, "-m", "clusterip", *args], timeout=60)


def up(lab: Lab, k: int, *extra: str) -> None:
    args = ["up", "--vip", lab.topo.vip, "-i", "eth0", "--total-nodes", "3", "--local-node"]
    done = cip(lab, f"n{k}", *args, str(k), *extra)
    assert done.returncode == 0, done.stderr


def doctor(lab: Lab, host: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    done = cip(lab, host, "doctor", "--json", *args)
    assert done.returncode in (0, 1, 2), done.stderr
    doc = json.loads(done.stdout)
    assert doc["exit"] == done.returncode
    return done.returncode, doc["checks"]


def failed(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in checks if c["status"] == "FAIL"]


def only_fail(checks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The one FAIL, and that it is the named check's."""
    bad = failed(checks)
    assert [c["name"] for c in bad] == [name], bad
    return bad[0]


def test_healthy_cluster_then_wrong_seed_on_one_node(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=10)
    for k in (1, 2, 3):
        up(lab, k)
    code, checks = doctor(lab, "n1")
    assert code in (0, 1) and not failed(checks), failed(checks)  # WARN: no traffic now
    code, checks = doctor(lab, "client", "--client", "--vip", lab.topo.vip, "--total-nodes", "3")
    assert code == 0, checks
    up(lab, 3, "--seed", "1234")  # node 3 hashes with another seed
    code, checks = doctor(lab, "client", "--client", "--vip", lab.topo.vip)
    assert code == 2
    bad = failed(checks)
    assert bad and all(c["name"] == f"{lab.topo.vip} flows" for c in bad), bad
    assert any("disagree on the hash" in c["message"] for c in bad), bad
    assert "seed" in bad[0]["fix"]


def test_mac_missing_from_the_filter(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=10, servers=False)
    for k in (1, 2, 3):
        up(lab, k)
    lab.run("n2", ["ip", "maddr", "del", CMAC, "dev", "eth0"], timeout=10, check=True)
    code, checks = doctor(lab, "n2")
    c = only_fail(checks, f"{lab.topo.vip} mac filter")
    assert code == 2 and CMAC in c["message"] and f"ip maddr add {CMAC} dev eth0" in c["fix"]
    # Unicast mode: the MAC leaves the unicast filter.
    for k in (1, 2, 3):
        up(lab, k, "--mac-mode", "unicast")
    lab.run("n2", ["bridge", "fdb", "del", "02:bf:c6:12:00:64", "dev", "eth0", "self"], timeout=10)
    code, checks = doctor(lab, "n2")
    c = only_fail(checks, f"{lab.topo.vip} mac filter")
    assert "unicast filter" in c["message"] and "bridge fdb add 02:bf:c6:12:00:64" in c["fix"]


def test_a_conflicting_host_with_the_vip(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=4, clients=10, servers=False)
    for k in (1, 2, 3):
        up(lab, k)
    lab.run(
        "n4", ["ip", "addr", "add", f"{lab.topo.vip}/16", "dev", "eth0"], timeout=10, check=True
    )
    code, checks = doctor(lab, "n1")
    c = only_fail(checks, f"{lab.topo.vip} segment")
    assert code == 2 and lab.topo.node_mac(4) in c["message"] and "address conflict" in c["message"]


def test_rp_filter_dropping_the_clients(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=20)
    for k in (1, 2, 3):
        up(lab, k)
    # Node 1 routes the clients elsewhere and checks the reverse path strictly.
    for argv in (
        ["ip", "link", "add", "rp0", "type", "veth", "peer", "name", "rp1"],
        ["ip", "link", "set", "rp0", "up"],
        ["ip", "link", "set", "rp1", "up"],
        ["ip", "route", "replace", "198.18.1.0/24", "dev", "rp0"],
    ):
        lab.run("n1", argv, timeout=10, check=True)
    lab.sysctls("n1", {"net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.eth0.rp_filter": "1"})
    loop = start_loop(lab, list(lab.topo.client_addrs()), duration=6.0, timeout=0.3)
    try:
        time.sleep(0.5)
        code, checks = doctor(lab, "n1", "--window", "2")
    finally:
        finish_loop(loop)
    c = only_fail(checks, f"{lab.topo.vip} rp_filter")
    assert code == 2 and "rp_filter=1 on eth0 dropped" in c["message"] and "rp_filter=2" in c["fix"]


def test_a_router_refusing_the_multicast_mac(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=10, router=True)
    for k in (1, 2, 3):
        up(lab, k)
    code, checks = doctor(lab, "router", "--client", "--vip", lab.topo.vip)
    c = [c for c in failed(checks) if c["name"] == f"{lab.topo.vip} neighbour"]
    assert code == 2 and c, checks
    assert "refuses a multicast MAC" in c[0]["message"] and "--mac-mode unicast" in c[0]["fix"]
    for k in (1, 2, 3):  # the fix it names works
        up(lab, k, "--mac-mode", "unicast")
    lab.run("router", ["ip", "neigh", "flush", "all"], timeout=10)
    code, checks = doctor(lab, "router", "--client", "--vip", lab.topo.vip)
    assert code == 0, failed(checks)


def test_a_foreign_fingerprint_peer(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=10)
    a = start_agents(lab, tmp_path, agents, [1, 2])
    a.start(3, args=("--seed", "1234"))
    a.wait_for(
        lambda: any("differs in seed" in r["detail"] for r in a.vip_status(1)["refused"]),
        "node 1 to hear what differs",
    )
    code, checks = doctor(lab, "n1")
    c = only_fail(checks, f"{lab.topo.vip} peers")
    assert (
        code == 2
        and "foreign-fingerprint peer node 3 (198.18.0.3): differs in seed" in c["message"]
    )
    code, checks = doctor(lab, "n3")  # the odd one knows it too
    assert any("passive" in c["message"] for c in failed(checks)), failed(checks)


def test_a_duplicate_node_id(make_lab: MakeLab, tmp_path: Path, agents: list[Agents]) -> None:
    """A third agent started with node 2's id: node 2 hears its own id from another address,
    and doctor there names it. The newer incarnation of an id wins (as a restarted agent's
    does), so node 2 also reports itself passive, for that reason."""
    lab = make_lab(nodes=3, clients=10)
    a = start_agents(lab, tmp_path, agents, [1, 2])
    a.start(3, args=("--node-id", "2"))
    a.wait_for(
        lambda: any(r["cause"] == "duplicate_node_id" for r in a.vip_status(2)["refused"]),
        "node 2 to hear its id from another address",
    )
    code, checks = doctor(lab, "n2")
    bad = {c["name"]: c for c in failed(checks)}
    vip = lab.topo.vip
    assert code == 2 and set(bad) == {f"{vip} peers", f"{vip} agent"}, bad
    c = bad[f"{vip} peers"]
    assert "duplicate node id: node 2 (198.18.0.3)" in c["message"], c
    assert c["fix"] == "give every node its own --node-id", c
    assert "node id 2 is also used by 198.18.0.3" in bad[f"{vip} agent"]["message"], bad
