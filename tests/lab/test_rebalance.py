"""Zero-disruption rebalancing: joins, drains, weight changes break no connection."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from clusterip.lab.agents import Agents
from clusterip.lab.conns import finish_conns, start_conns
from tests.lab.conftest import MakeLab, start_agents


def cip(lab: object, k: int, *args: str) -> subprocess.CompletedProcess[str]:
    done = lab.run(  # type: ignore[attr-defined]
        lab.topo.node_ns(k),  # type: ignore[attr-defined]
        [sys.executable, "-m", "clusterip", *args],
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done  # type: ignore[no-any-return]


def test_join_drain_weight_break_nothing_and_kill_breaks_only_its_own(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=4, clients=100)
    a = start_agents(lab, tmp_path, agents, [1, 2, 3])
    proc = start_conns(lab, 300, duration=90.0)
    t0 = time.time()
    # A fourth node joins: buckets move to it from live nodes, which keep their flows.
    a.start(4)
    a.wait_converged([1, 2, 3, 4])
    new = lab.probe(proto="tcp", port=80, per_source=2)
    assert new.errors == 0 and new.by_node.get("n4", 0) > 0, (new.by_node, new.error_kinds())
    time.sleep(2)
    # Node 2 drains: it takes no new connections, keeps its established ones.
    cip(lab, 2, "drain")
    time.sleep(1.5)
    st2 = a.vip_status(2)
    assert st2["owned_count"] == 0 and st2["draining"], st2
    assert sum(st2["flows"].values()) > 0, st2
    fresh = lab.probe(proto="tcp", port=80, per_source=2)
    assert fresh.errors == 0 and "n2" not in fresh.by_node, fresh.by_node
    time.sleep(2)
    # A weight change: node 1 takes a larger share.
    cip(lab, 1, "weight", "3")
    time.sleep(1.5)
    share = lab.probe(proto="tcp", port=80, per_source=4)
    assert share.errors == 0
    assert share.by_node["n1"] > 1.8 * share.by_node["n3"], share.by_node
    time.sleep(2)
    # kill -9 node 3: only its own connections break, and they get a RST quickly.
    killed, _gone = a.kill(3)
    time.sleep(2.5)
    records = finish_conns(proc, now=True)
    assert len(records) == 300
    served = Counter(r["node"] for r in records)
    assert set(served) == {"n1", "n2", "n3"}, served
    broken = [r for r in records if r["broken"]]
    wrong = [
        (r["node"], r["broken"]["error"], round(r["broken"]["at"] - killed, 2))
        for r in broken
        if r["node"] != "n3"
    ]
    assert not wrong, (len(wrong), wrong[:8])
    outcome = Counter((r["broken"]["error"], round(r["broken"]["at"] - killed, 1)) for r in broken)
    assert all(error == "ConnectionResetError" and 0 <= dt < 1.0 for error, dt in outcome), outcome
    assert len(broken) == served["n3"], (len(broken), served)
    ok = [r for r in records if not r["broken"]]
    assert all(r["ok"] >= (time.time() - t0 - 3) / 0.1 * 0.5 for r in ok)


def test_udp_flows_stay_with_their_node_when_a_node_joins(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    from tests.lab.clients import UDP_SESSIONS

    lab = make_lab(nodes=4, clients=50)
    a = start_agents(lab, tmp_path, agents, [1, 2, 3])
    argv = [sys.executable, "-c", UDP_SESSIONS, lab.topo.vip, "5300", "100", "0.1", "6"]
    proc = lab.spawn(
        lab.topo.client_ns,
        [*argv, ",".join(lab.topo.client_addrs())],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    a.start(4)  # buckets move from live nodes to node 4: the old owners keep their UDP flows
    a.wait_converged([1, 2, 3, 4])
    out, _ = proc.communicate(timeout=60)
    sessions = json.loads(out)
    assert len(sessions) == 100
    moved_nodes = [s for s in sessions if len(s["nodes"]) != 1]
    assert not moved_nodes, moved_nodes[:5]
    assert sum(s["doubles"] for s in sessions) == 0
    assert sum(s["missing"] for s in sessions) <= len(sessions) // 20, sessions[:3]
    # New UDP flows follow the new assignment: node 4 gets its share.
    res = lab.probe(proto="udp", port=5300, per_source=2)
    assert res.errors == 0 and res.by_node.get("n4", 0) > 0, res.by_node
