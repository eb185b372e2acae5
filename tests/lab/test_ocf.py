"""The Pacemaker resource agent ocf:clusterip:clusterip as a 3-clone on three lab nodes.

The test plays Pacemaker's part: it runs the agent's actions with the environment Pacemaker
gives them (OCF_RESKEY_* parameters, CRM_meta_clone / clone_max), in each node's namespace,
and checks with the lab's client that every bucket is served, by the node it should be.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clusterip.config import build
from clusterip.hashing import flow_bucket
from clusterip.lab.agents import KEY
from clusterip.lab.net import Lab
from clusterip.lab.probe import ProbeResult
from tests.lab.conftest import MakeLab

RA = str(Path(__file__).parents[2] / "packaging" / "ocf" / "clusterip")
CLUSTERIP = str(Path(sys.executable).parent / "clusterip")  # this checkout's command
OCF_SUCCESS, OCF_NOT_RUNNING = 0, 7


class Clone:
    """Runs the agent's actions for clone instance `clone` of `clone_max` on lab node `k`."""

    def __init__(self, lab: Lab, tmp: Path, **params: str) -> None:
        self.lab = lab
        self.tmp = tmp
        self.params = params

    def action(
        self,
        k: int,
        clone: int,
        action: str,
        *,
        interval: int = 10000,
        clone_max: int = 3,
        meta: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """meta=False: no CRM_meta_* at all, as Pacemaker stops an orphaned (deleted) clone."""
        rsctmp = self.tmp / f"rsctmp-n{k}"  # each node's own /run/resource-agents
        rsctmp.mkdir(exist_ok=True)
        env = {
            "OCF_ROOT": "/usr/lib/ocf",
            "OCF_RESOURCE_INSTANCE": f"vip:{clone}",
            "OCF_RESKEY_ip": self.lab.topo.vip,
            "OCF_RESKEY_nic": "eth0",
            "OCF_RESKEY_clusterip_bin": CLUSTERIP,
            "HA_RSCTMP": str(rsctmp),
            "HA_LOGFACILITY": "none",
            **{f"OCF_RESKEY_{key}": value for key, value in self.params.items()},
        }
        if meta:
            env["OCF_RESKEY_CRM_meta_clone"] = str(clone)
            env["OCF_RESKEY_CRM_meta_clone_max"] = str(clone_max)
            env["OCF_RESKEY_CRM_meta_interval"] = str(interval)
        argv = ["env", *(f"{key}={value}" for key, value in env.items()), RA, action]
        return self.lab.run(self.lab.topo.node_ns(k), argv, timeout=60)

    def rc(self, k: int, clone: int, action: str, **kw: Any) -> int:
        return self.action(k, clone, action, **kw).returncode

    def ok(self, k: int, clone: int, action: str, **kw: Any) -> None:
        done = self.action(k, clone, action, **kw)
        assert done.returncode == OCF_SUCCESS, (k, clone, action, done.stdout, done.stderr)


def owned(lab: Lab, k: int) -> list[int]:
    argv = [sys.executable, "-m", "clusterip", "status", "--json"]
    done = lab.run(lab.topo.node_ns(k), argv, timeout=30)
    assert done.returncode == 0, done.stderr
    vips = json.loads(done.stdout)["vips"]
    return [] if not vips else list(vips[0]["owned"])


def expected(lab: Lab, holder: dict[int, int]) -> dict[str, str]:
    """Source address -> the node that must answer it (hashmode sourceip: one bucket each)."""
    seed = build(vip=lab.topo.vip, interface="eth0", total_nodes=3).seed
    return {
        src: f"n{holder[flow_bucket('sourceip', seed, 3, ipaddress.IPv4Address(src), None, None)]}"
        for src in lab.topo.client_addrs()
    }


def answered(res: ProbeResult) -> dict[str, str | None]:
    return {r.src: r.node for r in res.results}


def test_static_clone_start_monitor_stop_and_recovery(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(nodes=3, clients=60)
    ra = Clone(lab, tmp_path, clusterip_hash="sourceip", protocol="tcp", dport="80")
    # Pacemaker probes every node first (monitor, interval 0): nothing runs anywhere.
    for k in (1, 2, 3):
        assert ra.rc(k, k - 1, "monitor", interval=0) == OCF_NOT_RUNNING
    for k in (1, 2, 3):  # clone instance k-1 on node k: node number k of 3
        ra.ok(k, k - 1, "start")
        assert ra.rc(k, k - 1, "monitor") == OCF_SUCCESS
        assert ra.rc(k, k % 3, "monitor") == OCF_NOT_RUNNING  # another instance's bucket
    assert [owned(lab, k) for k in (1, 2, 3)] == [[1], [2], [3]]
    want = expected(lab, {1: 1, 2: 2, 3: 3})
    res = lab.probe(proto="tcp", port=80)
    assert res.errors == 0 and answered(res) == want

    # Instance 2 stops on node 3 (node 3 is being taken out): its bucket is served by no one.
    ra.ok(3, 2, "stop")
    assert ra.rc(3, 2, "monitor") == OCF_NOT_RUNNING
    assert ra.rc(3, 2, "stop") == OCF_SUCCESS  # stopping a stopped instance succeeds
    assert owned(lab, 3) == []
    res = lab.probe(proto="tcp", port=80, timeout=0.5)
    lost = {src for src, node in answered(res).items() if node is None}
    assert lost == {src for src, node in want.items() if node == "n3"}  # exactly bucket 3

    # Pacemaker's recovery: instance 2 starts on node 1 (clone_max unchanged): `take 3`.
    ra.ok(1, 2, "start")
    assert owned(lab, 1) == [1, 3]
    assert ra.rc(1, 0, "monitor") == ra.rc(1, 2, "monitor") == OCF_SUCCESS
    res = lab.probe(proto="tcp", port=80)
    assert res.errors == 0 and answered(res) == expected(lab, {1: 1, 2: 2, 3: 1})

    # Node 3 is back: instance 2 moves home (stop on node 1 keeps instance 0 there).
    ra.ok(1, 2, "stop")
    assert owned(lab, 1) == [1]
    assert ra.rc(1, 0, "monitor") == OCF_SUCCESS and ra.rc(1, 2, "monitor") == OCF_NOT_RUNNING
    ra.ok(3, 2, "start")
    res = lab.probe(proto="tcp", port=80)
    assert res.errors == 0 and answered(res) == want

    # The clone is deleted: Pacemaker stops the orphans without CRM_meta_* attributes; each
    # instance still releases its own node number (from its name, vip:N).
    ra.ok(1, 2, "start")
    assert owned(lab, 1) == [1, 3]
    ra.ok(1, 2, "stop", meta=False)
    assert owned(lab, 1) == [1]
    assert ra.rc(1, 2, "monitor", meta=False) == OCF_NOT_RUNNING
    assert ra.rc(1, 0, "monitor", meta=False) == OCF_SUCCESS
    for k in (1, 2, 3):
        ra.ok(k, k - 1, "stop", meta=False)
        assert owned(lab, k) == []


def test_bad_parameters_are_configuration_errors(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(nodes=1, clients=1, servers=False)
    for params, reason in (
        ({"clusterip_hash": "roundrobin"}, "roundrobin"),
        ({"mac": "02:00:00:00:00:01"}, "02:00:00:00:00:01"),
        ({"mode": "active"}, "bad mode 'active'"),
        ({"hashmode": "sourceip", "clusterip_hash": "sourceip-sourceport"}, "differ"),
    ):
        done = Clone(lab, tmp_path, **params).action(1, 0, "validate-all")
        assert done.returncode == 6, (params, done.stderr)  # OCF_ERR_CONFIGURED
        assert reason in done.stderr, (params, done.stderr)
    done = Clone(lab, tmp_path, nic="eth9").action(1, 0, "start")
    assert done.returncode == 5 and "no interface eth9" in done.stderr  # OCF_ERR_INSTALLED
    assert Clone(lab, tmp_path).rc(1, 5, "validate-all", clone_max=3) == 6  # node 6 of 3


def test_agent_mode_clone(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(nodes=3, clients=60)
    key = tmp_path / "cluster.key"
    key.write_text(KEY)
    key.chmod(0o600)
    ra = Clone(lab, tmp_path, mode="agent", key_file=str(key), agent_options="--realtime 0")
    try:
        for k in (1, 2, 3):
            assert ra.rc(k, k - 1, "monitor", interval=0) == OCF_NOT_RUNNING
            ra.ok(k, k - 1, "start")
        for k in (1, 2, 3):
            assert ra.rc(k, k - 1, "monitor") == OCF_SUCCESS
        # A second instance on the same node is refused: one agent per node.
        done = ra.action(1, 1, "start")
        assert done.returncode == 1 and "another clusterip agent" in done.stderr
        wait_all_served(lab)
        # Instance 2 stops: a graceful leave, the two others share every bucket.
        ra.ok(3, 2, "stop")
        assert ra.rc(3, 2, "monitor") == OCF_NOT_RUNNING
        wait_all_served(lab, nodes={"n1", "n2"})
    finally:
        for k in (1, 2, 3):
            ra.action(k, k - 1, "stop")
    for k in (1, 2, 3):
        assert owned(lab, k) == []  # the stopped agents' guards are gone too


def wait_all_served(lab: Lab, nodes: set[str] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = lab.probe(proto="tcp", port=80, timeout=0.5)
        served = set(answered(res).values())
        if res.errors == 0 and (nodes is None or served == nodes):
            return
        assert time.monotonic() < deadline, (res.error_kinds(), served)
        time.sleep(0.3)
