"""The static datapath in a lab: real nftables, real TCP/UDP clients, one bridge."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from clusterip.config import HASHMODES
from clusterip.hashing import flow_bucket
from clusterip.lab.net import Lab
from tests.lab.clients import ECHO_CLIENT, udp_once
from tests.lab.conftest import MakeLab


def cip(lab: Lab, k: int, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "clusterip", *args]
    done = lab.run(lab.topo.node_ns(k), argv, timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def up_all(lab: Lab, *extra: str) -> None:
    n = lab.topo.nodes
    for k in lab.topo.node_indexes:
        base = ["up", "--vip", lab.topo.vip, "--interface", "eth0", "--total-nodes", str(n)]
        cip(lab, k, *base, "--local-node", str(k), *extra)


def status(lab: Lab, k: int) -> dict[str, Any]:
    vips = json.loads(cip(lab, k, "status", "--json").stdout)["vips"]
    assert len(vips) == 1
    return vips[0]  # type: ignore[no-any-return]


def which_node(seed: int, hashmode: str, src: str, sport: int | None, dport: int) -> str:
    return f"n{flow_bucket(hashmode, seed, 3, ipaddress.IPv4Address(src), sport, dport)}"


@pytest.mark.parametrize("hashmode", HASHMODES)
def test_every_flow_one_node_as_which_predicts(make_lab: MakeLab, hashmode: str) -> None:
    # sourceip needs distinct addresses for distinct flows; the port modes vary the port too.
    clients, per_source = (600, 1) if hashmode == "sourceip" else (150, 4)
    lab = make_lab(nodes=3, clients=clients)
    up_all(lab, "--hashmode", hashmode)
    res = lab.probe(proto="tcp", port=80, per_source=per_source, concurrency=48)
    assert res.errors == 0, res.error_kinds()
    flows = {(r.src, r.sport) for r in res.results}
    assert len(flows) >= 600 if hashmode == "sourceip" else len(flows) >= 200
    st = status(lab, 1)
    seed = int(st["seed"], 16)
    wrong = [
        r
        for r in res.results
        if r.node
        != f"n{flow_bucket(hashmode, seed, 3, ipaddress.IPv4Address(r.src), r.sport, r.dport)}"
    ]
    assert not wrong, wrong[:5]
    # Cross-check with the CLI's `which` on a few flows.
    for r in res.results[:5]:
        args = ["which", "--vip", lab.topo.vip, "--src", r.src, "--json"]
        if hashmode != "sourceip":
            args += ["--sport", str(r.sport)]
        if hashmode == "sourceip-sourceport-destport":
            args += ["--dport", str(r.dport)]
        assert json.loads(cip(lab, 2, *args).stdout)["bucket"] == int(r.node[1:])  # type: ignore[index]
    share = Counter(r.node for r in res.results)
    total = len(res.results)
    for node in ("n1", "n2", "n3"):
        assert abs(share[node] / total - 1 / 3) <= 0.2 / 3, share
    # Exactly one node answers each flow: UDP shows duplicates where TCP would hide them.
    sources = list(lab.topo.client_addrs())[:200]
    answers = udp_once(lab, sources)
    assert all(len(a) == 1 for a in answers.values()), {
        k: v for k, v in answers.items() if len(v) != 1
    }
    for key, (node,) in answers.items():
        src, sport = key.split(":")
        assert node == which_node(seed, hashmode, src, int(sport), 5300)


def test_client_learns_the_cluster_mac(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=60)
    up_all(lab)
    res = lab.probe(proto="tcp", port=80, per_source=2)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}
    mac = status(lab, 1)["clustermac"]
    assert lab.neighbour("client", lab.topo.vip) == mac
    # No node's own MAC was ever announced for the VIP: every node's ARP for the VIP was
    # rewritten, requests (to the gateway) included.
    for k in lab.topo.node_indexes:
        assert status(lab, k)["counters"]["arps"]["packets"] > 0


def test_take_and_release_move_exactly_that_bucket(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=300)
    up_all(lab, "--hashmode", "sourceip")
    before = lab.probe(proto="tcp", port=80)
    assert before.errors == 0
    owner = {r.src: r.node for r in before.results}
    # Node 3 goes away; node 1 takes its share: CLUSTERIP's `echo +3` on node 1.
    cip(lab, 3, "release", "3", "--now", "--vip", lab.topo.vip)
    cip(lab, 1, "take", "3", "--vip", lab.topo.vip)
    after = lab.probe(proto="tcp", port=80)
    assert after.errors == 0
    moved = {r.src for r in after.results if r.node != owner[r.src]}
    assert moved == {s for s, n in owner.items() if n == "n3"}
    assert all(r.node == "n1" for r in after.results if r.src in moved)
    assert status(lab, 1)["owned"] == [1, 3] and status(lab, 3)["owned"] == []
    # And back.
    cip(lab, 1, "release", "3", "--vip", lab.topo.vip)
    cip(lab, 3, "take", "3", "--vip", lab.topo.vip)
    back = lab.probe(proto="tcp", port=80)
    assert {r.src: r.node for r in back.results} == owner


def test_long_lived_connection_survives_its_bucket_moving(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=4)
    up_all(lab)
    src = lab.topo.client_addrs()[0]
    proc = lab.spawn(
        lab.topo.client_ns,
        [sys.executable, "-u", "-c", ECHO_CLIENT, lab.topo.vip, "7", src],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin and proc.stdout

    def say(line: str) -> str:
        assert proc.stdin and proc.stdout
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        sport = int(proc.stdout.readline().split()[1])
        first = say("hello")
        serving = first.split()[0]
        seed = int(status(lab, 1)["seed"], 16)
        assert serving == which_node(seed, "sourceip-sourceport", src, sport, 7)
        k = int(serving[1:])
        other = 1 + k % 3
        cip(lab, k, "release", str(k), "--vip", lab.topo.vip)
        cip(lab, other, "take", str(k), "--vip", lab.topo.vip)
        st = status(lab, k)
        assert st["draining"] == [k] and st["flows"].get(str(k), 0) >= 1, st
        for i in range(20):
            assert say(f"msg{i}") == f"{serving} msg{i}"
        # New connections of that bucket go to the new owner.
        res = lab.probe(proto="tcp", port=80, sources=[src], per_source=40)
        assert res.errors == 0
        for r in res.results:
            b = which_node(seed, "sourceip-sourceport", r.src, r.sport, 80)
            assert r.node == (f"n{other}" if b == serving else b)
        assert any(r.node == f"n{other}" for r in res.results)
        # The new owner dropped the old flow's packets rather than answering them with a RST.
        assert status(lab, other)["counters"]["midflow"]["packets"] >= 20
        assert say("last") == f"{serving} last"
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


# One datagram of SIZE bytes from each source (fragmented on the way: the lab's MTU is 1500),
# every reply collected for a while: source -> the nodes that answered.
BIG_UDP = r"""
import json, selectors, socket, sys, time
vip, port, size, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sel, socks = selectors.DefaultSelector(), {}
for src in sys.argv[5].split(","):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.setblocking(False)
    s.sendto(b"x" * size, (vip, port))
    socks[s] = src
    sel.register(s, selectors.EVENT_READ)
