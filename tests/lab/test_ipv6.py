"""IPv6 VIPs in static mode, in a dual-stack lab (ULA addresses only): the hash, Neighbor
Discovery with the cluster MAC both ways, the address, moves, ICMPv6 errors, fragments, bad
input, and an IPv4 and an IPv6 VIP served at once."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from clusterip.config import HASHMODES
from clusterip.hashing import flow_bucket
from clusterip.lab.net import Lab
from tests.lab import nd6
from tests.lab.clients import ECHO_CLIENT, udp_once
from tests.lab.conftest import MakeLab
from tests.lab.test_datapath import BIG_UDP


def cip(lab: Lab, k: int, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "clusterip", *args]
    done = lab.run(lab.topo.node_ns(k), argv, timeout=30)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def up6(lab: Lab, *extra: str, vip: str | None = None) -> None:
    n = str(lab.topo.nodes)
    for k in lab.topo.node_indexes:
        base = ["up", "--vip", vip or lab.topo.vip6, "-i", "eth0", "--total-nodes", n]
        cip(lab, k, *base, "--local-node", str(k), *extra)


def status(lab: Lab, k: int, vip: str | None = None) -> dict[str, Any]:
    vips = json.loads(cip(lab, k, "status", "--json").stdout)["vips"]
    return next(v for v in vips if v["vip"] == (vip or lab.topo.vip6))  # type: ignore[no-any-return]


def owner(seed: int, hashmode: str, src: str, sport: int | None, dport: int, n: int = 3) -> str:
    return f"n{flow_bucket(hashmode, seed, n, ipaddress.IPv6Address(src), sport, dport)}"


def probe6(lab: Lab, **kw: Any) -> Any:
    kw.setdefault("sources", lab.topo.client_range6())
    return lab.probe(vip=lab.topo.vip6, **kw)


@pytest.mark.parametrize("hashmode", HASHMODES)
def test_every_ipv6_flow_one_node_as_which_predicts(make_lab: MakeLab, hashmode: str) -> None:
    clients, per_source = (300, 1) if hashmode == "sourceip" else (100, 3)
    lab = make_lab(nodes=3, clients=clients, ipv6=True)
    up6(lab, "--hashmode", hashmode)
    res = probe6(lab, proto="tcp", port=80, per_source=per_source, concurrency=48)
    assert res.errors == 0, res.error_kinds()
    assert len({(r.src, r.sport) for r in res.results}) >= 200
    seed = int(status(lab, 1)["seed"], 16)
    wrong = [r for r in res.results if r.node != owner(seed, hashmode, r.src, r.sport, r.dport)]
    assert not wrong, wrong[:5]
    for r in res.results[:5]:  # the CLI's `which` says the same
        args = ["which", "--vip", lab.topo.vip6, "--src", r.src, "--json"]
        args += ["--sport", str(r.sport), "--dport", str(r.dport)]
        if hashmode == "sourceip":
            args = args[:6]
        elif hashmode == "sourceip-sourceport":
            args = args[:8]
        assert f"n{json.loads(cip(lab, 2, *args).stdout)['node']}" == r.node
    share = Counter(r.node for r in res.results)
    for node in ("n1", "n2", "n3"):
        assert abs(share[node] / len(res.results) - 1 / 3) <= 0.2 / 3, share
    # Exactly one node answers each UDP flow.
    answers = udp_once(lab, list(lab.topo.client_addrs6())[:200], vip=lab.topo.vip6)
    assert all(len(a) == 1 for a in answers.values()), answers
    for key, (node,) in answers.items():
        src, _, sport = key.rpartition(":")
        assert node == owner(seed, hashmode, src, int(sport), 5300)


def test_nd_carries_the_cluster_mac_both_ways(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=60, ipv6=True)
    vip, topo = lab.topo.vip6, lab.topo
    cap = nd6.start_capture(lab, "client", 12.0)
    up6(lab)  # each node announces the VIP: an unsolicited NA
    mac = status(lab, 1)["clustermac"]
    assert mac == "03:b6:00:00:01:00"
    res = probe6(lab, proto="tcp", port=80, per_source=3)  # the client talks to every node
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}
    assert lab.neighbour("client", vip) == mac
    # Every node solicits the client from the VIP, with the client's entry already there.
    for k in topo.node_indexes:
        nd6.solicit_from_vip(lab, k, vip, topo.client_addrs6()[0])
        assert lab.neighbour("client", vip) == mac, k
    # A neighbour's unicast probe: every node answers (ND to the VIP passes every node).
    nd6.run_py(lab, "client", nd6.UNICAST_NS, topo.gateway6, vip, topo.client_mac, mac)
    msgs = nd6.about(nd6.finish_capture(cap), vip)
    node_macs = {topo.node_mac(k) for k in topo.node_indexes}
    unsolicited = [m for m in msgs if m["type"] == "NA" and m["dst"] == "ff02::1"]
    assert {m["eth_src"] for m in unsolicited} == node_macs  # one from each node's `up`
    assert all(m["flags"] & 0x20 for m in unsolicited)  # Override
    solicits = [m for m in msgs if m["type"] == "NS"]
    assert {m["eth_src"] for m in solicits} == node_macs
    # The answers to the unicast probe: Solicited, not Override (RFC 4861 §7.2.4).
    probe_answers = [m for m in msgs if m["type"] == "NA" and m["flags"] == 0x40]
    assert sorted(m["eth_src"] for m in probe_answers) == sorted(node_macs)
    assert msgs and all(m["checksum_ok"] for m in msgs), msgs
    for m in msgs:  # the cluster MAC and nothing else, wherever a link-layer option is
        if m in probe_answers and not m["options"]:
            continue  # Linux answers a unicast probe without the option: nothing to teach
        assert [a for _t, a in m["options"]] == [mac], m
    for k in topo.node_indexes:
        counters = status(lab, k)["counters"]
        assert counters["nd"]["packets"] >= 2 and counters["nd_leaks"]["packets"] == 0, counters
    assert lab.neighbour("client", vip) == mac


def test_the_address_the_mac_and_down(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=2, clients=4, ipv6=True)
    vip = lab.topo.vip6
    up6(lab)
    for k in (1, 2):
        ns = lab.topo.node_ns(k)
        addr = lab.run(ns, ["ip", "-6", "-o", "addr", "show", "dev", "eth0"], timeout=10).stdout
        line = next(x for x in addr.splitlines() if f" {vip}/128 " in x)
        assert "nodad" in line and "deprecated" in line and "tentative" not in line, line
        mcast = lab.run(ns, ["cat", "/proc/net/dev_mcast"], timeout=10).stdout
        assert "03b600000100" in mcast
    # The node's own connections never leave from the VIP (it is deprecated).
    done = lab.run(lab.topo.node_ns(1), ["ip", "-6", "route", "get", "fdc1::fe"], timeout=10)
    assert f"src {lab.topo.node_addr6(1)}" in done.stdout, done.stdout
    cip(lab, 1, "down", "--vip", vip)
    ns = lab.topo.node_ns(1)
    assert vip not in lab.run(ns, ["ip", "-6", "addr"], timeout=10).stdout
    assert "03b600000100" not in lab.run(ns, ["cat", "/proc/net/dev_mcast"], timeout=10).stdout
    assert lab.run(ns, ["nft", "list", "tables"], timeout=10).stdout.strip() == ""


def test_take_and_release_move_exactly_that_bucket(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=150, ipv6=True)
    up6(lab, "--hashmode", "sourceip")
    vip = lab.topo.vip6
    before = probe6(lab, proto="tcp", port=80)
    assert before.errors == 0
    was = {r.src: r.node for r in before.results}
    cip(lab, 3, "release", "3", "--now", "--vip", vip)
    cap = nd6.start_capture(lab, "client", 1.5)
    cip(lab, 1, "take", "3", "--vip", vip)  # announced at the cluster MAC, as by `up`
    (na,) = [m for m in nd6.about(nd6.finish_capture(cap), vip) if m["dst"] == "ff02::1"]
    assert na["eth_src"] == lab.topo.node_mac(1) and na["options"] == [[2, "03:b6:00:00:01:00"]]
    after = probe6(lab, proto="tcp", port=80)
    assert after.errors == 0
    moved = {r.src for r in after.results if r.node != was[r.src]}
    assert moved == {s for s, n in was.items() if n == "n3"} and moved
    assert all(r.node == "n1" for r in after.results if r.src in moved)
    assert status(lab, 1)["owned"] == [1, 3] and status(lab, 3)["owned"] == []
    cip(lab, 1, "release", "3", "--vip", vip)
    cip(lab, 3, "take", "3", "--vip", vip)
    assert {r.src: r.node for r in probe6(lab, proto="tcp", port=80).results} == was


def test_long_lived_ipv6_connection_survives_its_bucket_moving(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=4, ipv6=True)
    up6(lab)
    vip, src = lab.topo.vip6, lab.topo.client_addrs6()[0]
    proc = lab.spawn(
        lab.topo.client_ns,
        [sys.executable, "-u", "-c", ECHO_CLIENT, vip, "7", src],
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
        serving = say("hello").split()[0]
        seed = int(status(lab, 1)["seed"], 16)
        assert serving == owner(seed, "sourceip-sourceport", src, sport, 7)
        k = int(serving[1:])
        other = 1 + k % 3
        cip(lab, k, "release", str(k), "--vip", vip)
        cip(lab, other, "take", str(k), "--vip", vip)
        st = status(lab, k)
        assert st["draining"] == [k] and st["flows"].get(str(k), 0) >= 1, st
        for i in range(20):
            assert say(f"msg{i}") == f"{serving} msg{i}"
        res = probe6(lab, proto="tcp", port=80, sources=[src], per_source=40)
        assert res.errors == 0
        for r in res.results:
            b = owner(seed, "sourceip-sourceport", r.src, r.sport, 80)
            assert r.node == (f"n{other}" if b == serving else b)
        assert status(lab, other)["counters"]["midflow"]["packets"] >= 20
        assert say("last") == f"{serving} last"
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_icmpv6_errors_reach_every_node(make_lab: MakeLab) -> None:
    """Packet Too Big, destination unreachable, time exceeded, parameter problem: accepted on
    every node, whatever the hash of their sender (only the flow's owner has its socket)."""
    lab = make_lab(nodes=3, clients=4, ipv6=True)
    up6(lab, "--protocol", "udp", "--dport", "5300")  # anything else to the VIP: dropped
    client = lab.topo.client_addrs6()[1]
    before = {k: nd6.snmp6(lab, f"n{k}") for k in lab.topo.node_indexes}
    nd6.run_py(lab, "client", nd6.ICMP_ERRORS, lab.topo.gateway6, lab.topo.vip6, client, "40000")
    for k in lab.topo.node_indexes:
        after = nd6.snmp6(lab, f"n{k}")
        assert all(after[c] - before[k][c] == 1 for c in nd6.ICMP_COUNTERS), (k, after)
        # The Packet Too Big took effect: the path to the client is 1280 bytes now.
        argv = ["ip", "-6", "route", "get", client, "from", lab.topo.vip6]
        assert "mtu 1280" in lab.run(lab.topo.node_ns(k), argv, timeout=10).stdout


def test_fragmented_udp_is_dropped_where_ports_count_and_served_by_source_ip(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(nodes=3, clients=30, ipv6=True)
    sources = list(lab.topo.client_addrs6())

    def send(size: int) -> dict[str, list[list[Any]]]:
        argv = [sys.executable, "-c", BIG_UDP.replace("AF_INET,", "AF_INET6,"), lab.topo.vip6]
        argv += ["5300", str(size), "1.0", ",".join(sources)]
        done = lab.run(lab.topo.client_ns, argv, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    up6(lab)
    small = send(100)
    assert all(len(a) == 1 for a in small.values()), small
    big = send(4000)
    assert all(a == [] for a in big.values()), big
    counted = [status(lab, k)["counters"] for k in (1, 2, 3)]
    # As for IPv4: each of the 30 datagrams' 3 fragments was dropped as a fragment by exactly
    # one node, the one its hash picked (a non-first fragment hashes the bytes after its
    # fragment header); every other node dropped it as foreign.
    assert sum(c["fragments"]["packets"] for c in counted) == 3 * len(sources), counted
    up6(lab, "--hashmode", "sourceip")
    big = send(4000)
    assert all(len(a) == 1 and a[0][1] == 4003 for a in big.values()), big


@pytest.fixture(scope="module")
def lone6(make_module_lab: MakeLab) -> Lab:
    """One dual-stack node with an IPv6 VIP up (bad input must not change it)."""
    lab = make_module_lab(nodes=1, clients=1, servers=False, ipv6=True)
    cip(lab, 1, "up", "--vip", lab.topo.vip6, "-i", "eth0", "--total-nodes", "3",
        "--local-node", "1")  # fmt: skip
    return lab


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--vip", "fdc1::100", "--clustermac", "02:00:00:00:00:01"], "must be a multicast"),
        (["up", "--vip", "fe80::100"], "link-local"),
        (["up", "--vip", "ff05::100"], "multicast address"),
        (["which", "--vip", "fdc1::100", "--src", "198.18.1.1", "--sport", "1"], "IPv4 address"),
        (["which", "--vip", "198.18.0.100", "--src", "fdc1::1", "--sport", "1"], "IPv6 address"),
    ],
)
def test_bad_ipv6_input_one_line_exit_2_nothing_changed(
    lone6: Lab, args: list[str], message: str
) -> None:
    lab = lone6
    if args[0] == "which":
        args += ["-i", "eth0", "--total-nodes", "3"]
    else:
        args += ["-i", "eth0", "--total-nodes", "3", "--local-node", "1"]
    ns = lab.topo.node_ns(1)

    def world() -> tuple[str, ...]:
        return tuple(
            lab.run(ns, argv, timeout=10).stdout
            for argv in (["nft", "list", "ruleset"], ["ip", "addr"], ["cat", "/proc/net/dev_mcast"])
        )

    was = world()
    done = cip(lab, 1, *args, ok=False)
    assert done.returncode == 2, done
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert message in done.stderr, done.stderr
    assert world() == was


def test_dual_stack_static_both_vips_at_once(make_lab: MakeLab, tmp_path: Path) -> None:
    """One config, an IPv4 and an IPv6 VIP on eth0 sharing one cluster MAC; `down` of one
    leaves the other serving, its MAC included."""
    lab = make_lab(nodes=3, clients=60, ipv6=True)
    mac = "03:bf:00:00:00:99"
    for k in lab.topo.node_indexes:
        conf = tmp_path / f"n{k}.toml"
        entries = [
            f'[[vip]]\nvip = "{v}"\ninterface = "eth0"\ntotal_nodes = 3\nlocal_node = [{k}]\n'
            f'clustermac = "{mac}"\n'
            for v in (lab.topo.vip, lab.topo.vip6)
        ]
        conf.write_text("\n".join(entries))
        cip(lab, k, "up", "-c", str(conf))
    v4 = lab.probe(proto="tcp", port=80, per_source=3)
    v6 = probe6(lab, proto="tcp", port=80, per_source=3)
    assert v4.errors == 0 and v6.errors == 0
    assert set(v4.by_node) == set(v6.by_node) == {"n1", "n2", "n3"}
    assert lab.neighbour("client", lab.topo.vip) == lab.neighbour("client", lab.topo.vip6) == mac
    for k in lab.topo.node_indexes:
        cip(lab, k, "down", "--vip", lab.topo.vip)
    assert lab.probe(proto="tcp", port=80, timeout=0.3).errors == len(lab.topo.client_addrs())
    again = probe6(lab, proto="tcp", port=80, per_source=3)
    assert again.errors == 0 and set(again.by_node) == {"n1", "n2", "n3"}
    mcast = lab.run(lab.topo.node_ns(1), ["cat", "/proc/net/dev_mcast"], timeout=10).stdout
    assert "03bf00000099" in mcast
