"""The agent's reactor with in-memory fakes: transport hub, firewall, link, flows, clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clusterip import config
from clusterip.config import ConfigError
from clusterip.core.handover import ORPHAN_RESET_DELAY
from clusterip.flows import FakeFlows
from clusterip.link import FakeLink
from clusterip.nft import RecordingFirewall
from clusterip.reactor.agent import Agent
from clusterip.reactor.keyfile import read_key
from clusterip.reactor.settings import AgentSettings, build_settings
from clusterip.reactor.transport import MemoryHub

KEY = b"0123456789abcdef0123456789abcdef"


def cfg() -> config.VipConfig:
    c = config.build(vip="198.18.0.100", interface="eth0", total_nodes=1)
    return replace(c, total_nodes=4096)


def test_key_file(tmp_path: Path) -> None:
    p = tmp_path / "k"
    p.write_bytes(b"x" * 16 + b" \n\n")
    assert read_key(str(p)) == b"x" * 16
    p.write_bytes(b"short \n")
    with pytest.raises(ConfigError, match="5 bytes of key, at least 16"):
        read_key(str(p))
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_key(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"node_id": 0}, "bad node id '0'"),
        ({"node_id": 256}, "bad node id '256'"),
        ({"weight": -1}, "bad weight"),
        ({"peers": ["198.18.0.300"]}, "bad peer address"),
        ({"group": "198.18.0.1"}, "must be a multicast"),
        ({"tolerance": 1}, "bad tolerance"),
        ({"node_id": None}, "missing --node-id"),
    ],
)
def test_settings_errors(kw: dict[str, object], msg: str) -> None:
    args: dict[str, object] = {"node_id": 1, "key_file": "/k"}
    args.update(kw)
    with pytest.raises(ConfigError, match=msg):
        build_settings(**args)


class Node:
    def __init__(self, hub: MemoryHub, k: int, clock: list[float]) -> None:
        self.fw = RecordingFirewall()
        settings = AgentSettings(node_id=k, key_file="-", realtime=0)
        self.agent = Agent(
            [cfg()],
            settings,
            KEY,
            firewall=self.fw,
            link=FakeLink(),
            flows=FakeFlows(dict.fromkeys(range(1, 4097), 1)),  # a live flow in every bucket
            transport=hub.transport(f"198.18.0.{k}"),
            clock=lambda: clock[0],
        )
        self.agent.units[0].datapath.start()

    @property
    def owned(self) -> frozenset[int]:
        return self.agent.units[0].datapath.current.owned


def run_for(nodes: list[Node], clock: list[float], seconds: float, step: float = 0.01) -> None:
    end = clock[0] + seconds
    while clock[0] < end:
        clock[0] += step
        for n in nodes:
            for data, src in n.agent.transport.recv():
                n.agent.units[0].membership.receive(data, src, clock[0])
            n.agent.step(clock[0])


def test_agents_converge_fail_over_and_rejoin_in_memory() -> None:
    hub, clock = MemoryHub(), [1000.0]
    nodes = [Node(hub, k, clock) for k in (1, 2, 3)]
    run_for(nodes, clock, 2.0)
    owned = [n.owned for n in nodes]
    assert sum(len(o) for o in owned) == 4096 and set().union(*owned) == set(range(1, 4097))
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    # Node 3 goes silent: within the detection time its buckets are spread over 1 and 2.
    hub.cut.add("198.18.0.3")
    dead = set(nodes[2].owned)
    run_for(nodes[:2], clock, 0.3)
    a, b = nodes[0].owned, nodes[1].owned
    assert a | b == set(range(1, 4097)) and not a & b
    assert dead & a and dead & b  # spread, not dumped on one survivor
    # The dead node's buckets get their RST treatment only after the grace delay.
    taken = dead & a
    assert not nodes[0].agent.units[0].datapath.current.orphaned & taken
    run_for(nodes[:2], clock, ORPHAN_RESET_DELAY + 0.1)
    assert taken <= nodes[0].agent.units[0].datapath.current.orphaned
    # The survivors' own moves between them are small: only the dead node's share moved.
    assert len(a) == 2048 and len(b) == 2048
    # Node 3 comes back (a new incarnation): it gets a third back, from live nodes, and they
    # keep the established flows of what they hand over (draining).
    hub.cut.clear()
    nodes[2] = Node(hub, 3, clock)
    run_for(nodes, clock, 1.5)
    owned = [n.owned for n in nodes]
    assert sum(len(o) for o in owned) == 4096 and max(map(len, owned)) - min(map(len, owned)) <= 1
    lost = set(nodes[0].agent.units[0].handover.draining)
    assert lost and lost <= nodes[2].owned
    # Once the flows are gone, draining ends at the next check.
    nodes[0].agent.watcher.source = FakeFlows()
    run_for(nodes, clock, 1.2)
    assert not nodes[0].agent.units[0].handover.draining


def test_agent_config_file_and_notify(tmp_path: Path) -> None:
    import sys
    import time

    from clusterip.cli.options import configs_from
    from clusterip.reactor.notify import Notifier
    from clusterip.reactor.settings import settings_from_toml

    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nnode_id = 3\nkey_file = "/etc/k"\nweight = 2\ninterval_ms = 40\n'
        '[[vip]]\nvip = "198.18.0.100"\ninterface = "eth0"\nprotocol = "tcp"\ndport = 80\n'
    )
    (cfg_,) = configs_from({"config_file": str(path)}, known_extra=("agent",), agent=True)
    assert cfg_.dports == (80,) and cfg_.protocol == "tcp"
    s = settings_from_toml(str(path), {"weight": "5"})  # a flag wins over the file
    assert (s.node_id, s.weight, s.interval, s.tolerance) == (3, 5, 0.04, 5)
    path.write_text('[agent]\nnode_id = 3\nkey_file = "/k"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key 'bogus' in \\[agent\\]"):
        settings_from_toml(str(path), {})
    # --notify: CMD EVENT VIP OWNED_COUNT BUCKETS, as an argv (no shell).
    out = tmp_path / "events"
    script = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + chr(10))"
    note = Notifier(f"{sys.executable} -c {shlex_quote(script)}")
    note("owned", "198.18.0.100", [1, 2, 3], 4096)
    deadline = time.time() + 10
    while time.time() < deadline and not out.exists():
        time.sleep(0.05)
    for p in note._running:
        p.wait(timeout=10)
    assert out.read_text() == "owned 198.18.0.100 3 4096\n"


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_metrics_registry_of_its_own() -> None:
    from prometheus_client import generate_latest

    from clusterip.reactor.metrics import Metrics

    m = Metrics()
    m.update(
        "198.18.0.100",
        owned=1366,
        draining=2,
        members=3,
        passive=False,
        rejected={"bad_mac": 4},
        apply_seconds=0.003,
    )
    text = generate_latest(m.registry).decode()
    assert 'clusterip_buckets_owned{vip="198.18.0.100"} 1366.0' in text
    assert 'clusterip_rejected_messages{cause="bad_mac",vip="198.18.0.100"} 4.0' in text
    assert Metrics().registry is not m.registry  # no global state