answers = {src: [] for src in socks.values()}
end = time.monotonic() + wait
while time.monotonic() < end:
    for key, _ in sel.select(timeout=max(0.0, end - time.monotonic())):
        data = key.fileobj.recv(65535)
        answers[socks[key.fileobj]].append([data.split()[0].decode(), len(data)])
print(json.dumps(answers))
"""


def test_fragmented_udp_is_dropped_where_ports_count_and_served_by_source_ip(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(nodes=3, clients=30)
    sources = list(lab.topo.client_addrs())

    def send(size: int) -> dict[str, list[list[Any]]]:
        argv = [sys.executable, "-c", BIG_UDP, lab.topo.vip, "5300", str(size), "1.0"]
        done = lab.run(lab.topo.client_ns, [*argv, ",".join(sources)], timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    up_all(lab)  # sourceip-sourceport: a non-first fragment has no ports
    small = send(100)
    assert all(len(a) == 1 for a in small.values()), small
    big = send(4000)
    assert all(a == [] for a in big.values()), big  # no node reassembles half a datagram
    dropped = sum(status(lab, k)["counters"]["fragments"]["packets"] for k in (1, 2, 3))
    # Each of the 30 datagrams' 3 fragments was dropped by exactly one node: the one its
    # (payload-made) hash picked; every other node dropped it as foreign.
    assert dropped == 3 * len(sources), dropped
    up_all(lab, "--hashmode", "sourceip")  # every fragment goes where its source goes
    big = send(4000)
    assert all(len(a) == 1 and a[0][1] == 4003 for a in big.values()), big
