"""Many agents on an in-memory network: random crashes, restarts, leaves, loss, delay and
partitions (hypothesis). Once the network heals, after a settling time derived from the
parameters, every bucket has exactly one owner among the running nodes and all agree."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterip.core.params import Params
from clusterip.core.sim import Simulation
from tests.unit.core.agent_helpers import simulation

P = Params()
CHAOS = 1.5  # seconds of trouble
MAX_DELAY = 0.15  # worst one-way delay during the trouble
# After healing: in-flight datagrams land (MAX_DELAY), stale peers time out (dead_after), a
# node restarted just before finishes listening (listen), views gather (hold), a handoff
# blocked by a peer that was still elsewhere times out at worst (handoff), and a few heartbeat
# rounds carry the new views and acks around.
SETTLE = MAX_DELAY + P.dead_after + P.listen_time + P.hold_time + P.handoff_time + 4 * P.interval

NODE_ACTIONS = ("crash", "restart", "start", "leave")
NET_ACTIONS = ("partition", "heal", "loss", "delay")


@dataclass(frozen=True)
class Scenario:
    nodes: int
    late: frozenset[int]  # not started at t=0
    actions: tuple[tuple[float, str, int, int], ...]  # (when, what, node, argument)
    seed: int


def scenarios(
    min_nodes: int, max_nodes: int, kinds: tuple[str, ...], max_actions: int
) -> st.SearchStrategy[Scenario]:
    @st.composite
    def build(draw: st.DrawFn) -> Scenario:
        n = draw(st.integers(min_nodes, max_nodes))
        late = draw(st.frozensets(st.integers(1, n), max_size=n // 2))
        action = st.tuples(
            st.floats(0.0, CHAOS, allow_nan=False).map(lambda t: round(t, 4)),
            st.sampled_from(kinds),
            st.integers(1, n),
            st.integers(0, 2**16),
        )
        actions = draw(st.lists(action, max_size=max_actions))
        return Scenario(n, late, tuple(sorted(actions)), draw(st.integers(0, 2**32 - 1)))

    return build()


def play(s: Scenario) -> Simulation:
    sim = simulation(s.nodes, seed=s.seed, start=False)
    for n in range(1, s.nodes + 1):
        if n not in s.late:
            sim.start(n)
    for when, what, node, arg in s.actions:
        sim.run_until(when)
        if what == "crash":
            sim.crash(node)
        elif what == "restart":
            sim.restart(node)
        elif what == "start":
            sim.start(node)
        elif what == "leave":
            sim.leave(node)
        elif what == "partition":
            addrs = [sim.nodes[i].address for i in range(1, s.nodes + 1)]
            rng = random.Random(arg)
            groups: list[list[str]] = [[] for _ in range(rng.randint(2, 3))]
            for a in addrs:
                rng.choice(groups).append(a)
            sim.network.partition(groups)
        elif what == "heal":
            sim.network.heal()
        elif what == "loss":
            sim.network.set_loss((0.0, 0.1, 0.3, 0.6)[arg % 4])
        elif what == "delay":
            sim.network.set_delay(0.0, (0.001, 0.02, 0.08, MAX_DELAY)[arg % 4])
    sim.run_until(CHAOS)
    return sim


def heal_and_settle(sim: Simulation) -> None:
    sim.network.heal()
    sim.network.set_loss(0.0)
    sim.network.set_delay(0.0002, 0.001)
    sim.run_until(CHAOS + SETTLE)


@settings(max_examples=10, deadline=None)
@given(scenarios(3, 16, NODE_ACTIONS + NET_ACTIONS, 10))
def test_converges_after_chaos(s: Scenario) -> None:
    sim = play(s)
    heal_and_settle(sim)
    assert sim.problems() == []


@settings(max_examples=2, deadline=None)
@given(scenarios(33, 64, NODE_ACTIONS + NET_ACTIONS, 6))
def test_converges_after_chaos_large(s: Scenario) -> None:
    sim = play(s)
    heal_and_settle(sim)
    assert sim.problems() == []


@settings(max_examples=10, deadline=None)
@given(scenarios(3, 12, NODE_ACTIONS, 8))
def test_healthy_network_never_two_owners(s: Scenario) -> None:
    """No loss, no partition, sub-millisecond delays: joins, leaves, crashes and restarts never
    make two nodes accept the same bucket, not even for an instant."""
    sim = play(s)
    heal_and_settle(sim)
    assert sim.problems() == []
    assert sim.close_overlaps() == []


def test_sixty_four_nodes_crash_and_rejoin() -> None:
    sim = simulation(64)
    ready = P.listen_time + P.hold_time + 2 * P.interval
    sim.run_until(ready)
    assert sim.problems() == []
    for n in (5, 17, 40):
        sim.crash(n)
    sim.run_until(ready + P.dead_after + P.hold_time + 0.01)  # failover within the budget
    assert sim.problems() == []
    sim.start(17)
    sim.run_until(sim.clock.now() + ready + 2 * P.interval)
    assert sim.problems() == []
    assert sim.close_overlaps() == []


def test_overlap_bounded_by_handoff_timeout_under_partition() -> None:
    """Partitioned halves both serve everything (unavoidable), and after healing the double
    ownership ends within the settling time."""
    sim = simulation(4)
    sim.run_until(0.5)
    a = [sim.nodes[1].address, sim.nodes[2].address]
    b = [sim.nodes[3].address, sim.nodes[4].address]
    sim.network.partition([a, b])
    sim.run_until(1.5)
    sim.network.heal()
    healed = sim.clock.now()
    sim.run_until(healed + SETTLE)
    assert sim.problems() == []
    overlaps = sim.close_overlaps()
    assert overlaps, "both halves should have served during the partition"
    assert max(o.end for o in overlaps) <= healed + P.handoff_time + P.hold_time + P.interval
