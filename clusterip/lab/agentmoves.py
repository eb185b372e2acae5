"""Agent moves under load, in a 4-node lab: join, drain, weight change, graceful leave and
planned restart, each with its naive counterpart (for the benchmark).

One move at a time (`MoveLab.run(spec)`): nodes 1-3 run agents and servers (bound as the spec
says), clients hold long-lived TCP connections and UDP flows from ports chosen by bucket (most
in the buckets the move touches), and open new connections from every client address; then:

- join     node 4's agent starts (its server first: a VIP-bound one waits for the address);
- drain    `clusterip drain` on node 2 (naive: `drain 0`, no time for its flows);
- weight   `clusterip weight 3` on node 1;
- leave    node 3 drains (timeout LEAVE_DRAIN), the clients end its connections, and once its
           flows are over (or at the timeout) `clusterip stop --leave` (naive: at once);
- restart  SIGTERM to node 2's agent, a new one RESTART_GAP later (naive: `--restart-grace 0`,
           so SIGTERM is a graceful leave, the behaviour before planned restarts existed).

Naive join and weight run agents with `--drain-timeout 0`. The outcome holds what the clients
saw (clusterip.lab.traffic) and the buckets before and after; tests assert on it, the
benchmark reports it.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterip.config import VipConfig
from clusterip.core import defaults
from clusterip.core.holdings import claims
from clusterip.lab import webservers
from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from clusterip.lab.traffic import (
    PortPicker,
    Seen,
    Traffic,
    bucket_of,
    held_summary,
    new_summary,
    udp_summary,
)

MOVES = ("join", "drain", "weight", "leave", "restart")
LISTENS = ("wildcard", "vip", "reuseport")
NODES = 4  # the lab's; three serve before a move, the fourth joins
BUCKETS = defaults.BUCKETS
HELD = 150  # long-lived connections in the buckets the move touches
HELD_OTHER = 30  # and elsewhere
HELD_LEAVER = 40  # on the leaving node, ended by the clients before it leaves
UDP_MOVED = 60
UDP_OTHER = 20
BEFORE = 1.0  # load before the move
AFTER = 1.5  # and after it settled
LEAVE_DRAIN = 4.0  # the leaving node's drain timeout (its UDP flows would keep it longer)
RESTART_GAP = 1.0  # no agent at all on the restarting node this long
MOVER = {"join": 4, "drain": 2, "weight": 1, "leave": 3, "restart": 2}


@dataclass(frozen=True)
class Spec:
    move: str
    listen: str = "wildcard"  # lab servers: LISTENS; nginx / haproxy: wildcard or vip
    cookies: int = 1  # net.ipv4.tcp_syncookies on the nodes
    server: str = "lab"  # or nginx, haproxy
    naive: bool = False

    @property
    def id(self) -> str:
        naive = "-naive" if self.naive else ""
        return f"{self.move}-{self.server}-{self.listen}-cookies{self.cookies}{naive}"


@dataclass
class Outcome:
    spec: Spec
    cfg: VipConfig
    before: dict[int, frozenset[int]]
    after: dict[int, frozenset[int]]
    touched: frozenset[int]  # buckets that moved (restart: the restarting node's)
    marks: dict[str, float]  # wall-clock times: move, settled, ...
    seen: Seen
    statuses: dict[int, dict[str, Any]] = field(default_factory=dict)  # after the move
    before_status: dict[int, dict[str, Any]] = field(default_factory=dict)

    def moved(self, src: str, sport: int) -> bool:
        return bucket_of(self.cfg, BUCKETS, src, sport, 80) in self.touched

    def bucket(self, record: dict[str, Any]) -> int:
        """The bucket of a new connection's record."""
        return bucket_of(self.cfg, BUCKETS, record["src"], record["sport"], 80)

    def summary(self) -> dict[str, Any]:
        held = [r for group in self.seen.held.values() for r in group]
        return {
            "move": self.spec.move,
            "listen": self.spec.listen,
            "server": self.spec.server,
            "cookies": self.spec.cookies,
            "naive": self.spec.naive,
            "buckets_moved": len(self.touched) if self.spec.move != "restart" else 0,
            "move_s": round(self.marks["settled"] - self.marks["move"], 3),
            "new": new_summary(self.seen.new, self.marks["move"], self.moved),
            "held": held_summary(held),
            "held_groups": {k: held_summary(v) for k, v in self.seen.held.items()},
            "udp": udp_summary(self.seen.udp),
        }


