"""Real labs in network namespaces: servers, switch flooding, teardown bookkeeping, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from clusterip.cli.lab import lab as lab_cli
from clusterip.lab.net import Lab, LabError, Pyroute2Ops
from clusterip.lab.records import pids_in_netns, proc_start_time
from clusterip.lab.topo import LabTopo

MakeLab = Callable[..., Lab]
CLUSTER_MAC = "03:bf:c6:12:00:64"
ETH_TYPE = 0x88B5  # IEEE local experimental ethertype

# Prints "ready", then every lab test frame (dst MAC, payload) seen on eth0 until an END frame.
RECEIVER = rf"""
import json, socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons({ETH_TYPE}))
s.bind(("eth0", 0))
s.settimeout(0.2)
print("ready", flush=True)
seen, end = [], time.monotonic() + 10
while time.monotonic() < end:
    try:
        frame = s.recv(2048)
    except TimeoutError:
        continue
    payload = frame[14:].split(b"\0", 1)[0].decode()
    seen.append([frame[:6].hex(":"), payload])
    if payload.startswith("END"):
        break
print(json.dumps(seen), flush=True)
"""

# argv: SRC_MAC DST PAYLOAD [DST PAYLOAD ...]; sends raw Ethernet frames on eth0.
SENDER = rf"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", {ETH_TYPE}))
src = bytes.fromhex(sys.argv[1].replace(":", ""))
for dst, payload in zip(sys.argv[2::2], sys.argv[3::2]):
    head = bytes.fromhex(dst.replace(":", "")) + src + ({ETH_TYPE}).to_bytes(2, "big")
    s.send(head + payload.encode().ljust(46, b"\0"))
"""

# argv: DST SRC; two lines over one TCP connection to the echo server.
ECHO = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=3, source_address=(sys.argv[2], 0))
f = s.makefile("rwb")
out = []
for word in ("hello", "again"):
    f.write(word.encode() + b"\n")
    f.flush()
    out.append(f.readline().decode().strip())
print("|".join(out))
"""


def lab_namespaces(name: str) -> set[str]:
    try:
        return {ns for ns in os.listdir("/run/netns") if ns.startswith(f"{name}-")}
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    return proc_start_time(pid) is not None


def wait_in_netns(pid: int, ino: int | None, comm: str, timeout: float = 5.0) -> None:
    """Wait until process `pid` runs `comm` inside the namespace with inode `ino`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if (
                    fh.read().strip() == comm
                    and os.readlink(f"/proc/{pid}/ns/net") == f"net:[{ino}]"
                ):
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not start {comm} in net:[{ino}]")


def test_each_node_answers_on_its_own_address(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=2, clients=5)
    t = lab.topo
    for k in t.node_indexes:
        for proto in ("tcp", "udp"):
            result = lab.probe(vip=t.node_addr(k), proto=proto, per_source=2, timeout=2.0)
            assert result.errors == 0, result.error_kinds()
            assert result.by_node == {f"n{k}": 10}
            assert sorted({r.src for r in result.results}) == sorted(t.client_addrs())
            ports = [r.sport for r in result.results]
            assert all(p and p > 0 for p in ports) and len(set(ports)) > 1
        echo = lab.run(
            "client", [sys.executable, "-c", ECHO, t.node_addr(k), "198.18.1.3"], timeout=10
        )
        assert echo.stdout.strip() == f"n{k} hello|n{k} again", echo.stderr
    assert lab.neighbour("client", t.node_addr(2)) == t.node_mac(2)
    assert lab.neighbour("client", "198.18.0.99") is None


def test_replies_come_from_the_address_asked(make_lab: MakeLab) -> None:
    """A node holding the VIP as a second address answers TCP and UDP from the VIP."""
    lab = make_lab(nodes=2, clients=4)
    t = lab.topo
    subprocess.run(
        ["ip", "-n", t.node_ns(2), "addr", "add", f"{t.vip}/16", "dev", "eth0"], check=True
    )
    for proto in ("tcp", "udp"):
        result = lab.probe(proto=proto, timeout=2.0)  # default target: the VIP
        assert result.errors == 0, result.error_kinds()
        assert result.by_node == {"n2": 4}
    assert lab.neighbour("client", t.vip) == t.node_mac(2)


