"""Shared builders for the agent tests (not a test module)."""

from __future__ import annotations

import random
from typing import TypeVar

from clusterip import config
from clusterip.core.bus import FakeClock, MemoryNetwork
from clusterip.core.events import PeerDown
from clusterip.core.membership import Membership
from clusterip.core.params import Cluster, Params
from clusterip.core.sim import SimNode, Simulation

KEY = b"clusterip-test-key-0123456789abcdef"
OTHER_KEY = b"another-key-of-at-least-16-bytes"


def vip_config(**over: object) -> config.VipConfig:
    args: dict[str, object] = {"vip": "192.0.2.10", "interface": "eth0", "total_nodes": 1}
    args.update(over)
    return config.build(**args)  # type: ignore[arg-type]


def cluster(key: bytes = KEY, buckets: int = 4096, **over: object) -> Cluster:
    return Cluster.create(vip_config(**over), key, buckets=buckets)


def simulation(
    nodes: int | dict[int, int],
    *,
    params: Params | None = None,
    seed: int = 1,
    loss: float = 0.0,
    delay: tuple[float, float] = (0.0002, 0.001),
    start: bool = True,
) -> Simulation:
    """`nodes` agents (a count, or node id -> weight) of one VIP, started unless told not."""
    params = params or Params()
    members = dict.fromkeys(range(1, nodes + 1), 1) if isinstance(nodes, int) else nodes
    clock = FakeClock()
    net = MemoryNetwork(clock, random.Random(seed), loss=loss, delay=delay)
    sim = Simulation(members, cfg=vip_config(), key=KEY, params=params, clock=clock, network=net)
    if start:
        for n in members:
            sim.start(n)
    return sim


def membership_of(sim: Simulation, node_id: int) -> Membership:
    """The membership of a running simulated node."""
    vip = sim.nodes[node_id].vip
    assert vip is not None, f"node {node_id} is not running"
    return vip.membership


def owned(sim: Simulation, node_id: int) -> frozenset[int]:
    """The buckets a simulated node's datapath accepts new connections for."""
    datapath = sim.nodes[node_id].datapath
    return datapath.owned if datapath is not None else frozenset()


def downs(node: SimNode, about: int) -> list[tuple[float, PeerDown]]:
    """(when, event) of every PeerDown `node` reported about node `about`."""
    return [(t, e) for t, e in node.events if isinstance(e, PeerDown) and e.node_id == about]


T = TypeVar("T")


def events_of(node: SimNode, kind: type[T]) -> list[tuple[float, T]]:
    return [(t, e) for t, e in node.events if isinstance(e, kind)]
