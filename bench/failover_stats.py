"""Measure failover in the simulation: detection, takeover, rejoin, and what clients saw.

`python -m bench.failover_stats [--nodes N] [--trials T]` crashes, restarts and
removes nodes at random moments of a simulated cluster (default parameters, sub-millisecond
network) and prints the distributions. Pure computation except printing in `main`.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from clusterip import config
from clusterip.core.bus import FakeClock, MemoryNetwork
from clusterip.core.events import OwnershipChanged, PeerDown
from clusterip.core.params import Params
from clusterip.core.sim import Simulation

_KEY = b"failover-stats-key-0123456789"


@dataclass
class Results:
    detection: list[float] = field(default_factory=list)  # crash -> PeerDown, per survivor
    takeover: list[float] = field(default_factory=list)  # crash -> last orphaned bucket taken
    leave: list[float] = field(default_factory=list)  # LEAVE sent -> last bucket taken
    rejoin: list[float] = field(default_factory=list)  # restart -> full share owned again
    violations: int = 0  # what clients would have seen wrong (clusterip.core.sim)


def _sim(nodes: int, params: Params, rng: random.Random) -> Simulation:
    cfg = config.build(vip="192.0.2.10", interface="eth0", total_nodes=1)
    clock = FakeClock()
    net = MemoryNetwork(clock, random.Random(rng.getrandbits(32)))
    sim = Simulation(
        dict.fromkeys(range(1, nodes + 1), 1),
        cfg=cfg,
        key=_KEY,
        params=params,
        clock=clock,
        network=net,
    )
    for n in range(1, nodes + 1):
        sim.start(n)
    return sim


def trial(nodes: int, params: Params, rng: random.Random, out: Results) -> None:
    sim = _sim(nodes, params, rng)
    t = 1.0 + rng.random() * params.interval  # a random phase against the heartbeats
    sim.run_until(t)
    victim = rng.randint(1, nodes)
    share = _owned(sim, victim)
    sim.crash(victim)
    sim.run_until(t + 1.0)
    last = t
    for node in sim.running():
        for when, ev in node.events:
            if when < t:
                continue
            if isinstance(ev, PeerDown) and ev.node_id == victim:
                out.detection.append(when - t)
            if isinstance(ev, OwnershipChanged) and any(
                ev.gained.get(b) == victim for b in ev.orphaned
            ):
                last = max(last, when)
    out.takeover.append(last - t)
    # Restart it: it takes its share back from live nodes (handoffs).
    t = sim.clock.now()
    sim.start(victim)
    sim.run_until(t + 1.0)
    back = [w for w, e in sim.nodes[victim].events if isinstance(e, OwnershipChanged) and w >= t]
    if _owned(sim, victim) == share and back:
        out.rejoin.append(max(back) - t)
    # A graceful leave.
    t = sim.clock.now() + rng.random() * params.interval
    sim.run_until(t)
    leaver = rng.choice([n.node_id for n in sim.running()])
    sim.leave(leaver)
    sim.run_until(t + 1.0)
    taken = [
        w
        for node in sim.running()
        for w, e in node.events
        if w >= t and isinstance(e, OwnershipChanged) and leaver in e.gained.values()
    ]
    out.leave.append(max(taken, default=t) - t)
    out.violations += len(sim.violations)


def _owned(sim: Simulation, node: int) -> int:
    datapath = sim.nodes[node].datapath
    return len(datapath.owned) if datapath is not None else 0


def _line(name: str, values: Sequence[float]) -> str:
    if not values:
        return f"{name:>22}: -"
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name:>22}: median {statistics.median(ms):6.1f} ms  p99 {p99:6.1f} ms  "
        f"max {ms[-1]:6.1f} ms  (n={len(ms)})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    params = Params()
    rng = random.Random(args.seed)
    out = Results()
    for _ in range(args.trials):
        trial(args.nodes, params, rng, out)
    print(
        f"{args.nodes} nodes, {args.trials} trials, interval {params.interval * 1000:.0f} ms x "
        f"tolerance {params.tolerance}, hold {params.hold_time * 1000:.0f} ms"
    )
    print(_line("crash -> detected", out.detection))
    print(_line("crash -> taken over", out.takeover))
    print(_line("LEAVE -> taken over", out.leave))
    print(_line("restart -> share back", out.rejoin))
    print(f"{'client-visible faults':>22}: {out.violations}")


if __name__ == "__main__":
    main()
