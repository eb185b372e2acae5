"""Static bucket moves break nothing, whatever the service binds, with or without SYN cookies.

Every cell: three nodes serve the VIP; clients hold long-lived connections (150 of them in
the bucket that moves), open new ones in
a loop and keep UDP sessions; node 3 runs `release 3`, then node 1 runs `take 3`. All new
connections succeed, none waits for more than one SYN retransmit (the client's first one
comes after 1 s: a SYN sent between the two commands has no owner), every long-lived
connection survives on its node, and no UDP datagram is answered twice.

The VIP-bound and SO_REUSEPORT cells are the regression test of clusterip/1's socket check,
which took a VIP-bound listener for a flow of its own: there the old owner reset the new
owner's handshakes (about 4,000 of 17,000 new connections, issue 10), and with SYN cookies
the new owner dropped its own handshakes' ACKs, so new connections hung.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterip.hashing import flow_bucket
from clusterip.lab import webservers
from clusterip.lab.conns import finish_conns, start_conns
from clusterip.lab.net import Lab
from tests.lab.clients import UDP_SESSIONS, udp_once
from tests.lab.conftest import MakeLab

NODES = 3
MOVED = 3
TARGET = 1
HELD_MOVED = 150  # long-lived connections of the moving bucket
HELD_OTHER = 60  # and of the others
SOURCES = 40  # client addresses opening new connections
SYN_RETRANSMIT = 1.0  # the client's first SYN retransmit (TCP_TIMEOUT_INIT)
# `clusterip ARGS` with its imports done ahead, run when a line arrives on stdin: so the two
# commands of a move follow each other as closely as an operator's script would run them,
# whatever Python's start-up costs on a loaded test machine.
PRIMED = r"""
import sys
import clusterip.cli, clusterip.node, clusterip.nft, clusterip.link, clusterip.flows
import nftables, pyroute2
print("ready", flush=True)
sys.stdin.readline()
clusterip.cli.main(sys.argv[1:])
"""


class Cell:
    """One lab shared by this module's cells; each cell starts from `down` everywhere."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.servers: list[subprocess.Popen[Any]] = []

    def cip(self, k: int, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "clusterip", *args]
        done = self.lab.run(self.lab.topo.node_ns(k), argv, timeout=30)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def primed(self, k: int, *args: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", PRIMED, *args]
        proc = self.lab.spawn(
            self.lab.topo.node_ns(k), argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def status(self, k: int) -> dict[str, Any]:
        (vip,) = json.loads(self.cip(k, "status", "--json").stdout)["vips"]
        return vip  # type: ignore[no-any-return]

    def reset(self, cookies: int) -> None:
        for proc in self.servers:
            proc.terminate()
        for proc in self.servers:
            proc.wait(timeout=10)
        self.servers = []
        for k in self.lab.topo.node_indexes:
            self.cip(k, "down")
            self.lab.sysctls(f"n{k}", {"net.ipv4.tcp_syncookies": str(cookies)})

    def up(self, xdp: str = "off") -> None:
        base = ["up", "--vip", self.lab.topo.vip, "--interface", "eth0", "--xdp", xdp]
        for k in self.lab.topo.node_indexes:
            out = self.cip(k, *base, "--total-nodes", str(NODES), "--local-node", str(k)).stdout
            assert ("XDP native" in out) == (xdp == "on"), out

    def serve(self, server: str, bind: str, workdir: Path) -> None:
        if server == "lab":
            self.servers += self.lab.start_servers(listen=bind).values()
        else:
            nodes = list(self.lab.topo.node_indexes)
            self.servers += webservers.start(self.lab, server, nodes, str(workdir), bind)
            # UDP still comes from the lab's own servers (no HTTP there: nginx has the port).
            self.servers += self.lab.start_servers(args=("--http", "0", "--echo", "0")).values()


@pytest.fixture(scope="module")
def cell(make_module_lab: MakeLab) -> Iterator[Cell]:
    yield Cell(make_module_lab(nodes=NODES, clients=SOURCES, servers=False))


def bucket(seed: int, src: str, sport: int, dport: int) -> int:
    addr = ipaddress.IPv4Address(src)
    return flow_bucket("sourceip-sourceport", seed, NODES, addr, sport, dport)


PORTS = itertools.count(20000, 1000)  # each cell its own client ports: the last cell's linger


def held_sources(lab: Lab, seed: int, dport: int) -> list[str]:
    """Client "addr:port"s for the long-lived connections, chosen by bucket (ports below the
    ephemeral range, so the kernel never hands them out meanwhile)."""
    want = {MOVED: HELD_MOVED, 1: HELD_OTHER // 2, 2: HELD_OTHER // 2}
    out = []
    first = next(PORTS)
    for sport in range(first, first + 1000):
        src = lab.topo.client_addrs()[sport % SOURCES]
        b = bucket(seed, src, sport, dport)
        if want.get(b, 0) > 0:
            want[b] -= 1
            out.append(f"{src}:{sport}")
    assert not any(want.values())
    return out


def run_move(cell: Cell, *, http_conns: bool) -> dict[str, Any]:
    """The move under load; returns what the clients saw and the counters after it."""
    lab = cell.lab
    sources = list(lab.topo.client_addrs())
    release = cell.primed(MOVED, "release", str(MOVED), "--vip", lab.topo.vip)
    take = cell.primed(TARGET, "take", str(MOVED), "--vip", lab.topo.vip)
    seed = int(cell.status(1)["seed"], 16)
    chosen = held_sources(lab, seed, 80 if http_conns else 7)
    conns = start_conns(lab, len(chosen), period=0.2, duration=60, http=http_conns, sources=chosen)
    udp_argv = [sys.executable, "-c", UDP_SESSIONS, lab.topo.vip, "5300", "60", "0.1", "4"]
    udp = lab.spawn(
        lab.topo.client_ns, [*udp_argv, ",".join(sources)], stdout=subprocess.PIPE, text=True
    )
    argv = [sys.executable, "-m", "clusterip.lab.newconns", lab.topo.vip, "80", "60", "3"]
    loop = lab.spawn(
        lab.topo.client_ns, [*argv, ",".join(sources)], stdout=subprocess.PIPE, text=True
    )
    assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    moved_at = time.time()
    took = []
    for proc in (release, take):
        began = time.monotonic()
        proc.communicate("go\n", timeout=30)
        took.append(time.monotonic() - began)
        assert proc.returncode == 0
    taken_at = time.time()
    time.sleep(1.5)  # right after the move
    loop.terminate()
    new = json.loads(loop.communicate(timeout=60)[0])
    sessions = json.loads(udp.communicate(timeout=60)[0])
    time.sleep(0.5)  # every long-lived connection has exchanged requests since the move
    held = finish_conns(conns, now=True)
    return {
        "new": new,
        "held": held,
        "udp": sessions,
        "moved_at": moved_at,
        "taken_at": taken_at,
        "commands": took,
        "after": {k: cell.status(k) for k in lab.topo.node_indexes},
    }


def check(cell: Cell, seen: dict[str, Any], *, xdp: bool = False) -> None:
    lab = cell.lab
    after = seen["after"]
    if xdp:  # the pre-filter dropped the other nodes' packets and fast-pathed steady ones
        for k in lab.topo.node_indexes:
            counters = after[k]["xdp"]["counters"]
            assert counters["dropped"] > 0 and counters["owned"] > 0, (k, counters)
            assert counters["forged"] == 0
    seed = int(after[1]["seed"], 16)
    new = seen["new"]
    failed = [r for r in new if r["error"]]
    assert not failed, (len(failed), len(new), Counter(r["error"] for r in failed))
    slow = sorted(r["took"] for r in new if r["took"] > SYN_RETRANSMIT + 0.5)
    assert not slow, slow[-5:]
    # Enough new connections of the moving bucket, while it moved and right after.
    moving = [
        r
        for r in new
        if bucket(seed, r["src"], r["sport"], 80) == MOVED and r["start"] >= seen["moved_at"]
    ]
    assert len(moving) >= 200, len(moving)
    cmds = " + ".join(f"{t:.3f}" for t in seen["commands"])
    print(f" [{len(new)} new, {len(moving)} moving, slowest {max(r['took'] for r in new):.3f} s,"
          f" release + take {cmds} s]", end="")  # fmt: skip
    late = [r for r in moving if r["start"] > seen["taken_at"] + 0.1]
    assert late and all(r["node"] == f"n{TARGET}" for r in late)
    # The long-lived ones: all alive, on the node that had them; those of the moved bucket
    # stayed on node 3 (draining there) while node 1 dropped their packets.
    held = seen["held"]
    assert len(held) == HELD_MOVED + HELD_OTHER
    broken = [(r["node"], r["broken"]) for r in held if r["broken"]]
    assert not broken, broken[:5]
    stayed = [r for r in held if r["node"] == f"n{MOVED}"]
    assert len(stayed) == HELD_MOVED and all(r["ok"] >= 10 for r in stayed)
    assert after[MOVED]["draining"] == [MOVED] and after[TARGET]["guarded"] == [MOVED]
    assert after[TARGET]["counters"]["midflow"]["packets"] > 0  # node 3's flows, dropped
    assert after[MOVED]["counters"]["kept"]["packets"] > 0
    # UDP: never answered twice; afterwards each flow answered once, by its new owner.
    assert sum(s["doubles"] for s in seen["udp"]) == 0
    answers = udp_once(lab, list(lab.topo.client_addrs()))
    assert all(len(a) == 1 for a in answers.values()), answers
    for key, (node,) in answers.items():
        src, sport = key.split(":")
        b = bucket(seed, src, int(sport), 5300)
        assert node == f"n{TARGET if b == MOVED else b}", (key, node)


@pytest.mark.parametrize("cookies", [1, 2], ids=["syncookies1", "syncookies2"])
@pytest.mark.parametrize("listen", ["wildcard", "vip", "reuseport"])
def test_static_move_lab_servers(cell: Cell, listen: str, cookies: int) -> None:
    cell.reset(cookies)
    cell.up()
    cell.serve("lab", listen, Path("."))
    check(cell, run_move(cell, http_conns=False))


def test_static_move_freebind_listener_made_before_the_vip(cell: Cell) -> None:
    cell.reset(2)
    cell.serve("lab", "freebind", Path("."))  # binds the VIP before it exists
    cell.up()
    check(cell, run_move(cell, http_conns=False))


@pytest.mark.parametrize(
    ("server", "bind", "cookies"),
    [("nginx", "vip", 2), ("nginx", "wildcard", 1), ("haproxy", "vip", 1)],
)
def test_static_move_real_servers(
    cell: Cell, tmp_path: Path, server: str, bind: str, cookies: int
) -> None:
    cell.reset(cookies)
    cell.up()
    cell.serve(server, bind, tmp_path)
    check(cell, run_move(cell, http_conns=True))


@pytest.mark.parametrize(
    ("server", "listen", "cookies"),
    [("lab", "wildcard", 1), ("lab", "reuseport", 2), ("nginx", "vip", 2)],
)
def test_static_move_with_the_xdp_prefilter(
    cell: Cell, tmp_path: Path, server: str, listen: str, cookies: int
) -> None:
    """The same moves with the XDP pre-filter on (issue 15): `release` keeps nft's flows
    before XDP drops the bucket, `take` opens XDP before nft takes it; steady buckets go
    through the owned fast path."""
    cell.reset(cookies)
    cell.up(xdp="on")
    cell.serve(server, listen, tmp_path)
    check(cell, run_move(cell, http_conns=server != "lab"), xdp=True)
