"""The agent's reactor: sockets, timers, signals around the pure membership state machine.

One process per node, one Membership per VIP. The loop: receive datagrams, serve the control
socket, send heartbeats when due, tick the state machines, and turn their ownership into the
kernel's ruleset (one nft transaction per change). Buckets lost to a live node keep their
established flows (draining) until none is left (sockets, UDP flows) or the drain timeout
passes; buckets gained from a live node are `guarded` (mid-flow TCP with no socket here is
dropped, not reset); buckets taken from a dead node are `orphaned`, so their stale flows get a
RST at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from clusterip.config import VipConfig
from clusterip.core import defaults
from clusterip.core.assign import assign
from clusterip.core.events import Notice, OwnershipChanged, PeerDown, PeerUp, StateChanged
from clusterip.core.handover import Handover
from clusterip.core.kept import Announcer, KeptBook
from clusterip.core.membership import Membership
from clusterip.core.ownership import Ownership
from clusterip.core.params import Cluster, Params
from clusterip.core.wire import Kept, Malformed, MsgType, Rejected, peek, unpack
from clusterip.flows import FlowSource
from clusterip.link import Link
from clusterip.nft import Firewall
from clusterip.reactor.control import ControlServer
from clusterip.reactor.datapath import AgentDatapath
from clusterip.reactor.flowwatch import FlowWatcher
from clusterip.reactor.metrics import Metrics
from clusterip.reactor.notify import Notifier
from clusterip.reactor.settings import AgentSettings
from clusterip.reactor.transport import Transport, UdpTransport

log = logging.getLogger("clusterip.core")
LEAVE_REPEAT = defaults.LEAVE_REPEAT
FLOW_CHECK_EVERY = defaults.FLOW_CHECK_EVERY


@dataclass
class Unit:
    """One VIP: its membership, its datapath, its flow-keeping bookkeeping."""

    cfg: VipConfig
    membership: Membership
    datapath: AgentDatapath
    handover: Handover
    announcer: Announcer
    kept: KeptBook = field(default_factory=KeptBook)
    kept_applied: frozenset[tuple[str, int]] = frozenset()
    metrics_due: float = 0.0
    last_raw: frozenset[int] | None = None  # the membership's owned set last applied
    failovers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def vip(self) -> str:
        return str(self.cfg.vip)


class Agent:
    def __init__(
        self,
        configs: Sequence[VipConfig],
        settings: AgentSettings,
        key: bytes,
        *,
        firewall: Firewall,
        link: Link,
        flows: FlowSource,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.transport: Transport = transport or UdpTransport(
            configs[0].interface, group=settings.group, port=settings.port, peers=settings.peers
        )
        self.control = ControlServer()
        self.notify = Notifier(settings.notify)
        self.metrics = Metrics()
        self.stopping = False
        self.draining_all = False
        self.drain_timeout: float | None = None
        self.weight = settings.weight
        self.started = clock()
        params = Params(
            buckets=settings.buckets, interval=settings.interval, tolerance=settings.tolerance
        )
        # Incarnations must grow across restarts (an older one is refused as a replay): the
        # wall clock in microseconds does, unless the clock is stepped back.
        incarnation = time.time_ns() // 1000
        now = clock()
        clusters = [Cluster.create(cfg, key, buckets=settings.buckets) for cfg in configs]
        self.units = [
            Unit(
                cfg=cfg,
                membership=Membership(
                    node_id=settings.node_id,
                    weight=settings.weight,
                    incarnation=incarnation,
                    cluster=cluster,
                    now=now,
                    params=params,
                ),
                announcer=Announcer(settings.node_id, incarnation, cluster),
                datapath=AgentDatapath(cfg, settings.buckets, firewall, link),
                handover=Handover(
                    settings.node_id,
                    settings.buckets,
                    settings.drain_timeout + settings.detection_time,
                    drain=settings.drain_timeout > 0,
                ),
            )
            for cfg, cluster in zip(configs, clusters, strict=True)
        ]
        self.watcher = FlowWatcher(flows, configs, settings.buckets, FLOW_CHECK_EVERY, clock)

    # ----- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then leave gracefully. Returns the exit status."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.control.open()
        if self.settings.realtime:
            _realtime(self.settings.realtime)
        try:
            for unit in self.units:
                unit.datapath.start()
            self.watcher.measure()  # imports and first counts before the loop starts
            self.watcher.start()
            self.transport.open()
            if self.settings.metrics:
                self.metrics.serve(self.settings.metrics)
            log.info(
                "agent up: node %d, %d VIP(s), heartbeat every %d ms, dead after %d ms",
                self.settings.node_id,
                len(self.units),
                round(self.settings.interval * 1000),
                round(self.settings.detection_time * 1000),
            )
            self._loop(wake_r)
            self._leave()
            return 0
        finally:
            self.watcher.stop()
            for unit in self.units:
                try:
                    unit.datapath.stop()
                except Exception as exc:  # best effort on the way out
                    log.error("cleanup of %s failed: %s", unit.vip, exc)
            self.transport.close()
            self.control.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _loop(self, wake: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.transport.fileno(), selectors.EVENT_READ, "net")
        sel.register(self.control.fileno(), selectors.EVENT_READ, "control")
        sel.register(wake.fileno(), selectors.EVENT_READ, "wake")
        try:
            while not self.stopping:
                now = self.clock()
                deadline = min(u.membership.next_deadline(now) for u in self.units)
                for key, _ in sel.select(timeout=max(0.0, deadline - now)):
                    if key.data == "control":
                        self.control.serve_one(self.handle_request)
                    elif key.data == "wake":  # a signal arrived; "net" is read in step()
                        with contextlib.suppress(BlockingIOError):
                            wake.recv(64)
                began = self.clock()
                self.step(began)
                took = self.clock() - began
                if took > self.settings.interval:
                    log.warning("a loop step took %.0f ms (heartbeat every %.0f ms)",
                                took * 1000, self.settings.interval * 1000)  # fmt: skip
        finally:
            sel.close()

    def step(self, now: float) -> None:
        """Tick every VIP, apply ownership, send due heartbeats (release before announce)."""
        self.watcher.active = any(unit.handover.draining for unit in self.units)
        self.watcher.poll(now)
        # Whatever arrived while this process was busy counts before any peer is judged: a
        # stall of our own must not look like the silence of everyone else.
        for data, src in self.transport.recv():
            for unit in self.units:
                if _is_kept(data):
                    self._on_kept(unit, data, now)
                else:
                    unit.membership.receive(data, src, now)
        for unit in self.units:
            m = unit.membership
            events = m.tick(now)
            for event in events:
                self._on_event(unit, event, now)
            # Lost buckets leave the kernel, and the flows we keep of them are announced,
            # before the heartbeat that lets the new owners take them.
            self._sync(unit, now)
            self._announce(unit, now)
            if m.due(now):
                self.transport.send(m.heartbeat(now).pack(m.cluster.key))

    def _announce(self, unit: Unit, now: float, *, fresh: bool = False) -> None:
        draining = set(unit.handover.draining)
        if fresh or unit.announcer.due(now, bool(draining)):
            if fresh:
                self.watcher.measure()  # the flows as they are now, not a second ago
            for data in unit.announcer.messages(self.watcher.flows(unit.vip), draining, now):
                self.transport.send(data)

    def _on_kept(self, unit: Unit, data: bytes, now: float) -> None:
        m = unit.membership
        try:
            if peek(data).vip != m.cluster.vip:
                return
            msg = unpack(data, m.cluster.key, fingerprint=m.cluster.fingerprint)
            if isinstance(msg, Kept) and msg.node_id != m.node_id:
                unit.kept.take(msg, now)
        except Rejected as exc:
            m.stats.record(exc.cause)

    def _leave(self) -> None:
        now = self.clock()
        for unit in self.units:
            events, msg = unit.membership.leave(now)
            for event in events:
                self._on_event(unit, event, now)
            unit.datapath.apply(Ownership(self.settings.buckets))
            self.transport.send(msg.pack(unit.membership.cluster.key))
            for _ in range(LEAVE_REPEAT - 1):  # a lost LEAVE only costs a timeout; each resend
                _events, msg = unit.membership.leave(now)  # has its own sequence number
                self.transport.send(msg.pack(unit.membership.cluster.key))
        log.info("left the cluster gracefully")

    # ----- ownership into the kernel -------------------------------------------------------

    def _on_event(self, unit: Unit, event: object, now: float) -> None:
        if isinstance(event, OwnershipChanged):
            fresh = unit.handover.changed(event, now)
            if len(fresh) != len(event.orphaned):
                log.info(
                    "%s: %d of %d buckets from dead or unknown owners may hold live nodes' "
                    "flows: no RST there",
                    unit.vip,
                    len(event.orphaned) - len(fresh),
                    len(event.orphaned),
                )
            if fresh:
                unit.failovers = [*unit.failovers[-19:], {"at": now, "buckets": len(fresh)}]
            if any(owner is not None for owner in event.lost.values()):
                # Release in the kernel, then tell who keeps what, then the heartbeat.
                self._sync(unit, now)
                self._announce(unit, now, fresh=True)
            log.info(
                "%s: %d buckets now (+%d, %d from dead nodes, -%d)",
                unit.vip,
                len(event.owned),
                len(event.gained),
                len(fresh),
                len(event.lost),
            )
            self.notify(
                "owned" if event.owned else "none",
                unit.vip,
                sorted(event.owned),
                self.settings.buckets,
            )
        elif isinstance(event, Notice):
            level = {"info": logging.INFO, "warning": logging.WARNING}.get(
                event.level, logging.ERROR
            )
            log.log(level, "%s: %s", unit.vip, event.text)
        elif isinstance(event, StateChanged):
            log.warning("%s: %s -> %s (%s)", unit.vip, event.old.name, event.new.name, event.reason)
        elif isinstance(event, PeerUp):
            log.info("%s: node %d up at %s", unit.vip, event.node_id, event.address)
            unit.handover.peer_up(event.node_id, event.incarnation, now)
        elif isinstance(event, PeerDown):
            log.warning("%s: node %d down (%s)", unit.vip, event.node_id, event.reason)
            owned = {b + 1 for b in unit.membership.owned_buckets()}
            unit.handover.peer_down(event.node_id, event.incarnation, now, owned)
            unit.kept.forget(event.node_id)  # a dead node keeps nothing: its flows are orphans

    def _sync(self, unit: Unit, now: float) -> None:
        raw = unit.membership.owned_buckets()
        h = unit.handover
        kept = unit.kept.current(now)
        if (
            raw is unit.last_raw  # the membership hands out a new set only when it changes
            and kept == unit.kept_applied
            and not h.draining
            and not h.waiting(now)
            and now < unit.metrics_due
        ):
            return  # nothing can have changed: the common case, every 50 ms
        unit.last_raw = raw
        unit.kept_applied = kept
        timeout = self.settings.drain_timeout
        if self.draining_all and self.drain_timeout is not None:
            timeout = self.drain_timeout
        own = replace(
            h.ownership(raw, now, self.watcher.latest(unit.vip), timeout, kept=bool(kept)),
            kept=kept,
        )
        changed = unit.datapath.apply(own)
        if changed:
            self.metrics.changes.labels(unit.vip).inc()
        elif now < unit.metrics_due:
            return
        unit.metrics_due = now + 1.0
        view = unit.membership.view()
        self.metrics.update(
            unit.vip,
            owned=len(own.owned),
            draining=len(unit.handover.draining),
            members=len(view.assigned_to),
            passive=view.state.name == "PASSIVE",
            rejected=view.rejected,
            apply_seconds=unit.datapath.stats.last_seconds,
        )

    # ----- control socket -----------------------------------------------------------------

    def _flows_now(self, unit: Unit) -> dict[str, int]:
        """Live flows per bucket: the watcher's latest, or a fresh count when it is idle."""
        if not self.watcher.active:
            self.watcher.measure()
        latest = self.watcher.latest(unit.vip) or (0.0, {})
        return {str(b): n for b, n in sorted(latest[1].items())}

    def handle_request(self, request: str) -> dict[str, Any]:
        words = request.split()
        command = words[0] if words else "status"
        if command == "status":
            return self.status()
        if command == "drain":
            timeout = None
            if len(words) > 1:
                try:
                    timeout = float(words[1])
                except ValueError:
                    return {"error": f"bad drain timeout {words[1]!r}: expected seconds"}
                if not 0 <= timeout <= 86400:
                    return {"error": f"bad drain timeout {words[1]!r}: expected 0 to 86400 s"}
            for unit in self.units:
                unit.membership.drain(True)
            self.draining_all = True
            self.drain_timeout = timeout
            log.warning("draining: no new connections; established ones stay until they end")
            return {"ok": True, "draining": True}
        if command == "resume":
            for unit in self.units:
                unit.membership.drain(False)
            self.draining_all = False
            self.drain_timeout = None
            log.warning("resumed: taking new connections again")
            return {"ok": True, "draining": False}
        if command == "weight":
            return self._set_weight(words[1:])
        return {"error": f"unknown request {command!r}: allowed are status, drain, resume"}

    def _set_weight(self, args: list[str]) -> dict[str, Any]:
        try:
            weight = int(args[0])
        except (IndexError, ValueError):
            return {"error": f"bad weight {' '.join(args)!r}: expected a number from 0 to 1000"}
        if not 0 <= weight <= 1000:
            return {"error": f"bad weight {weight}: expected a number from 0 to 1000"}
        for unit in self.units:
            unit.membership.set_weight(weight)
        self.weight = weight
        log.warning("weight is now %d", weight)
        return {"ok": True, "weight": weight}

    def status(self) -> dict[str, Any]:
        now = self.clock()
        out = []
        for unit in self.units:
            v = unit.membership.view()
            cfg = unit.cfg
            members = dict(v.assigned_to)
            counts = Counter(assign(members, self.settings.buckets)) if members else Counter()
            out.append(
                {
                    "vip": unit.vip,
                    "interface": cfg.interface,
                    "clustermac": cfg.clustermac,
                    "hashmode": cfg.hashmode,
                    "protocol": cfg.protocol,
                    "dports": list(cfg.dports),
                    "seed": f"0x{cfg.seed:08x}",
                    "mode": "agent",
                    "buckets": self.settings.buckets,
                    "total_nodes": self.settings.buckets,
                    "node_id": self.settings.node_id,
                    "state": v.state.name.lower(),
                    "reason": v.reason,
                    "owned_count": len(v.owned),
                    "owned": sorted(b + 1 for b in v.owned),
                    "draining": sorted(unit.handover.draining),
                    "flows": self._flows_now(unit),
                    "orphaned": len(unit.handover.orphaned),
                    "members": [
                        {
                            "id": m.node_id,
                            "address": m.address,
                            "state": m.state.name.lower(),
                            "weight": m.weight,
                            "buckets": counts.get(m.node_id, 0),
                            "last_heard_ms": round((now - m.last_heard) * 1000),
                            "counted": m.counted,
                        }
                        for m in v.members
                    ],
                    "refused": [
                        {
                            "address": r.address,
                            "node_id": r.node_id,
                            "cause": r.cause,
                            "detail": r.detail,
                            "count": r.count,
                        }
                        for r in v.refused
                    ],
                    "rejected": dict(v.rejected),
                    "last_apply_ms": round(unit.datapath.stats.last_seconds * 1000, 3),
                    "changes": unit.datapath.stats.changes,
                }
            )
        return {
            "agent": {
                "node_id": self.settings.node_id,
                "weight": self.weight,
                "uptime_s": round(now - self.started, 1),
                "interval_ms": round(self.settings.interval * 1000),
                "detection_ms": round(self.settings.detection_time * 1000),
                "draining": self.draining_all,
            },
            "vips": out,
        }


def _realtime(priority: int) -> None:
    """Run the agent under SCHED_RR, as keepalived runs VRRP (`vrrp_rt_priority`).

    Failure detection is a deadline: a busy machine must not delay heartbeats by the detection
    time, or healthy nodes are declared dead. The agent itself uses little CPU, and the kernel's
    RT throttling (sched_rt_runtime_us) keeps 5% for everyone else even if it spun.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except OSError as exc:
        log.warning("cannot run with realtime priority %d (%s): heartbeats may lag", priority, exc)


def _is_kept(data: bytes) -> bool:
    try:
        return peek(data).type == MsgType.KEPT
    except Malformed:
        return False  # the membership counts it
