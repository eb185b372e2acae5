"""What the agent tells: its log lines for the core's events, and `clusterip status`.

Status is built in two parts: what the pure nodes know, in the loop (cheap, consistent), and
what the kernel holds (flow counts, packet counters), in a thread of its own
(clusterip.reactor.control.Later): reading sockets and nft sets takes milliseconds to tens of
them on a busy node, which the heartbeat loop must not wait for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from clusterip.core.events import (
    Event,
    Notice,
    OwnershipChanged,
    PeerContinued,
    PeerDown,
    PeerUp,
    StateChanged,
)
from clusterip.reactor.commands import Commands
from clusterip.reactor.control import Later
from clusterip.reactor.flowwatch import FlowWatcher
from clusterip.reactor.notify import Notifier
from clusterip.reactor.settings import AgentSettings
from clusterip.reactor.unit import Unit
from clusterip.reactor.web import History
from clusterip.xdp.agentside import AgentXdp


class Agent(Protocol):
    """What the reports read (clusterip.reactor.agent.Agent)."""

    @property
    def units(self) -> Sequence[Unit]: ...
    @property
    def settings(self) -> AgentSettings: ...
    @property
    def started(self) -> float: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def commands(self) -> Commands: ...
    @property
    def watcher(self) -> FlowWatcher: ...
    @property
    def history(self) -> History: ...
    @property
    def notify(self) -> Notifier: ...
    @property
    def xdp(self) -> AgentXdp | None: ...

    def xdp_report(self, unit: Unit) -> dict[str, Any]: ...


log = logging.getLogger("clusterip.agent")
STATUS_FLOWS_AGE = 1.0  # status shows flow counts at most this old (measured if older)
LEVELS = {"info": logging.INFO, "warning": logging.WARNING}


def log_events(agent: Agent, vip: str, events: Sequence[Event]) -> None:
    """One log line per event (and the notify command on ownership changes)."""
    for event in events:
        if isinstance(event, OwnershipChanged):
            log.info(
                "%s: %d buckets now (+%d, %d from dead nodes, -%d)",
                vip,
                len(event.owned),
                len(event.gained),
                len(event.orphaned),
                len(event.lost),
            )
            owned = sorted(event.owned)
            agent.notify("owned" if owned else "none", vip, owned, agent.settings.buckets)
        elif isinstance(event, Notice):
            log.log(LEVELS.get(event.level, logging.ERROR), "%s: %s", vip, event.text)
        elif isinstance(event, StateChanged):
            log.warning("%s: %s -> %s (%s)", vip, event.old.name, event.new.name, event.reason)
        elif isinstance(event, PeerUp):
            log.info("%s: node %d up at %s", vip, event.node_id, event.address)
        elif isinstance(event, PeerContinued):
            log.info("%s: node %d restarted, continued by its successor", vip, event.node_id)
        elif isinstance(event, PeerDown):
            log.warning("%s: node %d down (%s)", vip, event.node_id, event.reason)


def status_later(agent: Agent) -> Later:
    """The nodes' part of the status now; the kernel's part when the `Later` is computed."""
    now = agent.clock()
    wall = time.time()
    docs = [(unit, unit.node.status(now)) for unit in agent.units]
    for unit, doc in docs:
        # A guard window's end as a time, beside the seconds left: what `status` shows.
        left = doc.get("guard_until")
        doc["guard_ends_at"] = round(wall + left, 3) if left is not None else None
        if doc["weight"] == 0 and not agent.commands.draining and doc["state"] == "draining":
            doc["reason"] = "weight 0: owns no bucket (not drained: `clusterip weight N`)"
        end = max(unit.node.handover.draining.values(), default=None)
        doc["drain_until"] = (
            None if end is None else round(max(0.0, end + unit.node.drain_timeout - now), 3)
        )
    measure = not agent.watcher.active
    head = _head(agent, now)

    def kernel() -> dict[str, Any]:
        if measure:
            agent.watcher.fresh(STATUS_FLOWS_AGE)
        for unit, doc in docs:
            latest = agent.watcher.latest(unit.vip) or (0.0, {})
            doc["flows"] = {str(b): n for b, n in sorted(latest[1].items())}
            doc["last_apply_ms"] = round(unit.datapath.stats.last_seconds * 1000, 3)
            doc["changes"] = unit.datapath.stats.changes
            # this node's flows written into `mine` ahead of moves (0: each move writes its own)
            doc["flow_writes_ahead"] = unit.datapath.stats.ahead_writes
            doc["counters"] = unit.datapath.counters()
            doc["xdp"] = agent.xdp_report(unit)
        return {
            **head,
            "vips": [doc for _unit, doc in docs],
            "events": agent.history.recent(),
            "time": time.time(),
        }

    return Later(kernel)


def _head(agent: Agent, now: float) -> dict[str, Any]:
    units = agent.units
    weight = units[0].node.membership.weight if units else 0
    s = agent.settings
    return {
        "agent": {
            "node_id": s.node_id,
            "weight": weight,
            "uptime_s": round(now - agent.started, 1),
            "interval_ms": round(s.interval * 1000),
            "detection_ms": round(s.detection_time * 1000),
            "restart_grace_s": s.restart_grace,
            "draining": agent.commands.draining,
            "weight_zero": bool(units) and weight == 0,
            "pid": os.getpid(),
            "xdp": agent.xdp.describe() if agent.xdp is not None else "off",
        },
    }
