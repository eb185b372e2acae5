"""The agent's datapath with fakes: start clean, adopt a suspended predecessor, suspend, stop.

The same life cycle against the real kernel: tests/lab/test_restart.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from clusterip import config
from clusterip.config import ConfigError
from clusterip.core.ownership import Ownership
from clusterip.flows import FakeSockets
from clusterip.link import FakeLink
from clusterip.nft import RecordingFirewall
from clusterip.reactor.datapath import AgentDatapath
from clusterip.sockdiag import ESTABLISHED, TIME_WAIT, Sock

STATE = Path(__file__).parent.parent / "golden" / "state"
VIP = "198.18.0.100"


def cfg(**kw: Any) -> config.VipConfig:
    c = config.build(vip=VIP, interface="eth0", total_nodes=1, protocol="all", **kw)
    return replace(c, total_nodes=16)


def objects(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((STATE / name).read_text())["nftables"]
    return data


def datapath(fw: RecordingFirewall, link: FakeLink | None = None, **kw: Any) -> AgentDatapath:
    sockets = FakeSockets(
        {VIP: [Sock(f"198.18.1.{i}", 40000 + i, 80, ESTABLISHED) for i in range(1, 40)]}
    )
    return AgentDatapath(cfg(**kw), 16, fw, link or FakeLink(), sockets, flow_timeout=300)


def test_clean_start_apply_stop() -> None:
    fw, link = RecordingFirewall(), FakeLink()
    dp = datapath(fw, link)
    assert dp.start() is None
    (script,) = fw.scripts
    assert script.index("delete table inet") < script.index(
        "add table inet clusterip_198_18_0_100 {"
    )
    assert "flags owner" in script and "set lease" in script and "add element" not in script
    assert link.addresses["eth0"] == {(VIP, 32)} and link.mcast["eth0"] == ["03:bf:c6:12:00:64"]
    assert link.garps
    assert dp.apply(Ownership.of(16, [1, 2, 3]))
    assert fw.scripts[-1].startswith("add element netdev") and "mine" not in fw.scripts[-1]
    assert not dp.apply(Ownership.of(16, [1, 2, 3]))  # nothing to do: no transaction
    assert len(fw.scripts) == 2
    # Buckets start to move: this node's flows of them go in, in the same transaction.
    assert dp.apply(Ownership.of(16, [1], draining=[2], guarded=[1]))
    move = fw.scripts[-1]
    assert move.startswith("flush set netdev clusterip_198_18_0_100 mine\n")
    assert "2 : jump keep" in move and "1 : jump guard" in move
    assert dp.stats.snapshots == 1 and dp.stats.last_snapshot_flows == 39
    # A bucket leaves the transition: no new snapshot.
    assert dp.apply(Ownership.of(16, [1], draining=[2]))
    assert "mine" not in fw.scripts[-1] and dp.stats.snapshots == 1
    dp.stop()
    drop, remove = fw.scripts[-2:]
    assert drop == "flush map netdev clusterip_198_18_0_100 buckets\n"
    assert "add table inet clusterip_198_18_0_100 { flags owner; }" in remove
    assert link.addresses["eth0"] == set() and link.mcast["eth0"] == []


def test_a_running_agent_is_not_replaced() -> None:
    fw = RecordingFirewall(objects("agent-live.json"))
    with pytest.raises(ConfigError, match="already served by a running agent"):
        datapath(fw).start()
    assert fw.scripts == []


def test_adopt_a_suspended_predecessor() -> None:
    fw, link = RecordingFirewall(objects("agent-suspended.json")), FakeLink()
    link.addresses["eth0"].add((VIP, 32))  # the predecessor added it (addr=1) and left it
    link.mcast["eth0"].append("03:bf:c6:12:00:64")
    dp = datapath(fw, link)
    adopted = dp.start(node_id=7)
    assert adopted is not None
    assert adopted.lease.node_id == 7 and adopted.lease.incarnation == 1767225600000000
    assert adopted.ownership.owned == {1, 2, 3, 4} and adopted.ownership.draining == {5}
    assert adopted.ownership.kept == {("198.18.1.9", 4242)}
    (script,) = fw.scripts  # one transaction: the live table, the lease gone; sets untouched
    assert "flags owner" in script and "delete element netdev" in script
    assert "flush" not in script and "delete table" not in script
    assert dp.current == adopted.ownership and dp.added_addr
    assert link.mcast["eth0"] == ["03:bf:c6:12:00:64"]  # not added twice
    # The next change is incremental from what the kernel holds.
    assert dp.apply(replace(adopted.ownership, draining=frozenset()))
    assert fw.scripts[-1] == "delete element netdev clusterip_198_18_0_100 buckets { 5 }\n"


def test_no_adoption_across_settings_node_ids_or_an_expired_lease() -> None:
    for kw, node_id, refuse in (
        ({"seed": "1234"}, 7, {}),  # another configuration
        ({}, 8, {}),  # another node's lease
        ({}, 7, {"delete element": "Error: No such file or directory"}),  # expired meanwhile
    ):
        fw = RecordingFirewall(objects("agent-suspended.json"))
        fw.refuse = refuse
        assert datapath(fw, **kw).start(node_id=node_id) is None, kw
        clean = fw.scripts[-1]
        assert "delete table netdev clusterip_198_18_0_100" in clean and "set lease" in clean


def test_suspend_leaves_a_lease_and_nothing_else() -> None:
    fw, link = RecordingFirewall(), FakeLink()
    dp = datapath(fw, link)
    dp.start()
    dp.apply(Ownership.of(16, [1, 2]))
    dp.suspend(2.5, node_id=3, incarnation=99)
    lease = fw.scripts[-1]
    assert lease.startswith("flush set netdev clusterip_198_18_0_100 lease\n")
    assert "198.18.0.100 timeout 2500ms" in lease and 'comment "node=3 inc=99 until=' in lease
    count = len(fw.scripts)
    dp.stop()  # the process exits next: nothing is removed
    assert len(fw.scripts) == count and link.addresses["eth0"] == {(VIP, 32)}
    with pytest.raises(RuntimeError):
        dp.apply(Ownership.of(16, [1]))


def test_time_wait_flows_are_left_out_of_mine() -> None:
    """A closed flow is over: a busy service's TIME_WAIT sockets would make every move's
    transaction large (and the loop late for its heartbeats)."""
    socks = [Sock("198.18.1.1", 40001, 80, TIME_WAIT), Sock("198.18.1.2", 40002, 80, ESTABLISHED)]
    fw = RecordingFirewall()
    dp = AgentDatapath(cfg(), 16, fw, FakeLink(), FakeSockets({VIP: socks}))
    dp.start()
    dp.apply(Ownership.of(16, range(1, 17)))
    dp.apply(Ownership.of(16, range(1, 17)).release(7))
    script = fw.scripts[-1]
    assert "add element netdev clusterip_198_18_0_100 mine { 198.18.1.2 . 40002 . 80 }" in script
    assert "40001" not in script


def test_a_snapshot_taken_elsewhere_is_used_while_fresh() -> None:
    fw = RecordingFirewall()
    sockets = FakeSockets({VIP: [Sock("198.18.1.1", 40001, 80, ESTABLISHED)]})
    dp = AgentDatapath(cfg(), 16, fw, FakeLink(), sockets)
    dp.start()
    every = Ownership.of(16, range(1, 17))
    dp.apply(every)
    taken = dp.snapshot()  # e.g. in a worker thread, just before the change
    sockets.table[VIP] = []
    dp.apply(every.release(1), flows=taken)
    assert "198.18.1.1 . 40001 . 80" in fw.scripts[-1] and sockets.calls == 1
    stale = replace(taken, taken=taken.taken - 60)
    dp.apply(every.release(1).release(2), flows=stale)  # too old: a fresh one is taken
    assert "198.18.1.1" not in fw.scripts[-1] and sockets.calls == 2


def ahead_datapath() -> tuple[AgentDatapath, RecordingFirewall, RecordingFirewall, FakeSockets]:
    fw, ahead = RecordingFirewall(), RecordingFirewall()
    sockets = FakeSockets({VIP: [Sock("198.18.1.1", 40001, 80, ESTABLISHED)]})
    dp = AgentDatapath(cfg(), 16, fw, FakeLink(), sockets, flow_timeout=300, ahead=ahead)
    dp.start()
    return dp, fw, ahead, sockets


def test_flows_written_ahead_keep_the_move_small() -> None:
    """The watcher's thread writes `mine` through its own socket; a move that starts while
    that snapshot is young carries none (its flows are in the kernel already)."""
    dp, fw, ahead, sockets = ahead_datapath()
    every = Ownership.of(16, range(1, 17))
    dp.apply(every)
    dp.snapshot_ahead()
    (written,) = ahead.scripts
    assert written.startswith("flush set netdev clusterip_198_18_0_100 mine\n")
    assert "198.18.1.1 . 40001 . 80" in written
    calls = sockets.calls
    assert dp.apply(every.release(1))
    assert "mine" not in fw.scripts[-1] and sockets.calls == calls  # no snapshot of its own
    dp.snapshot_ahead()  # the same flows: nothing to write again
    assert len(ahead.scripts) == 1 and dp.ahead_fresh()
    sockets.table[VIP] = [Sock("198.18.1.2", 40002, 80, ESTABLISHED)]
    dp.snapshot_ahead()  # changed: written anew
    assert len(ahead.scripts) == 2 and "198.18.1.2 . 40002 . 80" in ahead.scripts[-1]
    assert dp.stats.ahead_writes == 2


def test_a_stale_or_failed_write_ahead_leaves_the_snapshot_to_the_move() -> None:
    dp, fw, ahead, sockets = ahead_datapath()
    every = Ownership.of(16, range(1, 17))
    dp.apply(every)
    dp.snapshot_ahead()
    dp._ahead_taken -= 60  # as if the thread had stalled for a minute
    assert not dp.ahead_fresh()
    dp.apply(every.release(1))
    assert "mine" in fw.scripts[-1] and "198.18.1.1 . 40001 . 80" in fw.scripts[-1]
    ahead.fail_with = "No such file or directory"  # e.g. the tables went with a stop
    sockets.table[VIP] = [Sock("198.18.1.2", 40002, 80, ESTABLISHED)]  # a write is due
    dp.snapshot_ahead()
    assert not dp.ahead_fresh()
    dp.apply(every.release(1).release(2))
    assert "mine" in fw.scripts[-1]


def test_no_write_ahead_without_its_socket() -> None:
    fw = RecordingFirewall()
    dp = datapath(fw)
    dp.start()
    dp.snapshot_ahead()
    assert not dp.ahead_fresh() and len(fw.scripts) == 1
