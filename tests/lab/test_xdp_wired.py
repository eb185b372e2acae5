"""The XDP pre-filter wired into `clusterip up` and the agent, on the lab's veths (native XDP).

Static mode: `up` attaches through netlink, `status` shows it and its counters, frames with a
forged multicast source are dropped, `down` leaves nothing attached or pinned. Agent mode: the
program goes with the agent (kill -9 or a planned stop: nft alone then serves, through the
lease), the successor attaches its own; the fast path carries steady buckets; the counters are
in `status --json` and the metrics.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from clusterip.lab.agents import Agents
from clusterip.lab.net import Lab
from tests.lab.clients import udp_once
from tests.lab.conftest import MakeLab, start_agents
from tests.lab.test_datapath import cip, status, up_all
from tests.lab.test_xdp import prog_on

SEND_FRAMES = r"""
import socket, sys
from ipaddress import IPv4Address
from clusterip.xdp.frames import frame
src, vip, src_mac, dst_mac, count, port = sys.argv[1:7]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((port, 0))
for i in range(int(count)):
    s.send(frame(IPv4Address(src), IPv4Address(vip), "udp", 41000 + i, 5300,
                 dst_mac=dst_mac, src_mac=src_mac))
print("sent", count)
"""


def xdp_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["xdp"]  # type: ignore[no-any-return]


def send_frames(lab: Lab, k: int, src_mac: str, count: int) -> None:
    """Frames straight into node k's link, from its switch port: a bridge (as most switches)
    drops frames with a multicast source, so only a sender on the wire itself gets them in."""
    src = lab.topo.client_addrs()[0]
    mac = "03:bf:c6:12:00:64"  # the lab VIP's cluster MAC
    port = lab.topo.node_name(k)
    argv = [sys.executable, "-c", SEND_FRAMES, src, lab.topo.vip, src_mac, mac, str(count), port]
    done = lab.run(lab.topo.switch_ns, argv, timeout=20)
    assert done.returncode == 0, done.stderr


def test_static_up_attaches_drops_forged_sources_and_down_detaches(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=60)
    up_all(lab, "--xdp", "on")
    for k in lab.topo.node_indexes:
        assert "prog/xdp" in prog_on(lab, k) and "clusterip_xdp" in prog_on(lab, k)
    sources = list(lab.topo.client_addrs())
    answers = udp_once(lab, sources)
    assert len(answers) == 60 and all(len(v) == 1 for v in answers.values()), answers
    res = lab.probe(proto="tcp", port=80, sources=sources, per_source=2)
    assert res.errors == 0, res.error_kinds()
    docs = {k: status(lab, k) for k in lab.topo.node_indexes}
    for k, d in docs.items():
        x = xdp_of(d)
        assert x["mode"] == "native" and x["describe"] == "native (netlink-attached)", x
        c = x["counters"]
        # Two thirds of the clients' packets are other nodes': dropped before nft.
        assert c["dropped"] > 0 and c["owned"] > 0 and c["forged"] == 0, (k, c)
        assert d["counters"]["foreign"]["packets"] == 0, d["counters"]  # none reached nft
    text = cip(lab, 1, "status").stdout
    assert "XDP pre-filter: native (netlink-attached)" in text and "fast path" in text
    # A frame to the VIP with a multicast source (here the cluster MAC itself, which the fast
    # path uses to mark its own rewrites) is dropped by every node, whatever its bucket.
    before = {k: xdp_of(docs[k])["counters"]["forged"] for k in docs}
    for k in lab.topo.node_indexes:
        send_frames(lab, k, "03:bf:c6:12:00:64", 50)
        assert xdp_of(status(lab, k))["counters"]["forged"] - before[k] == 50
    # --xdp off for one node: its VIP leaves the program (the only one there: detached).
    base = ["up", "--vip", lab.topo.vip, "--interface", "eth0", "--total-nodes", "3"]
    out = cip(lab, 3, *base, "--local-node", "3", "--xdp", "off").stdout
    assert out.rstrip().endswith("; XDP off"), out
    assert prog_on(lab, 3) == ""
    assert xdp_of(status(lab, 3))["describe"] == "off (--xdp off)"
    answers = udp_once(lab, sources)
    assert all(len(v) == 1 for v in answers.values()), answers
    for k in lab.topo.node_indexes:
        cip(lab, k, "down")
        assert prog_on(lab, k) == ""
    assert not [p for p in _bpffs() if "clusterip" in p]


def _bpffs() -> list[str]:
    found = []
    for root, dirs, files in os.walk("/sys/fs/bpf"):
        found += [os.path.join(root, n) for n in dirs + files]
    return found


def agent_status(a: Agents, k: int) -> dict[str, Any]:
    return a.vip_status(k)


def test_agent_xdp_goes_with_the_agent_and_comes_back_with_its_successor(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=40)
    a = start_agents(lab, tmp_path, agents, [1, 2, 3], "--metrics", "9473")
    for k in lab.topo.node_indexes:
        assert "clusterip_xdp" in prog_on(lab, k)
        x = xdp_of(agent_status(a, k))
        assert x["mode"] == "native" and "bpf_link held by this process" in x["describe"], x
    # The guard window of the start (10 s) passes: steady buckets take the fast path.
    time.sleep(10.5)
    res = lab.probe(proto="tcp", port=80, per_source=3)
    assert res.errors == 0, res.error_kinds()
    st = {k: agent_status(a, k) for k in lab.topo.node_indexes}
    for k, d in st.items():
        c = xdp_of(d)["counters"]
        assert c["owned"] > 0 and c["dropped"] > 0, (k, c)
        # Agent-mode counters are there and move (nft saw the SYNs of its own flows).
        assert d["counters"]["accepted"]["packets"] > 0, d["counters"]
    metrics = lab.run(
        lab.topo.node_ns(1), ["curl", "-s", "http://127.0.0.1:9473/metrics"], timeout=10
    )
    assert 'clusterip_xdp_packets_total{verdict="dropped",vip="198.18.0.100"}' in metrics.stdout
    text = cip(lab, 1, "status").stdout
    assert "XDP pre-filter: native" in text and "packets: accepted" in text, text
    # A planned stop: the bpf_link goes with the process; nft alone serves through the lease.
    assert a.stop(2) == 0
    assert prog_on(lab, 2) == ""
    during = lab.probe(proto="tcp", port=80, per_source=3)
    assert during.errors == 0 and set(during.by_node) == {"n1", "n2", "n3"}, during.by_node
    # Its successor adopts the tables and attaches its own program.
    a.start(2)
    deadline = time.monotonic() + 10
    while "clusterip_xdp" not in prog_on(lab, 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    a.wait_converged([1, 2, 3])
    x = xdp_of(agent_status(a, 2))
    assert x["mode"] == "native", x
    after = lab.probe(proto="tcp", port=80, per_source=3)
    assert after.errors == 0 and set(after.by_node) == {"n1", "n2", "n3"}, after.by_node
    # kill -9: gone at once, with the live table.
    a.kill(3)
    assert prog_on(lab, 3) == ""
    time.sleep(1.0)
    res = lab.probe(proto="tcp", port=80, per_source=2)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2"}, res.by_node
    # The program of a survivor keeps serving exactly the new shares.
    answers = udp_once(lab, list(lab.topo.client_addrs()))
    assert all(len(v) == 1 and v[0] in ("n1", "n2") for v in answers.values()), answers


def test_agent_status_json_and_weight_zero(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=2, clients=10)
    a = start_agents(lab, tmp_path, agents, [1, 2], "--xdp", "off")
    doc = a.status(1)
    (v,) = doc["vips"]
    assert "total_nodes" not in v and v["buckets"] == 4096
    assert v["xdp"]["describe"] == "off: --xdp off" and doc["agent"]["xdp"] == "off: --xdp off"
    cip(lab, 1, "weight", "0")
    time.sleep(0.5)
    doc = a.status(1)
    (v,) = doc["vips"]
    assert doc["agent"]["draining"] is False and doc["agent"]["weight_zero"] is True
    assert v["state"] == "draining" and v["reason"].startswith("weight 0: owns no bucket"), v
    assert v["owned_count"] == 0
    assert "weight 0: owns no bucket" in cip(lab, 1, "status").stdout
    cip(lab, 1, "drain")
    doc = a.status(1)
    assert doc["agent"]["draining"] is True
    assert not doc["vips"][0]["reason"].startswith("weight 0")
    assert "DRAINING (clusterip drain)" in cip(lab, 1, "status").stdout


def test_address_warnings_at_up_and_agent_start(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=1, clients=1, servers=False)
    argv = [sys.executable, "-m", "clusterip", "up", "--interface", "eth0", "--total-nodes", "1",
            "--local-node", "1", "--xdp", "off"]  # fmt: skip
    ns = lab.topo.node_ns(1)
    done = lab.run(ns, [*argv, "--vip", "203.0.113.7"], timeout=30)
    assert done.returncode == 0
    (line,) = done.stderr.splitlines()
    assert "warning: VIP 203.0.113.7 is outside every subnet of eth0 (198.18." in line, line
    done = lab.run(ns, [*argv, "--vip", lab.topo.vip], timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    cip(lab, 1, "down")
    addrs = json.loads(lab.run(ns, ["ip", "-j", "-4", "addr", "show", "eth0"], timeout=10).stdout)
    for info in addrs[0]["addr_info"]:
        lab.run(
            ns,
            ["ip", "addr", "del", f"{info['local']}/{info['prefixlen']}", "dev", "eth0"],
            timeout=10,
        )
    done = lab.run(ns, [*argv, "--vip", lab.topo.vip], timeout=30)
    assert done.returncode == 0
    assert done.stderr.strip().endswith("has no IPv4 address of its own: VIP 198.18.0.100 "
                                        "answers on the segment, but the node has no address "
                                        "there for its own traffic"), done.stderr  # fmt: skip
    cip(lab, 1, "down")
    keyfile = tmp_path / "k"
    keyfile.write_text("lab-shared-secret-0123456789abcdef\n")
    keyfile.chmod(0o600)
    a = Agents(lab, keyfile)
    agents.append(a)
    a.start(1)
    deadline = time.monotonic() + 10
    while "no IPv4 address" not in a.logs[1].read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "interface eth0 has no IPv4 address of its own" in a.logs[1].read_text()
    assert ipaddress.IPv4Address(lab.topo.vip)


def test_bad_xdp_mode_is_one_line_exit_2_and_changes_nothing(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    lab = make_lab(nodes=1, clients=1, servers=False)
    ns = lab.topo.node_ns(1)
    conf = tmp_path / "static.toml"
    conf.write_text(f'[[vip]]\nvip = "{lab.topo.vip}"\ninterface = "eth0"\ntotal_nodes = 2\n'
                    'local_node = [1]\nxdp = "fast"\n')  # fmt: skip
    flags = ["--vip", lab.topo.vip, "--interface", "eth0", "--total-nodes", "2", "--local-node",
             "1", "--xdp", "fast"]  # fmt: skip
    agent = ["agent", "--vip", lab.topo.vip, "--interface", "eth0", "--node-id", "1",
             "--key-file", str(conf), "--xdp", "fast"]  # fmt: skip
    for args in (["up", *flags], ["up", "-c", str(conf)], agent):
        done = lab.run(ns, [sys.executable, "-m", "clusterip", *args], timeout=30)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.splitlines() == [
            "clusterip: error: bad XDP mode 'fast': allowed are auto, on, off"
        ], done.stderr
        ruleset = lab.run(ns, ["nft", "list", "ruleset"], timeout=10).stdout
        assert ruleset.strip() == "" and prog_on(lab, 1) == ""


def test_an_agent_takes_over_a_static_vip_and_its_xdp(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    """The static program (netlink) would go on dropping by the static buckets: the agent
    removes its VIP from it (here the only one: detached) and attaches its own."""
    lab = make_lab(nodes=1, clients=20)
    cip(lab, 1, "up", "--vip", lab.topo.vip, "--interface", "eth0", "--total-nodes", "3",
        "--local-node", "2", "--xdp", "on")  # fmt: skip
    assert "clusterip_xdp" in prog_on(lab, 1)
    keyfile = tmp_path / "k"
    keyfile.write_text("lab-shared-secret-0123456789abcdef\n")
    keyfile.chmod(0o600)
    a = Agents(lab, keyfile)
    agents.append(a)
    a.start(1)
    a.wait_for(lambda: "agent" in a.status(1), "the agent's control socket", timeout=10)
    a.wait_converged([1])
    x = xdp_of(a.vip_status(1))
    assert x["mode"] == "native" and "bpf_link" in x["describe"], x
    res = lab.probe(proto="tcp", port=80, per_source=3)
    assert res.errors == 0 and set(res.by_node) == {"n1"}, res.error_kinds()
    a.stop_all()
    assert prog_on(lab, 1) == ""
