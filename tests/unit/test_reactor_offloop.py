"""What the agent's loop no longer waits for: status replies that read the kernel, the flow
snapshot a move needs, flow counts asked for by status requests."""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import replace

import pytest

from clusterip import config
from clusterip.flows import FakeFlows
from clusterip.reactor.control import ControlServer, Later, request
from clusterip.reactor.flowwatch import SNAPSHOT_EVERY, FlowWatcher


def cfg() -> config.VipConfig:
    c = config.build(vip="198.18.0.100", interface="eth0", total_nodes=1)
    return replace(c, total_nodes=4096)


@pytest.mark.skipif(os.geteuid() != 0, reason="the control socket serves root peers only")
def test_a_later_reply_is_computed_off_the_loop() -> None:
    name = f"\0clusterip-test-{os.getpid()}"
    server = ControlServer(name)
    server.open()
    release = threading.Event()

    def slow() -> dict[str, object]:
        release.wait(5)
        return {"ok": True}

    replies: list[dict[str, object]] = []
    client = threading.Thread(target=lambda: replies.append(request("status", name, 5)))
    client.start()
    try:
        ready, _, _ = select.select([server.fileno()], [], [], 5)
        assert ready  # the client connected
        began = time.monotonic()
        server.serve_one(lambda _req: Later(slow))
        assert time.monotonic() - began < 0.5  # back to the loop at once
        time.sleep(0.1)
        assert not replies  # the reply is still being computed, in its own thread
        release.set()
        client.join(5)
        assert replies == [{"ok": True}]
    finally:
        release.set()
        server.close()


def test_flow_watcher_snapshots_in_its_thread_and_status_measures_at_most_once_a_second() -> None:
    calls: list[float] = []

    class Counting(FakeFlows):
        def flows(self, c: config.VipConfig, modulus: int) -> list[tuple[str, int, int]]:
            calls.append(time.monotonic())
            return super().flows(c, modulus)

    snaps: list[float] = []
    w = FlowWatcher(Counting({1: 2}), [cfg()], 4096, every=0.05, clock=time.monotonic)
    w.active = False
    w.snappers = {"198.18.0.100": lambda: snaps.append(time.monotonic()) or "snapshot"}
    w.start()
    try:
        deadline = time.monotonic() + 2
        while w.snapshot("198.18.0.100") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.snapshot("198.18.0.100") == "snapshot" and len(snaps) == 1
        assert not calls  # inactive: the thread counts nothing
        w.fresh(1.0)
        w.fresh(1.0)  # a second status request within the second: no second count
        assert len(calls) == 1
        assert w.latest("198.18.0.100") is not None
    finally:
        w.stop()
    assert SNAPSHOT_EVERY < 10.0  # well inside the datapath's SNAPSHOT_MAX_AGE
