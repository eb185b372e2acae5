"""Agents in the lab: automatic failover, rejoin, authentication, exactly-once."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from tests.lab.clients import finish_loop, start_loop
from tests.lab.conftest import MakeLab, start_agents


def start_cluster(lab: Lab, tmp_path: Path, made: list[Agents], *extra: str) -> Agents:
    return start_agents(lab, tmp_path, made, list(lab.topo.node_indexes), *extra)


def test_kill_9_failover_and_rejoin(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=40)
    a = start_cluster(lab, tmp_path, agents, "--hashmode", "sourceip")
    before = lab.probe(proto="tcp", port=80)
    assert before.errors == 0 and set(before.by_node) == {"n1", "n2", "n3"}
    owner = {r.src: r.node for r in before.results}
    orphans = sorted(s for s, n in owner.items() if n == "n3")
    loop = start_loop(lab, list(owner), duration=4.0, timeout=0.25, pause=0.05)
    time.sleep(1.0)
    killed, gone = a.kill(3)
    records = finish_loop(loop)
    # Every orphaned client is served again, by a survivor; the time from the kill to its first
    # answered request after it is the failover time it saw.
    times = []
    for src in orphans:
        after = [r for r in records if r[0] == src and r[1] >= gone and r[3]]
        assert after, f"client {src} never served again after the kill"
        times.append(after[0][2] - killed)
        assert after[0][3][0] in ("n1", "n2")
    print(
        f"\nfailover (kill -9 to first answered request of each of {len(orphans)} orphaned "
        f"clients): median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
    )
    assert max(times) < 2.0
    # Clients of the survivors never noticed.
    survivors_failed = [
        (r[0], round(r[1] - killed, 3), r[4]) for r in records if r[0] not in orphans and not r[3]
    ]
    assert not survivors_failed, survivors_failed
    # The dead agent's live table died with it; its VIP tables stay and drop every VIP packet
    # (no live mark, no lease).
    tables = lab.run(lab.topo.node_ns(3), ["nft", "list", "tables"], timeout=10).stdout
    assert tables.splitlines() == [
        "table netdev clusterip_198_18_0_100",
        "table arp clusterip_198_18_0_100",
    ], tables
    after = lab.probe(proto="tcp", port=80)
    assert after.errors == 0 and set(after.by_node) == {"n1", "n2"}
    # The dead node's share was spread over both survivors, not dumped on one.
    st = {k: a.vip_status(k)["owned_count"] for k in (1, 2)}
    assert abs(st[1] - st[2]) <= 1, st
    # Restart: it rejoins and gets about a third back.
    a.start(3)
    a.wait_converged([1, 2, 3])
    counts = {k: a.vip_status(k)["owned_count"] for k in (1, 2, 3)}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    back = lab.probe(proto="tcp", port=80, per_source=4)
    assert back.errors == 0
    assert 0.2 <= back.by_node.get("n3", 0) / len(back.results) <= 0.47, back.by_node


def test_stop_leave_is_a_graceful_leave(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    import sys

    lab = make_lab(nodes=3, clients=30)
    a = start_cluster(lab, tmp_path, agents)
    argv = [sys.executable, "-m", "clusterip", "stop", "--leave"]  # the command, as a user types it
    done = lab.run(lab.topo.node_ns(2), argv, timeout=30)
    assert done.returncode == 0 and "stopping: leave" in done.stdout, done
    assert a.procs[2].wait(timeout=15) == 0
    # Peers learn at once from the LEAVE message, not after a timeout.
    st = a.vip_status(1)
    assert [m["id"] for m in st["members"] if m["counted"]] == [3]
    tables = lab.run(lab.topo.node_ns(2), ["nft", "list", "tables"], timeout=10).stdout
    assert tables.strip() == "", tables
    addrs = lab.run(lab.topo.node_ns(2), ["ip", "-o", "addr", "show", "dev", "eth0"], timeout=10)
    assert lab.topo.vip not in addrs.stdout
    res = lab.probe(proto="tcp", port=80, per_source=3)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n3"}


def test_sigterm_is_a_planned_stop_and_a_successor_continues(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    """SIGTERM (systemctl stop/restart): the peers hear RESTART and keep the node's buckets
    where they are; a new agent with the same node id continues it: nothing moves."""
    lab = make_lab(nodes=3, clients=30)
    a = start_cluster(lab, tmp_path, agents)
    before = a.owned([1, 2, 3])
    assert a.stop(2) == 0
    st = a.vip_status(1)
    (n2,) = [m for m in st["members"] if m["id"] == 2]
    assert n2["state"] == "restarting", n2
    res = lab.probe(proto="tcp", port=80, per_source=2)  # no agent on n2: its lease serves
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2", "n3"}, res.by_node
    a.start(2)
    a.wait_converged([1, 2, 3])
    assert a.owned([1, 2, 3]) == before
    assert a.log_times(1, "node 2 restarted, continued by its successor")


def test_udp_exactly_once_across_failover(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=30)
    a = start_cluster(lab, tmp_path, agents, "--hashmode", "sourceip")
    sources = list(lab.topo.client_addrs())
    loop = start_loop(lab, sources, proto="udp", port=5300, duration=4.0, timeout=0.15, pause=0.02)
    time.sleep(1.0)
    killed, _gone = a.kill(1)
    records = finish_loop(loop)
    doubles = [r for r in records if len(r[3]) > 1]
    assert not doubles, doubles[:5]
    late = [r for r in records if r[1] > killed + 1.0]
    assert late and all(len(r[3]) == 1 for r in late), [r for r in late if len(r[3]) != 1][:5]
    assert {r[3][0] for r in late} <= {"n2", "n3"}


def test_forged_replayed_malformed_foreign_change_nothing(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    import sys

    from clusterip.reactor.transport import DEFAULT_GROUP, DEFAULT_PORT
    from tests.lab.clients import FORGE

    lab = make_lab(nodes=4, clients=40)
    a = start_agents(lab, tmp_path, agents, [1, 2, 3])
    keyfile = a.keyfile
    before = {k: a.vip_status(k) for k in (1, 2, 3)}
    argv = [sys.executable, "-c", FORGE, lab.topo.vip, DEFAULT_GROUP, str(DEFAULT_PORT)]
    done = lab.run(lab.topo.client_ns, [*argv, str(keyfile)], timeout=30)
    assert done.returncode == 0, done.stderr
    replayed_from = int(done.stdout.strip())
    time.sleep(0.5)
    for k in (1, 2, 3):
        st = a.vip_status(k)
        causes = ["bad_mac", "malformed", "foreign_fingerprint"]
        if k != replayed_from:  # a node ignores its own datagrams before anything else
            causes.append("replay")
        for cause in causes:
            assert st["rejected"].get(cause, 0) >= before[k]["rejected"].get(cause, 0) + 5, (
                k,
                cause,
                st["rejected"],
            )
        assert [m["id"] for m in st["members"] if m["counted"]] == [
            m["id"] for m in before[k]["members"] if m["counted"]
        ]
        assert 77 not in [m["id"] for m in st["members"]]
        assert st["owned"] == before[k]["owned"]
        assert st["refused"], "the refused senders are reported"
    # An agent with the wrong key hears heartbeats it cannot authenticate: it stays passive,
    # says why, and never answers a client.
    wrong = write_key(tmp_path / "wrong.key", "a-different-secret-of-sufficient-length\n")
    a.start(4, keyfile=wrong)
    time.sleep(1.0)
    st4 = a.vip_status(4)
    assert st4["state"] == "passive" and st4["owned_count"] == 0, st4
    assert st4["reason"]
    res = lab.probe(proto="tcp", port=80, per_source=5)
    assert res.errors == 0 and "n4" not in res.by_node, res.by_node
    assert all(a.vip_status(k)["owned"] == before[k]["owned"] for k in (1, 2, 3))


def test_unicast_peers_instead_of_multicast(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=2, clients=20)
    keyfile = tmp_path / "cluster.key"
    write_key(keyfile)
    a = Agents(lab, keyfile)
    agents.append(a)
    for k in (1, 2):
        other = lab.topo.node_addr(3 - k)
        a.start(k, args=("--peer", other))  # no multicast group is joined then
    a.wait_converged([1, 2])
    assert a.vip_status(1)["members"][0]["address"] == lab.topo.node_addr(2)
    res = lab.probe(proto="tcp", port=80, per_source=3)
    assert res.errors == 0 and set(res.by_node) == {"n1", "n2"}
