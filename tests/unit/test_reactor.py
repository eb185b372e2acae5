"""The agent's reactor with in-memory fakes: transport hub, firewall, link, flows, clock."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from clusterip import config
from clusterip.config import ConfigError
from clusterip.core.bus import FakeClock, MemoryNetwork
from clusterip.core.handover import ORPHAN_RESET_DELAY
from clusterip.core.ownership import Ownership
from clusterip.core.wire import unpack
from clusterip.flows import FakeFlows, FakeSockets
from clusterip.link import FakeLink
from clusterip.nft import RecordingFirewall
from clusterip.reactor.agent import Agent
from clusterip.reactor.keyfile import read_key
from clusterip.reactor.settings import AgentSettings, build_settings
from clusterip.sdnotify import Notifier as SystemdNotifier

KEY = b"0123456789abcdef0123456789abcdef"


def cfg() -> config.VipConfig:
    c = config.build(vip="198.18.0.100", interface="eth0", total_nodes=1)
    return replace(c, total_nodes=4096)


def test_key_file(tmp_path: Path) -> None:
    p = tmp_path / "k"
    p.write_bytes(b"x" * 16 + b" \n\n")
    p.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others \\(mode 0644\\)"):
        read_key(str(p))  # anyone who reads it could forge heartbeats: as ssh, refuse
    assert read_key(str(p), allow_readable=True) == b"x" * 16
    p.chmod(0o600)
    assert read_key(str(p)) == b"x" * 16
    p.write_bytes(b"short \n")
    p.chmod(0o600)
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
        # once 1..65535 here and a plain ValueError (a traceback) from the core's 16384
        ({"buckets": 20000}, "bad bucket count '20000': expected a number from 1 to 16384"),
        ({"restart_grace": -1}, "bad restart grace"),
        ({"allow_readable_key": "maybe"}, "expected true or false"),
    ],
)
def test_settings_errors(kw: dict[str, object], msg: str) -> None:
    args: dict[str, object] = {"node_id": 1, "key_file": "/k"}
    args.update(kw)
    with pytest.raises(ConfigError, match=msg):
        build_settings(**args)


class Node:
    """One agent as the loop runs it, on the in-memory network, with fake kernel parts."""

    def __init__(self, net: MemoryNetwork, k: int, clock: FakeClock, **over: object) -> None:
        self.fw = RecordingFirewall()
        settings = replace(
            AgentSettings(node_id=k, key_file="-", realtime=0),
            **over,  # type: ignore[arg-type]
        )
        self.agent = Agent(
            [cfg()],
            settings,
            KEY,
            firewall=self.fw,
            link=FakeLink(),
            flows=FakeFlows(dict.fromkeys(range(1, 4097), 1)),  # a live flow in every bucket
            transport=net.attach(f"198.18.0.{k}"),
            sockets=FakeSockets(),
            clock=clock.now,
            systemd=SystemdNotifier(None),
        )
        self.agent._start_units(self.agent.configs)

    @property
    def owned(self) -> frozenset[int]:
        return self.agent.units[0].datapath.current.owned

    @property
    def current(self) -> Ownership:
        return self.agent.units[0].datapath.current


def run_for(nodes: list[Node], clock: FakeClock, seconds: float, step: float = 0.01) -> None:
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(step)
        for n in nodes:
            n.agent.step(clock.now())


def net_and_clock() -> tuple[MemoryNetwork, FakeClock]:
    clock = FakeClock(1000.0)
    return MemoryNetwork(clock, random.Random(1)), clock


def test_agents_converge_fail_over_and_rejoin_in_memory() -> None:
    net, clock = net_and_clock()
    nodes = [Node(net, k, clock) for k in (1, 2, 3)]
    run_for(nodes, clock, 2.0)
    owned = [n.owned for n in nodes]
    assert sum(len(o) for o in owned) == 4096 and set().union(*owned) == set(range(1, 4097))
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    # Node 3 goes silent: within the detection time its buckets are spread over 1 and 2.
    net.detach("198.18.0.3")
    dead = set(nodes[2].owned)
    run_for(nodes[:2], clock, 0.3)
    a, b = nodes[0].owned, nodes[1].owned
    assert a | b == set(range(1, 4097)) and not a & b
    assert dead & a and dead & b  # spread, not dumped on one survivor
    # The dead node's buckets: mid-flow packets without a flow here are dropped (guarded)
    # until the reset delay, then answered (RST) by the stack.
    taken = dead & a
    assert taken <= nodes[0].current.guarded
    run_for(nodes[:2], clock, ORPHAN_RESET_DELAY + 0.1)
    assert not taken & nodes[0].current.guarded and taken <= nodes[0].current.orphaned
    assert len(a) == 2048 and len(b) == 2048  # only the dead node's share moved
    # Node 3 comes back (a new incarnation): it gets a third back, from live nodes, and they
    # keep the established flows of what they hand over (draining).
    nodes[2] = Node(net, 3, clock)
    run_for(nodes, clock, 1.5)
    owned = [n.owned for n in nodes]
    assert sum(len(o) for o in owned) == 4096 and max(map(len, owned)) - min(map(len, owned)) <= 1
    lost = set(nodes[0].agent.units[0].node.handover.draining)
    assert lost and lost <= nodes[2].owned
    # Once the flows are gone, draining ends after the next count.
    nodes[0].agent.watcher.source = FakeFlows()
    run_for(nodes, clock, 1.2)
    assert not nodes[0].agent.units[0].node.handover.draining


def test_control_requests() -> None:
    net, clock = net_and_clock()
    node = Node(net, 1, clock)
    run_for([node], clock, 1.0)
    handle = node.agent.commands.handle
    assert len(node.owned) == 4096
    assert handle("weight 2000")["error"].startswith("bad weight 2000")
    assert handle("drain x")["error"].startswith("bad drain timeout")
    assert handle("bogus")["error"].startswith("unknown request 'bogus'")
    assert handle("drain") == {"ok": True, "draining": True}
    run_for([node], clock, 0.2)
    assert not node.owned
    doc = handle("status")
    (vip,) = doc["vips"]
    assert vip["state"] == "draining" and doc["agent"]["draining"] is True
    assert "total_nodes" not in vip and vip["buckets"] == 4096
    assert handle("resume") == {"ok": True, "draining": False}
    run_for([node], clock, 0.2)
    assert len(node.owned) == 4096
    assert handle("stop") == {"ok": True, "stopping": "restart"}
    assert node.agent.stopping == "restart"


def test_a_planned_stop_arms_the_lease_and_sends_restart() -> None:
    net, clock = net_and_clock()
    node = Node(net, 1, clock, restart_grace=4.0)
    spy = net.attach("198.18.0.99")
    run_for([node], clock, 1.0)
    node.agent.stopping = "restart"
    assert node.agent._stop() is True  # the datapath stays for a successor
    assert "lease" in node.fw.scripts[-1] and "timeout 4000ms" in node.fw.scripts[-1]
    clock.advance(0.01)
    got = []
    while (d := spy.recv()) is not None:
        got.append(unpack(d[0], KEY))
    assert [type(m).__name__ for m in got][-3:] == ["Restart"] * 3


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


def test_a_second_agent_in_the_namespace_gets_one_line() -> None:
    """Two agents in one network namespace: the second stops at its control socket, with a
    ConfigError (one line, exit 2 from the CLI), before anything in the kernel changes."""
    from clusterip.reactor.control import AgentRunning, ControlServer

    name = f"\0clusterip-test-{random.getrandbits(48):x}"
    first, second = ControlServer(name), ControlServer(name)
    first.open()
    try:
        with pytest.raises(AgentRunning, match="another agent already runs"):
            second.open()
        assert isinstance(AgentRunning("x"), ConfigError)
    finally:
        first.close()


def test_flow_watcher_never_measures_twice_at_once() -> None:
    """The worker thread and the loop (a drain's fresh count) share one flow source."""
    import threading
    import time as _time

    from clusterip.reactor.flowwatch import FlowWatcher

    class Source:
        inside = 0
        overlaps = 0

        def flows(self, cfg_: config.VipConfig, modulus: int) -> list[tuple[str, int, int]]:
            self.inside += 1
            if self.inside > 1:
                self.overlaps += 1
            _time.sleep(0.002)
            self.inside -= 1
            return [("198.18.1.1", 1000, 1)]

        def per_bucket(self, cfg_: config.VipConfig, modulus: int) -> dict[int, int]:
            return {1: 1}

    src = Source()
    watcher = FlowWatcher(src, [cfg()], 4096, 0.0, _time.monotonic)
    threads = [
        threading.Thread(target=lambda: [watcher.measure_now(cfg()) for _ in range(20)])
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert src.overlaps == 0
    report = watcher.latest_flows("198.18.0.100")
    assert report is not None and report[1] == [("198.18.1.1", 1000, 1)]
