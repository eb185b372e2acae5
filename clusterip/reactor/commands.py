"""The agent's control requests (`clusterip status`, `drain`, `resume`, `weight`, `stop`):
one line in, one JSON document out. Parsing and checking here; the decisions in the nodes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from clusterip.core import defaults
from clusterip.reactor.control import Later
from clusterip.reactor.settings import AgentSettings
from clusterip.reactor.unit import Unit


class Controlled(Protocol):
    """What the requests act on (clusterip.reactor.agent.Agent)."""

    stopping: str | None

    @property
    def units(self) -> Sequence[Unit]: ...

    @property
    def settings(self) -> AgentSettings: ...

    def status_later(self) -> Later: ...


log = logging.getLogger("clusterip.agent")
ALLOWED = "status, drain [SECONDS], resume [--force], weight W, stop [--leave]"


class Commands:
    def __init__(self, agent: Controlled) -> None:
        self.agent = agent
        self.draining = False

    def handle(self, request: str) -> dict[str, Any]:
        """The reply to `request`, computed now."""
        reply = self.handle_later(request)
        return reply.compute() if isinstance(reply, Later) else reply

    def handle_later(self, request: str) -> dict[str, Any] | Later:
        """The reply, or (status) its part that reads the kernel as a `Later`: the loop
        decides now, the kernel is read in a thread of its own."""
        words = request.split()
        command = words[0] if words else "status"
        args = words[1:]
        if command == "status":
            return self.agent.status_later()
        if command == "drain":
            return self._drain(args)
        if command == "resume":
            return self._resume(args)
        if command == "weight":
            return self._weight(args)
        if command == "stop":
            return self._stop(args)
        return {"error": f"unknown request {command!r}: allowed are {ALLOWED}"}

    def _drain(self, args: list[str]) -> dict[str, Any]:
        timeout = None
        if args:
            try:
                timeout = float(args[0])
            except ValueError:
                return {"error": f"bad drain timeout {args[0]!r}: expected seconds"}
            if not 0 <= timeout <= 86400:
                return {"error": f"bad drain timeout {args[0]!r}: expected 0 to 86400 s"}
        for unit in self.agent.units:
            unit.node.drain(True, timeout)
        self.draining = True
        log.warning("draining: no new connections; established ones stay until they end")
        return {"ok": True, "draining": True}

    def _resume(self, args: list[str]) -> dict[str, Any]:
        if args and args != ["--force"]:
            return {"error": f"bad resume argument {' '.join(args)!r}: expected --force or none"}
        for unit in self.agent.units:
            unit.node.drain(False)
            if args:
                unit.node.force_quorum()
        self.draining = False
        if args:
            log.warning("resumed by force: members this node cannot reach are taken to be gone")
        log.warning("resumed: taking new connections again")
        return {"ok": True, "draining": False}

    def _weight(self, args: list[str]) -> dict[str, Any]:
        top = defaults.MAX_WEIGHT
        try:
            weight = int(args[0])
        except (IndexError, ValueError):
            return {"error": f"bad weight {' '.join(args)!r}: expected a number from 0 to {top}"}
        if not 0 <= weight <= top:
            return {"error": f"bad weight {weight}: expected a number from 0 to {top}"}
        for unit in self.agent.units:
            unit.node.set_weight(weight)
        log.warning("weight is now %d", weight)
        return {"ok": True, "weight": weight}

    def _stop(self, args: list[str]) -> dict[str, Any]:
        if args and args != ["--leave"]:
            return {"error": f"bad stop argument {' '.join(args)!r}: expected --leave or none"}
        leave = bool(args) or self.agent.settings.restart_grace == 0
        self.agent.stopping = "leave" if leave else "restart"
        return {"ok": True, "stopping": self.agent.stopping}
