"""Membership faults under load, in a 4-node lab (issue 11), one scenario at a time.

Agents run on nodes 1..N (3 or 4; 1 for the lone-node cases), the lab's servers on every node.
Clients hold long-lived TCP connections and UDP flows on every serving node (ports chosen by
the bucket's owner) and open new connections from 40 addresses all along. Then a fault, for a
while, then its end (the *heal*):

- cut       switch ports down (`ip link set nK down` in the switch namespace): the node loses
            carrier, and neither its peers nor the clients reach it;
- split     heartbeats dropped between groups of nodes by nft rules in the switch namespace
            (bridge family, forward hook, UDP to the heartbeat port only): the nodes cannot
            hear each other but the clients still reach every node. This is the only way to
            split 4 nodes 2|2 with one switch (ports down would isolate each node of the cut
            half from the other as well), and the harder case: a minority that clients still
            reach must stop answering by itself before the majority takes its buckets;
- oneway    heartbeats from one node to another dropped, the other way delivered;
- peer      a second agent for the same VIP with another key or one setting different
            (`--buckets 1024`, another `--seed`) next to a lone serving node;
- flood     forged heartbeats (clusterip.lab.forge) at 10,000/s from the client namespace.

The outcome counts per client: UDP datagrams answered twice or not at all, new connections
failed, long-lived connections broken (per node), and how long after the heal each UDP flow was
answered exactly once again. bench.partition runs the `cut` and `split` kinds repeatedly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterip.core import defaults
from clusterip.lab.agents import Agents, log_time, write_key
from clusterip.lab.net import Lab
from clusterip.lab.traffic import SLOW, PortPicker, Seen, Traffic, udp_gaps
from clusterip.reactor.transport import DEFAULT_GROUP, DEFAULT_PORT

BUCKETS = defaults.BUCKETS
HELD_PER_NODE = 30
UDP_PER_NODE = 15
BEFORE = 1.5
AFTER = 2.5
HEAL_GRACE = 1.0  # every client answered again within this of the heal
DURING_BEFORE = 1.5  # connections opened during a fault: this long before the heal
FAULT_TABLE = "clusterip_lab_fault"  # the switch namespace's nft table (bridge family)
WRONG_KEY = "a-different-secret-of-sufficient-length\n"
FLOOD_RATE = 10_000


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: int  # agents on nodes 1..nodes
    untouched: tuple[int, ...]  # nodes whose long-lived connections must all survive
    cut: tuple[int, ...] = ()
    split: tuple[tuple[int, ...], ...] = ()
    oneway: tuple[int, int] | None = None  # (from, to)
    peer: tuple[str, ...] | None = None  # the foreign agent's flags ("--key" = another key)
    flood: int = 0
    seconds: float = 5.0
    served: bool = True  # a majority serves throughout: no new connection may fail


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("flap", 3, (1, 2), cut=(3,), seconds=2.0),
        Scenario("cut-1|2", 3, (1, 2), cut=(3,)),
        Scenario("cut-1|1|1", 3, (), cut=(2, 3), served=False),
        Scenario("split-1|2", 3, (1, 2), split=((1, 2), (3,))),
        Scenario("cut-1|3", 4, (1, 2, 3), cut=(4,)),
        Scenario("cut-2|1|1", 4, (1, 2), cut=(3, 4)),
        Scenario("cut-1|1|1|1", 4, (), cut=(2, 3, 4), served=False),
        Scenario("split-2|2", 4, (1, 2), split=((1, 2), (3, 4))),
        Scenario("oneway", 3, (1, 2, 3), oneway=(1, 2)),
        Scenario("peer-key", 1, (1,), peer=("--key",)),
        Scenario("peer-buckets", 1, (1,), peer=("--buckets", "1024")),
        Scenario("peer-seed", 1, (1,), peer=("--seed", "1234")),
        Scenario("flood", 3, (1, 2, 3), flood=FLOOD_RATE),
    )
}

# Heartbeat gaps as a host on the segment sees them, from the agents' own addresses only (the
# flood's replays come from the client's).
GAPS = r"""
import json, socket, struct, sys, time
group, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
nodes = set(sys.argv[4].split(","))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = struct.pack("4s4si", socket.inet_aton(group), b"\0" * 4, socket.if_nametoindex("eth0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(0.2)
print("ready", flush=True)
last, worst = {}, {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        _data, (addr, _p) = s.recvfrom(4096)
    except OSError:
        continue
    if addr not in nodes:
        continue
    now = time.monotonic()
    if addr in last:
        worst[addr] = max(worst.get(addr, 0.0), now - last[addr])
    last[addr] = now
print(json.dumps({a: round(g * 1000, 1) for a, g in worst.items()}))
"""


@dataclass
class FaultOutcome:
    scenario: Scenario
    marks: dict[str, float]
    seen: Seen
    before: dict[int, frozenset[int]]
    after: dict[int, dict[str, Any]]  # status of every agent node after the heal
    extra: dict[str, Any] = field(default_factory=dict)  # flood: CPU, gaps; peer: its status

    def summary(self) -> dict[str, Any]:
        sc, m = self.scenario, self.marks
        window = (m["fault"], m["heal"] + HEAL_GRACE)
        outside = [r for r in self.seen.new if not window[0] <= r["start"] <= window[1]]
        held = [r for group in self.seen.held.values() for r in group]
        per_node: dict[str, dict[str, int]] = {}
        for r in held:
            d = per_node.setdefault(r["node"], {"total": 0, "broken": 0})
            d["total"] += 1
            d["broken"] += bool(r["broken"])
        untouched = {f"n{k}" for k in sc.untouched}
        gaps = udp_gaps(self.seen.udp, m["heal"])
        return {
            "scenario": sc.name,
            "fault_s": round(m["heal"] - m["fault"], 2),
            "settled_after_heal_s": round(m["settled"] - m["heal"], 3),
            "udp": _udp(self.seen.udp, window),
            "heal_gap_max_s": round(max(gaps, default=0.0), 3),
            "clients_late": sum(1 for g in gaps if g > HEAL_GRACE),
            "new": {
                "total": len(self.seen.new),
                "failed": sum(1 for r in self.seen.new if r["error"]),
                "failed_outside": sum(1 for r in outside if r["error"]),
                "slow_outside": sum(1 for r in outside if r["took"] > SLOW),
                "errors": dict(Counter(r["error"] for r in self.seen.new if r["error"])),
                "max_wait_s": round(max((r["took"] for r in self.seen.new), default=0.0), 3),
            },
            "held": per_node,
            "untouched_broken": sum(d["broken"] for n, d in per_node.items() if n in untouched),
            "per_client": _per_client(self.seen),
            **self.extra,
        }


def _udp(sessions: Sequence[dict[str, Any]], window: tuple[float, float]) -> dict[str, Any]:
    doubles = missing_in = missing_out = 0
    outage = 0.0
    for s in sessions:
        lost_since = None
        for t, nodes in s["log"]:
            doubles += len(nodes) > 1
            if not nodes:
                if window[0] <= t <= window[1]:
                    missing_in += 1
                else:
                    missing_out += 1
                lost_since = t if lost_since is None else lost_since
            elif lost_since is not None:
                outage = max(outage, t - lost_since)
                lost_since = None
    return {
        "sessions": len(sessions),
        "doubles": doubles,
        "missing_in_fault": missing_in,
        "missing_outside": missing_out,
        "longest_outage_s": round(outage, 3),
    }


def _per_client(seen: Seen) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in seen.udp:
        c = out.setdefault(s["src"], {"udp_doubles": 0, "udp_missing": 0, "new_failed": 0})
        c["udp_doubles"] += sum(1 for _t, n in s["log"] if len(n) > 1)
        c["udp_missing"] += sum(1 for _t, n in s["log"] if not n)
    for r in seen.new:
        c = out.setdefault(r["src"], {"udp_doubles": 0, "udp_missing": 0, "new_failed": 0})
        c["new_failed"] += bool(r["error"])
    return out


class FaultLab:
    """A 4-node lab with servers on every node, for one fault after another."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.keyfile = write_key(workdir / "cluster.key")
        self.wrong = write_key(workdir / "wrong.key", WRONG_KEY)
        self.agents = Agents(lab, self.keyfile)
        self.cfg = lab.topo.vip_config()
        self.ports = PortPicker(lab.topo.client_addrs())
        self.servers = lab.start_servers()

    # ----- faults in the switch ------------------------------------------------------------

    def switch(self, argv: list[str], script: str | None = None) -> None:
        done = self.lab.run(self.lab.topo.switch_ns, argv, timeout=10, input=script)
        if done.returncode != 0:
            raise RuntimeError(f"switch: {' '.join(argv)}: {done.stderr.strip()}")

    def port(self, k: int, up: bool) -> None:
        self.switch(["ip", "link", "set", f"n{k}", "up" if up else "down"])

    def drop_heartbeats(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Heartbeats from node a to node b dropped at the switch, for each (a, b)."""
        rules = "".join(
            f'\t\tiifname "n{a}" oifname "n{b}" udp dport {DEFAULT_PORT} counter drop\n'
            for a, b in pairs
        )
        script = (
            f"table bridge {FAULT_TABLE} {{\n\tchain forward {{\n"
            f"\t\ttype filter hook forward priority 0; policy accept;\n{rules}\t}}\n}}\n"
        )
        self.switch(["nft", "-f", "-"], script)

    def heal_switch(self) -> None:
        for k in self.lab.topo.node_indexes:
            self.port(k, True)
        script = f"add table bridge {FAULT_TABLE}\ndelete table bridge {FAULT_TABLE}\n"
        self.switch(["nft", "-f", "-"], script)

    # ----- one scenario -------------------------------------------------------------------

    def prepare(self, sc: Scenario) -> None:
        self.heal_switch()
        self.agents.reset()
        nodes = list(range(1, sc.nodes + 1))
        for k in nodes:
            self.agents.start(k)
        if sc.nodes == 1:
            self.agents.wait_for(lambda: self.agents.vip_status(1)["owned_count"] == BUCKETS,
                                 "the lone node to serve")  # fmt: skip
        else:
            self.agents.wait_converged(nodes)

    def traffic(self, owned: dict[int, frozenset[int]]) -> Traffic:
        t = Traffic(self.lab)
        try:
            held = {f"n{k}": (bs, HELD_PER_NODE) for k, bs in owned.items()}
            for label, sources in self.ports.pick(self.cfg, BUCKETS, 7, held).items():
                t.hold(label, sources, http=False)
            udp = {f"n{k}": (bs, UDP_PER_NODE) for k, bs in owned.items()}
            picked = self.ports.pick(self.cfg, BUCKETS, 5300, udp)
            t.flows([s for group in picked.values() for s in group])
            t.connect(self.lab.topo.client_addrs())
        except BaseException:
            t.kill()
            raise
        return t

    def run(self, sc: Scenario, *, during: int = 0) -> FaultOutcome:
        """One scenario under load. `during`: that many more long-lived connections, opened
        late in the fault (to the nodes that serve then) and held across the heal."""
        self.prepare(sc)
        a = self.agents
        nodes = list(range(1, sc.nodes + 1))
        before = a.owned(nodes)
        traffic = self.traffic(before)
        marks: dict[str, float] = {}
        extra: dict[str, Any] = {}
        try:
            time.sleep(BEFORE)
            marks["fault"] = time.time()
            healer = self._fault(sc, extra)
            if during:
                time.sleep(max(0.0, marks["fault"] + sc.seconds - DURING_BEFORE - time.time()))
                addrs = self.lab.topo.client_addrs()
                traffic.hold("during", [addrs[i % len(addrs)] for i in range(during)], http=False)
            time.sleep(max(0.0, marks["fault"] + sc.seconds - time.time()))
            marks["heal"] = time.time()
            healer()
            if sc.nodes == 1:
                a.wait_for(lambda: a.vip_status(1)["owned_count"] == BUCKETS, "n1 to serve all")
            else:
                a.wait_converged(nodes)
            marks["settled"] = time.time()
            time.sleep(AFTER)
            after = {k: a.vip_status(k) for k in nodes}
            seen = traffic.finish()
        except BaseException:
            traffic.kill()
            raise
        return FaultOutcome(sc, marks, seen, before, after, extra)

    def _fault(self, sc: Scenario, extra: dict[str, Any]) -> Any:
        """Apply the scenario's fault; returns the function that ends it."""
        if sc.cut:
            for k in sc.cut:
                self.port(k, False)
            return self.heal_switch
        if sc.split:
            groups = sc.split
            self.drop_heartbeats(
                [(i, j) for g in groups for h in groups if g != h for i in g for j in h]
            )
            return self.heal_switch
        if sc.oneway:
            self.drop_heartbeats([sc.oneway])
            return self.heal_switch
        if sc.peer is not None:
            return self._peer(sc, extra)
        if sc.flood:
            return self._flood(sc, extra)
        raise ValueError(f"scenario {sc.name} has no fault")

    def _peer(self, sc: Scenario, extra: dict[str, Any]) -> Any:
        assert sc.peer is not None
        k = sc.nodes + 1
        wrong_key = sc.peer == ("--key",)
        self.agents.start(k, keyfile=self.wrong if wrong_key else None,
                          args=() if wrong_key else sc.peer)  # fmt: skip

        def heal() -> None:
            extra["peer_status"] = self.agents.vip_status(k)
            extra["peer_exit"] = self.agents.terminate(k)

        return heal

    def _flood(self, sc: Scenario, extra: dict[str, Any]) -> Any:
        lab, a = self.lab, self.agents
        nodes = ",".join(lab.topo.node_addr(k) for k in range(1, sc.nodes + 1))
        argv = [sys.executable, "-c", GAPS, DEFAULT_GROUP, str(DEFAULT_PORT), str(sc.seconds)]
        gaps = lab.spawn(lab.topo.node_ns(4), [*argv, nodes], stdout=subprocess.PIPE, text=True)
        assert gaps.stdout is not None and gaps.stdout.readline().strip() == "ready"
        # At one agent (node 1), as issue 11 asks: 10,000 per second on a 2-core machine is
        # what one agent can be sent beside the lab's clients and servers, not three.
        argv = [sys.executable, "-m", "clusterip.lab.forge", lab.topo.vip, DEFAULT_GROUP]
        argv += [str(DEFAULT_PORT), str(self.keyfile), str(sc.flood), str(sc.seconds)]
        argv += ["--to", lab.topo.node_addr(1)]
        forges = [lab.spawn(lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)]
        for forge in forges:
            assert forge.stdout is not None and forge.stdout.readline().strip() == "ready"
        cpu0 = {k: (cpu_seconds(p.pid), time.monotonic()) for k, p in a.procs.items()}
        rejected0 = {k: sum(a.vip_status(k)["rejected"].values()) for k in a.procs}

        def heal() -> None:
            sent = [json.loads(f.communicate(timeout=30)[0]) for f in forges]
            now = time.monotonic()
            extra["flood"] = {
                "sent": sum(x["sent"] for x in sent),
                "rate": sum(x["rate"] for x in sent),
                "agent_cpu": {
                    f"n{k}": round((cpu_seconds(a.procs[k].pid) - c) / (now - t0), 3)
                    for k, (c, t0) in cpu0.items()
                },
                "rejected": {
                    f"n{k}": sum(a.vip_status(k)["rejected"].values()) - r
                    for k, r in rejected0.items()
                },
                "max_heartbeat_gap_ms": json.loads(gaps.communicate(timeout=30)[0]),
            }

        return heal


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def down_events(agents: Agents, since: float) -> list[str]:
    """Lines of the agents' logs since `since` (wall clock) that declare a peer down."""
    out = []
    for k, path in agents.logs.items():
        for line in path.read_text().splitlines():
            if " down (" in line and log_time(line) >= since:
                out.append(f"n{k}: {line}")
    return out
