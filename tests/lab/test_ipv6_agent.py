"""Agents serving IPv6 VIPs: failover, UDP exactly once across it, zero-disruption joins, one
agent serving an IPv4 and an IPv6 VIP at once (each with its own buckets), metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from tests.lab import nd6
from tests.lab.clients import ECHO_CLIENT, finish_loop, start_loop
from tests.lab.conftest import MakeLab


def agents6(lab: Lab, tmp_path: Path, made: list[Agents], *extra: str, **kw: object) -> Agents:
    keyfile = write_key(tmp_path / "cluster.key")
    a = Agents(lab, keyfile, *extra, vip=lab.topo.vip6, **kw)  # type: ignore[arg-type]
    made.append(a)
    for k in lab.topo.node_indexes:
        a.start(k)
    return a


def test_ipv6_failover_udp_exactly_once(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=30, ipv6=True)
    a = agents6(lab, tmp_path, agents, "--hashmode", "sourceip")
    a.wait_converged([1, 2, 3])
    vip = lab.topo.vip6
    sources = list(lab.topo.client_addrs6())
    before = lab.probe(proto="tcp", port=80, vip=vip, sources=sources)
    assert before.errors == 0 and set(before.by_node) == {"n1", "n2", "n3"}
    orphans = {r.src for r in before.results if r.node == "n1"}
    loop = start_loop(
        lab, sources, proto="udp", port=5300, duration=4.0, timeout=0.15, pause=0.02, vip=vip
    )
    time.sleep(1.0)
    cap = nd6.start_capture(lab, "client", 2.5)
    killed, gone = a.kill(1)
    records = finish_loop(loop)
    # The survivors announced the VIP at the cluster MAC when they took node 1's buckets.
    announced = [
        m
        for m in nd6.about(nd6.finish_capture(cap), vip)
        if m["type"] == "NA" and m["dst"] == "ff02::1"
    ]
    survivors = {lab.topo.node_mac(2), lab.topo.node_mac(3)}
    assert {m["eth_src"] for m in announced} == survivors, announced
    assert all(m["options"] == [[2, "03:b6:00:00:01:00"]] for m in announced), announced
    doubles = [r for r in records if len(r[3]) > 1]
    assert not doubles, doubles[:5]
    late = [r for r in records if r[1] > killed + 1.0]
    assert late and all(len(r[3]) == 1 for r in late), [r for r in late if len(r[3]) != 1][:5]
    assert {r[3][0] for r in late} <= {"n2", "n3"}
    times = []
    for src in orphans:
        after = [r for r in records if r[0] == src and r[1] >= gone and r[3]]
        assert after, f"client {src} never served again after the kill"
        times.append(after[0][2] - killed)
    print(f"\nIPv6 failover: max {max(times) * 1000:.0f} ms over {len(orphans)} clients")
    assert max(times) < 2.0
    # The client still knows the VIP by the cluster MAC: no node ever taught it its own.
    assert lab.neighbour("client", vip) == "03:b6:00:00:01:00"


def test_ipv6_node_joins_without_breaking_a_connection(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=8, ipv6=True)
    keyfile = write_key(tmp_path / "cluster.key")
    a = Agents(lab, keyfile, vip=lab.topo.vip6)
    agents.append(a)
    for k in (1, 2):
        a.start(k)
    a.wait_converged([1, 2])
    procs = []
    for src in lab.topo.client_addrs6():  # long-lived connections, some in moving buckets
        for _ in range(4):
            procs.append(
                lab.spawn(
                    lab.topo.client_ns,
                    [sys.executable, "-u", "-c", ECHO_CLIENT, lab.topo.vip6, "7", src],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )

    def say(proc: subprocess.Popen[str], line: str) -> str:
        assert proc.stdin and proc.stdout
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        sports = []
        for p in procs:
            assert p.stdout is not None
            sports.append(int(p.stdout.readline().split()[1]))
        first = [say(p, "hello").split()[0] for p in procs]
        a.start(3)
        a.wait_converged([1, 2, 3])
        # Some of these connections are in buckets that node 3 owns now.
        srcs = [s for s in lab.topo.client_addrs6() for _ in range(4)]
        moved = [
            i
            for i, (src, sport) in enumerate(zip(srcs, sports, strict=True))
            if _which(lab, src, sport) == 3
        ]
        assert moved, "no connection in a moving bucket: the test would prove nothing"
        for i in range(5):
            got = [say(p, f"m{i}") for p in procs]
            assert got == [f"{n} m{i}" for n in first], got
            time.sleep(0.2)
        res = lab.probe(
            proto="tcp", port=80, vip=lab.topo.vip6, sources=lab.topo.client_range6(), per_source=8
        )
        assert res.errors == 0 and "n3" in res.by_node
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=10)


def test_one_agent_serves_an_ipv4_and_an_ipv6_vip(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=30, ipv6=True)
    conf = tmp_path / "cluster.toml"
    conf.write_text(
        "".join(
            f'[[vip]]\nvip = "{v}"\ninterface = "eth0"\nhashmode = "sourceip"\n\n'
            for v in (lab.topo.vip, lab.topo.vip6)
        )
    )
    keyfile = write_key(tmp_path / "cluster.key")
    a = Agents(lab, keyfile, "--metrics", "127.0.0.1:9473", config=conf)
    agents.append(a)
    for k in lab.topo.node_indexes:
        a.start(k)
    for vip in (lab.topo.vip, lab.topo.vip6):
        a.wait_converged([1, 2, 3], vip=vip)
    # Each VIP its own buckets: its own seed, so its own split of the same clients.
    st4, st6 = a.vip_status(1, lab.topo.vip), a.vip_status(1, lab.topo.vip6)
    assert st4["seed"] != st6["seed"] and st6["clustermac"] == "03:b6:00:00:01:00"
    v4 = lab.probe(proto="tcp", port=80, per_source=2)
    v6 = lab.probe(proto="tcp", port=80, vip=lab.topo.vip6, sources=lab.topo.client_range6())
    assert v4.errors == 0 and v6.errors == 0
    assert set(v4.by_node) == set(v6.by_node) == {"n1", "n2", "n3"}
    metrics = lab.run(
        lab.topo.node_ns(1),
        [sys.executable, "-c", _FETCH, "http://127.0.0.1:9473/metrics"],
        timeout=10,
    ).stdout
    assert f'clusterip_buckets_owned{{vip="{lab.topo.vip6}"}}' in metrics, metrics[:500]
    # Both fail over when a node dies.
    a.kill(2)
    for vip in (lab.topo.vip, lab.topo.vip6):
        a.wait_converged([1, 3], vip=vip)
    v4 = lab.probe(proto="tcp", port=80)
    v6 = lab.probe(proto="tcp", port=80, vip=lab.topo.vip6, sources=lab.topo.client_range6())
    assert v4.errors == 0 and v6.errors == 0
    assert set(v4.by_node) == set(v6.by_node) == {"n1", "n3"}


def _which(lab: Lab, src: str, sport: int) -> int:
    argv = [sys.executable, "-m", "clusterip", "which", "--vip", lab.topo.vip6]
    argv += ["--src", src, "--sport", str(sport), "--json"]
    done = lab.run(lab.topo.node_ns(1), argv, timeout=30)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["node"])


_FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


def test_ipv6_udp_flows_stay_with_their_node_when_a_node_joins(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    """The old owners keep their IPv6 UDP flows (their `udp_seen` set, announced as KEPT with
    IPv6 addresses, dropped by the others): no datagram answered twice or by another node."""
    from tests.lab.clients import UDP_SESSIONS

    lab = make_lab(nodes=4, clients=50, ipv6=True)
    keyfile = write_key(tmp_path / "cluster.key")
    a = Agents(lab, keyfile, vip=lab.topo.vip6)
    agents.append(a)
    for k in (1, 2, 3):
        a.start(k)
    a.wait_converged([1, 2, 3])
    argv = [sys.executable, "-c", UDP_SESSIONS, lab.topo.vip6, "5300", "100", "0.1", "6"]
    proc = lab.spawn(
        lab.topo.client_ns,
        [*argv, ",".join(lab.topo.client_addrs6())],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    a.start(4)
    a.wait_converged([1, 2, 3, 4])
    out, _ = proc.communicate(timeout=60)
    table = "clusterip_" + lab.topo.vip6.replace(":", "_")
    counters = [
        lab.run(
            lab.topo.node_ns(k), ["nft", "list", "counter", "netdev", table, "kept"], timeout=10
        )
        for k in (1, 2, 3)
    ]
    kept = sum(int(c.stdout.split("packets")[1].split()[0]) for c in counters)
    sessions = json.loads(out)
    assert len(sessions) == 100
    moved_nodes = [s for s in sessions if len(s["nodes"]) != 1]
    assert not moved_nodes, moved_nodes[:5]
    assert sum(s["doubles"] for s in sessions) == 0
    assert sum(s["missing"] for s in sessions) <= len(sessions) // 20, sessions[:3]
    res = lab.probe(
        proto="udp", port=5300, vip=lab.topo.vip6, sources=lab.topo.client_range6(), per_source=2
    )
    assert res.errors == 0 and res.by_node.get("n4", 0) > 0, res.by_node
    # Flows of moved buckets were kept by their old owners: the sessions were not merely lucky.
    assert kept > 0, [c.stdout for c in counters]