def test_switch_floods_multicast_and_learns_unicast(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=1)
    t = lab.topo
    # Let the bridge learn n1's MAC, so unicast to it goes to n1's port only.
    assert lab.probe(vip=t.node_addr(1), timeout=2.0).by_node == {"n1": 1}
    receivers = {}
    for k in t.node_indexes:
        receivers[k] = lab.spawn(
            t.node_ns(k), [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
        )
    for proc in receivers.values():
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    frames = [CLUSTER_MAC, "mcast", t.node_mac(1), "ucast-n1", "ff:ff:ff:ff:ff:ff", "END"]
    lab.run("client", [sys.executable, "-c", SENDER, t.client_mac, *frames], timeout=10, check=True)
    for k, proc in receivers.items():
        out, _ = proc.communicate(timeout=15)
        seen = json.loads(out)
        assert [CLUSTER_MAC, "mcast"] in seen, f"n{k} did not get the multicast frame: {seen}"
        assert seen[-1] == ["ff:ff:ff:ff:ff:ff", "END"]
        got_unicast = [t.node_mac(1), "ucast-n1"] in seen
        assert got_unicast == (k == 1), f"n{k}: unicast to n1 seen={got_unicast}"


def test_teardown_removes_exactly_what_was_recorded(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=2, clients=2)
    t = lab.topo
    decoy_ns = f"{t.name}-x"  # same prefix, not the lab's
    subprocess.run(["ip", "netns", "add", decoy_ns], check=True)
    decoys: list[subprocess.Popen[Any]] = []
    try:
        decoys.append(subprocess.Popen(["sleep", "60"]))
        decoys.append(subprocess.Popen(["ip", "netns", "exec", decoy_ns, "sleep", "60"]))
        recorded = lab.spawn("n1", ["sleep", "60"])
        stray = subprocess.Popen(["ip", "netns", "exec", t.node_ns(2), "sleep", "60"])
        root_sleep = decoys[0].pid
        start = proc_start_time(root_sleep)
        assert start is not None
        stale = {"pid": root_sleep, "start": start - 1, "ns": t.node_ns(1), "role": "stale"}
        lab.store.update(lambda d: d["processes"].append({**stale, "argv": ["gone"]}))
        state = lab.state()
        servers = [p["pid"] for p in state["processes"] if p["role"] == "server"]
        assert len(servers) == 2 and all(alive(p) for p in servers)
        assert len(state["files"]) == 2 and all(os.path.exists(f) for f in state["files"])
        wait_in_netns(stray.pid, lab.ops.ns_inode(t.node_ns(2)), "sleep")

        Lab.load(t.name).teardown()  # a fresh object, as `clusterip lab down` does

        assert lab_namespaces(t.name) == {decoy_ns}
        assert recorded.wait(timeout=5) == -15
        assert stray.wait(timeout=5) == -15
        assert not any(alive(p) for p in servers)
        assert all(d.poll() is None for d in decoys), "a process that was not ours got killed"
        assert not os.path.exists(lab.state_path)
        assert not any(os.path.exists(f) for f in state["files"])
        lab.teardown()  # idempotent
    finally:
        for d in decoys:
            d.kill()
            d.wait()
        subprocess.run(["ip", "netns", "delete", decoy_ns], check=False)


class _FailOnClient(Pyroute2Ops):
    def __init__(self) -> None:
        self.done: list[str] = []

    def setup_host(self, ns: str, *args: Any, **kwargs: Any) -> None:
        if ns.endswith("-c"):
            raise RuntimeError("injected failure")
        super().setup_host(ns, *args, **kwargs)
        self.done.append(ns)


def test_failed_build_removes_what_it_made(new_lab_name: Callable[[], str]) -> None:
    topo = LabTopo(new_lab_name(), 2, 3)
    ops = _FailOnClient()
    with pytest.raises(RuntimeError, match="injected failure"):
        Lab.build(topo, ops=ops)
    assert ops.done == [topo.node_ns(1), topo.node_ns(2)]  # it got halfway
    assert lab_namespaces(topo.name) == set()
    assert not os.path.exists(f"/run/clusterip/lab-{topo.name}.json")


# argv: NAME WHERE; builds a 2-node lab and dies (os._exit) at WHERE: "net" or "servers".
CRASH = r"""
import os, sys
from clusterip.lab.net import Lab, Pyroute2Ops
from clusterip.lab.topo import LabTopo

class Ops(Pyroute2Ops):
    def setup_host(self, ns, *args, **kwargs):
        if sys.argv[2] == "net" and ns.endswith("-n2"):
            os._exit(9)
        super().setup_host(ns, *args, **kwargs)

class Crash(Lab):
    def start_servers(self, *args, **kwargs):
        super().start_servers(*args, **kwargs)
        os._exit(9)

Crash.build(LabTopo(sys.argv[1], 2, 1), ops=Ops())
"""


@pytest.mark.parametrize("where", ["net", "servers"])
def test_crash_mid_build_leaves_a_record(new_lab_name: Callable[[], str], where: str) -> None:
    name = new_lab_name()
    try:
        crashed = subprocess.run([sys.executable, "-c", CRASH, name, where], timeout=60)
        assert crashed.returncode == 9
        assert len(lab_namespaces(name)) == 4
        left = Lab.load(name)
        servers = [p["pid"] for p in left.state()["processes"]]
        assert len(servers) == (2 if where == "servers" else 0)
        assert all(alive(p) for p in servers)  # orphans now, not our children
    finally:
        Lab.load(name).teardown()
    assert lab_namespaces(name) == set()
    assert not any(alive(p) for p in servers)
    assert not os.path.exists(left.state_path)


def test_failure_after_servers_started_kills_them(new_lab_name: Callable[[], str]) -> None:
    started: list[int] = []

    class FailAfterServers(Lab):
        def start_servers(self, *args: Any, **kwargs: Any) -> Any:
            procs = super().start_servers(*args, **kwargs)
            started.extend(p.pid for p in procs.values())
            raise RuntimeError("injected after servers")

    topo = LabTopo(new_lab_name(), 2, 1)
    with pytest.raises(RuntimeError, match="injected after servers"):
        FailAfterServers.build(topo)
    assert len(started) == 2
    assert not any(alive(p) for p in started)
    assert lab_namespaces(topo.name) == set()


def test_server_that_cannot_bind_is_reported(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=2, clients=1, servers=False)
    argv = [sys.executable, "-m", "clusterip.lab.servers", "--name", "blk", "--udp", "0"]
    blocker = lab.spawn("n2", argv, stdout=subprocess.PIPE, text=True)
    assert blocker.stdout is not None and blocker.stdout.readline() == "ready\n"
    with pytest.raises(LabError, match=r"server on n2 exited.*Address already in use"):
        lab.start_servers()
    assert lab.probe(vip=lab.topo.node_addr(1), timeout=2.0).by_node == {"n1": 1}


def test_run_timeout_kills_the_whole_group(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=1, clients=1, servers=False)
    ino = lab.ops.ns_inode(lab.topo.client_ns)
    assert ino is not None
    began = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run("client", ["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
    assert time.monotonic() - began < 5
    time.sleep(0.1)
    assert pids_in_netns(ino) == []
    done = lab.run("client", ["sh", "-c", "cat; exit 3"], input="hi", timeout=5)
    assert (done.returncode, done.stdout) == (3, "hi")


def test_two_labs_coexist(make_lab: MakeLab) -> None:
    one = make_lab(nodes=1, clients=2)
    two = make_lab(nodes=2, clients=2)
    assert one.probe(vip="198.18.0.1", timeout=2.0).by_node == {"n1": 2}
    assert two.probe(vip="198.18.0.2", timeout=2.0).by_node == {"n2": 2}
    absent = one.probe(vip="198.18.0.2", timeout=0.5)  # lab one has no node 2
    assert absent.by_node == {} and absent.errors == 2
    one.teardown()
    assert lab_namespaces(one.name) == set()
    assert two.probe(vip="198.18.0.1", timeout=2.0).by_node == {"n1": 2}


def test_refuses_to_build_over_existing(make_lab: MakeLab, new_lab_name: Callable[[], str]) -> None:
    lab = make_lab(nodes=1, clients=1, servers=False)
    with pytest.raises(LabError, match="already exists"):
        Lab.build(LabTopo(lab.name, 1, 1), servers=False)
    assert len(lab_namespaces(lab.name)) == 3 and os.path.exists(lab.state_path)
    other = new_lab_name()
    subprocess.run(["ip", "netns", "add", f"{other}-n1"], check=True)
    try:
        with pytest.raises(LabError, match=f"{other}-n1 exist"):
            Lab.build(LabTopo(other, 1, 1), servers=False)
        assert lab_namespaces(other) == {f"{other}-n1"}
        assert not os.path.exists(f"/run/clusterip/lab-{other}.json")
    finally:
        subprocess.run(["ip", "netns", "delete", f"{other}-n1"], check=False)


def test_cli_up_exec_probe_down(new_lab_name: Callable[[], str]) -> None:
    name = new_lab_name()
    runner = CliRunner()
    try:
        up = runner.invoke(lab_cli, ["up", "--nodes", "2", "--clients", "3", "--name", name])
        assert up.exit_code == 0, up.output
        assert f"{name}-n2: eth0 198.18.0.2/16" in up.output
        ok = runner.invoke(lab_cli, ["exec", "--name", name, "n1", "--", "true"])
        assert ok.exit_code == 0
        code = runner.invoke(
            lab_cli, ["exec", "--name", name, "client", "--", "sh", "-c", "exit 3"]
        )
        assert code.exit_code == 3
        bad = runner.invoke(lab_cli, ["exec", "--name", name, "n3", "--", "true"])
        assert bad.exit_code == 2 and "bad host 'n3'" in bad.output
        args = ["probe", "--name", name, "--vip", "198.18.0.2", "--per-source", "2", "--json"]
        probe = runner.invoke(lab_cli, args)
        assert probe.exit_code == 0, probe.output
        assert json.loads(probe.output)["by_node"] == {"n2": 6}
        table = runner.invoke(lab_cli, ["probe", "--name", name, "--vip", "198.18.0.1"])
        assert table.exit_code == 0 and "n1" in table.output and "100.0%" in table.output
        down = runner.invoke(lab_cli, ["down", "--name", name])
        assert down.exit_code == 0 and lab_namespaces(name) == set()
        again = runner.invoke(lab_cli, ["down", "--name", name])
        assert again.exit_code == 0 and f"no lab {name}" in again.output
    finally:
        if os.path.exists(f"/run/clusterip/lab-{name}.json"):
            Lab.load(name).teardown()