class MoveLab:
    """A lab for agent moves, one after the other (each starts from a clean set of nodes)."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        assert lab.topo.nodes >= NODES, "agent moves need a 4-node lab"
        self.lab = lab
        self.workdir = workdir
        self.keyfile = write_key(workdir / "cluster.key")
        self.agents = Agents(lab, self.keyfile)
        self.servers: list[subprocess.Popen[Any]] = []
        self.ports = PortPicker(lab.topo.client_addrs())
        self.cfg = lab.topo.vip_config()
        self.cells = 0
        self.traffic: Traffic | None = None

    # ----- set-up -------------------------------------------------------------------------

    def reset(self, spec: Spec) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a lab server, not the system under test
                proc.kill()
                proc.wait(timeout=10)
        self.servers = []
        self.agents.reset()
        for k in self.lab.topo.node_indexes:
            self.lab.sysctls(
                f"n{k}",
                {"net.ipv4.tcp_syncookies": str(spec.cookies), "net.ipv4.ip_nonlocal_bind": "0"},
            )

    def _agent_args(self, spec: Spec) -> tuple[str, ...]:
        if spec.naive and spec.move in ("join", "weight"):
            return ("--drain-timeout", "0")
        if spec.naive and spec.move == "restart":
            return ("--restart-grace", "0")
        return ()

    def serve(self, spec: Spec, nodes: list[int], *, vip_up: bool = True) -> list[Any]:
        """Servers on `nodes`; `vip_up=False`: the VIP is not there yet (a joining node)."""
        lab = self.lab
        if spec.server == "lab":
            wait = () if vip_up or spec.listen == "wildcard" else ("--wait-vip", "30")
            procs = lab.start_servers(nodes, listen=spec.listen, args=wait, wait=vip_up)
            self.servers += procs.values()
            return list(procs.values()) if not vip_up else []
        if not vip_up and spec.listen == "vip":
            for k in nodes:
                lab.sysctls(f"n{k}", {"net.ipv4.ip_nonlocal_bind": "1"})
        workdir = str(self.workdir / f"cell{self.cells}")
        self.servers += webservers.start(lab, spec.server, nodes, workdir, spec.listen,
                                         vip_up=vip_up)  # fmt: skip
        udp_only = ("--http", "0", "--echo", "0")
        self.servers += lab.start_servers(nodes, args=udp_only).values()
        return []

    def prepare(self, spec: Spec) -> None:
        self.cells += 1
        self.reset(spec)
        self.agents.extra = list(self._agent_args(spec))
        for k in (1, 2, 3):
            self.agents.start(k)
        self.agents.wait_converged([1, 2, 3])
        self.serve(spec, [1, 2, 3])

    # ----- the move -----------------------------------------------------------------------

    def predicted(self, spec: Spec) -> tuple[frozenset[int], frozenset[int]]:
        """(buckets the move touches, buckets of the nodes that stay as they are), as the
        core's assignment predicts them for three equal nodes."""
        three = {1: 1, 2: 1, 3: 1}
        k = MOVER[spec.move]
        if spec.move == "join":
            touched = claims({**three, 4: 1}, BUCKETS, 4)
        elif spec.move == "weight":
            touched = claims({**three, 1: 3}, BUCKETS, 1) - claims(three, BUCKETS, 1)
        else:
            touched = claims(three, BUCKETS, k)
        return touched, frozenset(range(1, BUCKETS + 1)) - touched

    def start_traffic(self, spec: Spec) -> Traffic:
        touched, rest = self.predicted(spec)
        http = spec.server != "lab"
        dport = 80 if http else 7
        traffic = Traffic(self.lab)
        try:
            if spec.move == "leave":
                groups = {"held": (rest, HELD), "leaver": (touched, HELD_LEAVER)}
            else:
                groups = {"held": (touched, HELD), "other": (rest, HELD_OTHER)}
            picked = self.ports.pick(self.cfg, BUCKETS, dport, groups)
            for label, sources in picked.items():
                traffic.hold(label, sources, http=http)
            udp = self.ports.pick(self.cfg, BUCKETS, 5300, {"in": (touched, UDP_MOVED),
                                                             "out": (rest, UDP_OTHER)})  # fmt: skip
            traffic.flows(udp["in"] + udp["out"])
            traffic.connect(self.lab.topo.client_addrs())
        except BaseException:
            traffic.kill()
            raise
        return traffic

    def run(self, spec: Spec, *, unguarded: bool = False) -> Outcome:
        """One move under load. `unguarded`: first wait for the guard windows of the start to
        end (10 s), so that the status after the move shows only the move's own."""
        self.prepare(spec)
        a = self.agents
        if unguarded:
            a.wait_for(lambda: all(a.vip_status(k)["guard_until"] is None for k in (1, 2, 3)),
                       "the start's guard windows to end", timeout=20, every=0.5)  # fmt: skip
        before_status = {k: a.vip_status(k) for k in (1, 2, 3)}
        before = {k: frozenset(st["owned"]) for k, st in before_status.items()}
        traffic = self.traffic = self.start_traffic(spec)
        marks: dict[str, float] = {}
        try:
            time.sleep(BEFORE)
            marks["move"] = time.time()
            nodes = getattr(self, f"_{spec.move}")(spec, marks)
            marks["settled"] = time.time()
            time.sleep(AFTER)
            statuses = {k: a.vip_status(k) for k in nodes}
            seen = traffic.finish()
        except BaseException:
            traffic.kill()
            raise
        after = {k: frozenset(st["owned"]) for k, st in statuses.items()}
        if spec.move == "restart":
            touched = before[MOVER["restart"]]
        else:
            old = {b: k for k, bs in before.items() for b in bs}
            new = {b: k for k, bs in after.items() for b in bs}
            touched = frozenset(b for b in new if old.get(b) != new[b])
        return Outcome(spec, self.cfg, before, after, touched, marks, seen, statuses, before_status)

    def _join(self, spec: Spec, marks: dict[str, float]) -> list[int]:
        waiting = self.serve(spec, [4], vip_up=False)
        self.agents.start(4)
        if waiting:
            self.lab.servers_ready({4: waiting[0]}, timeout=10)
        self.agents.wait_converged([1, 2, 3, 4])
        return [1, 2, 3, 4]

    def _drain(self, spec: Spec, marks: dict[str, float]) -> list[int]:
        a = self.agents
        a.drain(2, 0 if spec.naive else None)
        a.wait_for(lambda: a.vip_status(2)["owned_count"] == 0 and _all_owned(a, [1, 3]),
                   "the drain to move node 2's buckets")  # fmt: skip
        return [1, 2, 3]

    def _weight(self, spec: Spec, marks: dict[str, float]) -> list[int]:
        a = self.agents
        a.weight(1, 3)
        want = len(claims({1: 3, 2: 1, 3: 1}, BUCKETS, 1))
        a.wait_for(lambda: a.vip_status(1)["owned_count"] == want and _all_owned(a, [1, 2, 3]),
                   "the weight change")  # fmt: skip
        return [1, 2, 3]

    def _leave(self, spec: Spec, marks: dict[str, float]) -> list[int]:
        a = self.agents
        if not spec.naive:
            a.drain(3, LEAVE_DRAIN)
            a.wait_for(lambda: a.vip_status(3)["owned_count"] == 0 and _all_owned(a, [1, 2]),
                       "the drain before leaving")  # fmt: skip
            marks["drained"] = time.time()
            time.sleep(0.3)
            # The clients end the leaving node's connections (a service tells them to go).
            assert self.traffic is not None
            self.traffic.close("leaver")
            a.wait_for(lambda: not a.vip_status(3)["draining"], "node 3's flows to end",
                       timeout=LEAVE_DRAIN + 5)  # fmt: skip
            marks["flows_over"] = time.time()
        a.leave(3)
        marks["left"] = time.time()
        a.wait_converged([1, 2])
        return [1, 2]

    def _restart(self, spec: Spec, marks: dict[str, float]) -> list[int]:
        a = self.agents
        marks["sigterm"], marks["exited"] = a.terminate(2)
        time.sleep(RESTART_GAP)
        a.start(2)
        marks["restarted"] = time.time()
        a.wait_converged([1, 2, 3])
        return [1, 2, 3]


def _all_owned(a: Agents, nodes: list[int]) -> bool:
    owned = [b for k in nodes for b in a.vip_status(k)["owned"]]
    return len(owned) == len(set(owned)) == BUCKETS
