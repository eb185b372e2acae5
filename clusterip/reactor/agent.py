"""The agent's reactor: sockets, timers and signals around the pure `VipNode`s.

One process per node, one VipNode per VIP (clusterip.core.vipnode decides everything). The
loop: receive datagrams and hand each to its VIP's node, serve the control socket, watch the
interface's carrier, and at every step apply the node's target `Ownership` to the kernel (one
nft transaction per change) *before* sending what the step says to send.

systemd: READY=1 once every VIP has left STARTING (joined, or decided it is alone), STATUS=
lines on every state change, watchdog pings from the loop itself (a hung loop stops them), and
SIGHUP re-reads the config file: VIPs added or removed, weight, drain timeout, restart grace,
peers and the notify command change without a restart and without touching unchanged VIPs.

Ways out:
- SIGTERM / SIGINT: a planned stop. Nothing is released: the datapath is armed to serve on by
  itself for `restart_grace` seconds (a kernel timeout, no process needed), the peers hear
  RESTART and keep this node's buckets where they are, and a new agent started within the
  grace continues exactly where this one stopped: no connection breaks (`systemctl restart`).
  With `restart_grace = 0` it is a graceful leave instead.
- `clusterip stop --leave` (control socket): graceful leave; peers take the buckets at once.
- kill -9 or a crash: the agent's liveness table dies with the process, and the node answers
  nothing for the VIP from that instant; the survivors take over after detection. An exception
  in the loop ends like a graceful removal (stop answering first, then address and tables).
- A failed start: nothing was served yet, the removal answers nothing. A successor that adopted
  its predecessor's datapath and then fails hands it back for what is left of the lease, so the
  node serves on exactly as if the successor had never started.

For tests only, CLUSTERIP_TEST_FAULT makes the agent fail on purpose: `start` right after its
datapaths are up (adopted or new), `loop:SECONDS` with an exception in the loop that long
after the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from clusterip.config import VipConfig
from clusterip.core import defaults
from clusterip.core.events import Event, StateChanged
from clusterip.core.params import Params
from clusterip.core.vipnode import Adoption, Step, VipNode
from clusterip.core.wire import vip_bytes
from clusterip.flows import FlowSource, SocketTable
from clusterip.link import Link
from clusterip.nft import Firewall
from clusterip.reactor.carrier import CarrierWatch
from clusterip.reactor.commands import Commands
from clusterip.reactor.control import ControlServer, Later
from clusterip.reactor.datapath import AgentDatapath
from clusterip.reactor.flowwatch import FlowWatcher
from clusterip.reactor.metrics import Metrics
from clusterip.reactor.notify import Notifier
from clusterip.reactor.report import log_events, status_later
from clusterip.reactor.settings import AgentSettings
from clusterip.reactor.transport import Transport, UdpTransport
from clusterip.reactor.unit import Unit
from clusterip.reactor.web import History, StatusWeb
from clusterip.sdnotify import Notifier as SystemdNotifier
from clusterip.sdnotify import Watchdog, watchdog_period
from clusterip.xdp.agentside import AgentXdp

log = logging.getLogger("clusterip.agent")
FAULT_ENV = "CLUSTERIP_TEST_FAULT"  # tests only: "start" or "loop:SECONDS" (see the module doc)
RECV_BATCH = 256  # datagrams read per step at most: a flood must not delay our heartbeats
Reloader = Callable[[], tuple[list[VipConfig], AgentSettings]]


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
        loop_flows: FlowSource | None = None,
        transport: Transport | None = None,
        carrier: CarrierWatch | None = None,
        sockets: SocketTable | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload: Reloader | None = None,
        systemd: SystemdNotifier | None = None,
        xdp: AgentXdp | None = None,
        ahead_firewall: Firewall | None = None,
    ) -> None:
        self.settings = settings
        # The flow watcher's own nft socket: it writes each VIP's `mine` set ahead of moves
        # (AgentDatapath.snapshot_ahead); None: every move writes its own.
        self.ahead_firewall = ahead_firewall
        self.configs = list(configs)
        self.key = key
        self.clock = clock
        self.firewall = firewall
        self.link = link
        self.transport: Transport = transport or UdpTransport(
            configs[0].interface, group=settings.group, port=settings.port, peers=settings.peers
        )
        self.carrier = carrier
        self.sockets = sockets
        self.control = ControlServer()
        self.notify = Notifier(settings.notify)
        self.metrics = Metrics()
        self.web = StatusWeb(self.metrics)
        self.commands = Commands(self)
        self.stopping: str | None = None  # "restart" (planned stop) or "leave"
        self.params = Params(
            buckets=settings.buckets, interval=settings.interval, tolerance=settings.tolerance
        )
        self.units: list[Unit] = []
        self.started = clock()
        self.reloader = reload
        self.reload_wanted = False
        self.systemd = systemd or SystemdNotifier.from_env(unset=True)
        self.watchdog = Watchdog(self.systemd, watchdog_period())
        self.ready_sent = False
        self._states: dict[str, str] = {}
        self._states_changed = True  # a VIP's state changed since systemd was last told
        self._routes: tuple[tuple[int, ...], dict[bytes, Unit]] = ((), {})
        self._fault_in_loop = os.environ.get(FAULT_ENV, "").startswith("loop:")
        self.watcher = FlowWatcher(
            flows, configs, settings.buckets, defaults.FLOW_CHECK_EVERY, clock, loop_flows
        )
        self.xdp = xdp  # the interface's XDP pre-filter (opened at start); None: nft alone
        self.history = History()  # recent events, for the status page

    def _start_units(self, configs: Sequence[VipConfig]) -> None:
        """The datapaths first (adopting what a predecessor left), then the pure nodes."""
        # Incarnations must grow across restarts (an older one is refused as a replay): the
        # wall clock in microseconds does, unless the clock is stepped back.
        incarnation = time.time_ns() // 1000
        now = self.clock()
        s = self.settings
        self._xdp_for([*[u.node.cfg for u in self.units], *configs])
        for cfg in configs:
            datapath = AgentDatapath(
                cfg,
                s.buckets,
                self.firewall,
                self.link,
                self.sockets,
                flow_timeout=s.drain_timeout + s.detection_time,
                xdp=self.xdp,
                ahead=self.ahead_firewall,
            )
            left = datapath.start(node_id=s.node_id)
            adopted = None
            if left is not None:
                adopted = Adoption(left.ownership, left.lease.incarnation)
                log.info(
                    "%s: continuing incarnation %d: %d buckets, %d draining, no flow lost",
                    cfg.vip,
                    left.lease.incarnation,
                    len(left.ownership.owned),
                    len(left.ownership.draining),
                )
            node = VipNode(
                cfg,
                node_id=s.node_id,
                weight=s.weight,
                key=self.key,
                params=self.params,
                incarnation=incarnation,
                now=now,
                drain_timeout=s.drain_timeout,
                adopted=adopted,
            )
            if self.carrier is not None and self.carrier.up is False:
                node.set_carrier(False, now)
            self.units.append(Unit(node, datapath, adopted=left.lease if left else None))
        self.watcher.configs = [u.node.cfg for u in self.units]
        self.watcher.snappers = {u.vip: u.datapath.snapshot_ahead for u in self.units}

    # ----- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until a signal or a stop request; returns the exit status."""
        self.control.open()  # first: a second agent in this namespace stops here, unchanged
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        handlers = {s: signal.signal(s, self._on_signal) for s in handled}
        if self.settings.realtime:
            _realtime(self.settings.realtime)
        handed_over = False
        running = False
        try:
            if self.carrier is not None:
                self.carrier.open()  # first: a node started without carrier knows it is cut off
            self._start_units(self.configs)
            self.transport.open()
            self.watcher.start()
            if self.settings.metrics:
                self.web.serve(self.settings.metrics)
            self._injected("start")
            log.info(
                "agent up: node %d, %d VIP(s), heartbeat every %d ms, dead after %d ms",
                self.settings.node_id,
                len(self.units),
                round(self.settings.interval * 1000),
                round(self.settings.detection_time * 1000),
            )
            running = True
            self._loop(wake_r)
            handed_over = self._stop()
            return 0
        finally:
            self.watcher.stop()
            if not handed_over:
                for unit in self.units:
                    try:
                        self._give_back(unit, running)
                    except Exception as exc:  # best effort on the way out
                        log.error("cleanup of %s failed: %s", unit.vip, exc)
            self.transport.close()
            if self.carrier is not None:
                self.carrier.close()
            if self.xdp is not None:  # the bpf_link: nft alone serves from here (the lease)
                self.xdp.close()
            self.web.close()
            self.control.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()

    def _give_back(self, unit: Unit, running: bool) -> None:
        """On a way out that is not a planned stop: remove the datapath (it answers nothing
        from its first step), unless this agent failed to start after adopting a suspended
        predecessor's: then the lease goes back for the time it had left, with the
        predecessor's incarnation, as if this agent had never started."""
        lease = unit.adopted
        left = lease.until - time.time() if lease is not None else 0.0
        if lease is not None and not running and left > 0.05:
            unit.datapath.suspend(left, node_id=lease.node_id, incarnation=lease.incarnation)
            log.error("%s: failed to start: the datapath serves on for the %.1f s left of its "
                      "lease", unit.vip, left)  # fmt: skip
            return
        unit.datapath.stop()

    def _injected(self, point: str) -> None:
        """A failure on purpose, for tests (FAULT_ENV)."""
        spec = os.environ.get(FAULT_ENV, "")
        if spec == point == "start":
            raise RuntimeError(f"{FAULT_ENV}=start: failing at start, as asked")
        late = point == "loop" and self.clock() - self.started >= float(spec[5:] or "inf")
        if late and spec.startswith("loop:"):
            raise RuntimeError(f"{FAULT_ENV}={spec}: failing in the loop, as asked")

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload_wanted = True
            return
        self.stopping = "restart" if self.settings.restart_grace > 0 else "leave"

    def _stop(self) -> bool:
        """Leave or hand over; True when the datapath stays for a successor."""
        now = self.clock()
        self.systemd.stopping(f"stopping ({self.stopping})")
        if self.stopping == "restart":
            grace = self.settings.restart_grace
            for unit in self.units:
                # Armed first: from here the node serves on by itself until the grace ends.
                unit.datapath.suspend(
                    grace,
                    node_id=self.settings.node_id,
                    incarnation=unit.node.membership.incarnation,
                )
                for data in unit.node.suspend(now, grace):
                    self.transport.send(data)
            log.info("stopped: serving on for %g s for a successor (restart)", grace)
            return True
        for unit in self.units:
            step = unit.node.leave(now)
            self._apply(unit, step)
            log.info("%s: answers nothing from here on (leaving)", unit.vip)
            for data in step.datagrams:
                self.transport.send(data)
        log.info("left the cluster gracefully")
        return False

    def _loop(self, wake: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.transport.fileno(), selectors.EVENT_READ, "net")
        sel.register(self.control.fileno(), selectors.EVENT_READ, "control")
        sel.register(wake.fileno(), selectors.EVENT_READ, "wake")
        if self.carrier is not None:
            sel.register(self.carrier.fileno(), selectors.EVENT_READ, "carrier")
        try:
            while self.stopping is None:
                now = self.clock()
                deadline = min(u.node.next_deadline(now) for u in self.units)
                ready = False
                for key, _ in sel.select(timeout=max(0.0, deadline - now)):
                    if key.data == "net":
                        ready = True
                    elif key.data == "control":
                        self.control.serve_one(self.commands.handle_later)
                    elif key.data == "wake":  # a signal arrived; "net" is read in step()
                        with contextlib.suppress(BlockingIOError):
                            wake.recv(64)
                    elif key.data == "carrier" and self.carrier is not None:
                        self._carrier(self.carrier.poll())
                if self.reload_wanted:
                    self.reload_wanted = False
                    self._reload(sel)
                began = self.clock()
                if self._fault_in_loop:
                    self._injected("loop")
                self.step(began, receive=ready)
                self.watchdog.tick(began)
                if self._states_changed or not self.ready_sent:
                    self._tell_systemd()
                took = self.clock() - began
                if took > self.settings.interval:
                    log.warning("a loop step took %.0f ms (heartbeat every %.0f ms)",
                                took * 1000, self.settings.interval * 1000)  # fmt: skip
        finally:
            sel.close()

    def _tell_systemd(self) -> None:
        self._states_changed = False
        states = {u.vip: u.node.membership.state.name.lower() for u in self.units}
        if states == self._states:
            return
        self._states = states
        text = "; ".join(f"{vip} {state}" for vip, state in states.items())
        if not self.ready_sent and "starting" not in states.values():
            self.ready_sent = True
            self.systemd.ready(text)
        else:
            self.systemd.status(text)

    def _reload(self, sel: selectors.BaseSelector) -> None:
        """SIGHUP: re-read the config; change what changed, touch nothing else."""
        if self.reloader is None:
            log.warning("SIGHUP: no config file to re-read (started with flags)")
            return
        self.systemd.reloading("re-reading the config")
        try:
            configs, settings = self.reloader()
        except Exception as exc:  # a bad file changes nothing
            log.error("reload failed, nothing changed: %s", exc)
            self.systemd.ready("reload failed; running as before")
            return
        old = self.settings
        fixed = ("node_id", "buckets", "interval", "tolerance", "key_file", "group", "port", "xdp")
        changed_fixed = [f for f in fixed if getattr(old, f) != getattr(settings, f)]
        if changed_fixed:
            log.error("reload: %s need a restart; kept as they were", ", ".join(changed_fixed))
            for f in changed_fixed:
                settings = replace(settings, **{f: getattr(old, f)})
        now = self.clock()
        wanted = {str(c.vip): c for c in configs}
        for unit in list(self.units):
            cfg = wanted.get(unit.vip)
            if cfg is not None and cfg == unit.node.cfg:
                continue
            step = unit.node.leave(now)  # removed or changed: leave, then (re)start below
            self._apply(unit, step)
            for data in step.datagrams:
                self.transport.send(data)
            unit.datapath.stop()
            self.units.remove(unit)
            log.info("reload: %s removed", unit.vip)
        have = {u.vip for u in self.units}
        self.settings = settings
        self._start_units([c for v, c in wanted.items() if v not in have])
        for unit in self.units:
            if unit.node.membership.weight != settings.weight:
                unit.node.set_weight(settings.weight)
            unit.node.drain_timeout = settings.drain_timeout
        if settings.notify != old.notify:
            self.notify = Notifier(settings.notify)
        if settings.peers != old.peers:
            sel.unregister(self.transport.fileno())
            self.transport.close()
            self.transport = UdpTransport(
                self.configs[0].interface, group=old.group, port=old.port, peers=settings.peers
            )
            self.transport.open()
            sel.register(self.transport.fileno(), selectors.EVENT_READ, "net")
        log.info("reload: %d VIP(s): %s", len(self.units), ", ".join(u.vip for u in self.units))
        self._states, self._states_changed = {}, True
        self.systemd.ready("reloaded")

    def _carrier(self, up: bool | None) -> None:
        if up is None:
            return
        now = self.clock()
        log.warning("%s: carrier %s", self.configs[0].interface, "up" if up else "lost")
        for unit in self.units:
            unit.node.set_carrier(up, now)

    # ----- one step -------------------------------------------------------------------------

    def _by_vip(self) -> dict[bytes, Unit]:
        """Units by the VIP as a datagram's header carries it (bytes 16..31)."""
        key = tuple(map(id, self.units))
        if key != self._routes[0]:
            self._routes = (key, {vip_bytes(u.node.cfg.vip): u for u in self.units})
        return self._routes[1]

    def step(self, now: float, *, receive: bool = True) -> None:
        """Receive (when the socket has data), then for every VIP: step, apply, send (release
        before announce)."""
        # Whatever arrived while this process was busy counts before any peer is judged: a
        # stall of our own must not look like the silence of everyone else.
        by_vip = self._by_vip()
        for _ in range(RECV_BATCH if receive else 0):
            got = self.transport.recv()
            if got is None:
                break
            data, src = got
            unit = by_vip.get(data[16:32])  # (no unit: malformed, or another VIP's cluster)
            for target in [unit] if unit is not None else self.units:
                target.node.receive(data, src, now)  # counted as malformed or foreign there
        self.watcher.active = any(u.node.wants_flows for u in self.units)
        self.watcher.poll(now)
        for unit in self.units:
            node = unit.node
            flows = self.watcher.latest_flows(unit.vip) if node.wants_flows else None
            step = node.step(now, flows)
            if node.wants_flows_now:
                self._apply(unit, step)  # release first, then count what we keep
                for data in step.datagrams:
                    self.transport.send(data)
                self._log(unit, step.events, now)
                step = node.step(now, self.watcher.measure_now(unit.node.cfg, loop=True))
            self._apply(unit, step)
            for data in step.datagrams:
                self.transport.send(data)
            self._log(unit, step.events, now)
            if step.changed or now >= unit.metrics_due:
                unit.metrics_due = now + 1.0
                self._export(unit, now)

    def _apply(self, unit: Unit, step: Step) -> None:
        if step.ownership is unit.datapath.current:
            return  # the core returns the very same object while nothing changed
        # A move that starts uses the watcher's latest snapshot (if fresh enough): sock_diag
        # stays off the loop.
        if unit.datapath.apply(step.ownership, flows=self.watcher.snapshot(unit.vip)):
            self.metrics.changes.labels(unit.vip).inc()

    def _log(self, unit: Unit, events: Sequence[Event], now: float) -> None:
        if any(isinstance(e, StateChanged) for e in events):
            self._states_changed = True
        for event in events:
            self.history.add(unit.vip, event)
        log_events(self, unit.vip, events)

    def _export(self, unit: Unit, now: float) -> None:
        st = unit.node.summary()  # (not the whole status: it is built every second)
        self.metrics.update(
            unit.vip,
            owned=st["owned_count"],
            draining=st["draining_count"],
            members=st["members"],
            passive=st["state"] == "passive",
            rejected=st["rejected"],
            apply_seconds=unit.datapath.stats.last_seconds,
        )
        if self.xdp is not None:
            self.metrics.set_xdp(unit.vip, self.xdp.counters().get(unit.vip))

    def status(self) -> dict[str, Any]:
        return self.status_later().compute()

    def status_later(self) -> Later:
        """What `clusterip status` shows (clusterip.reactor.report)."""
        return status_later(self)

    # ----- the XDP pre-filter (clusterip.xdp.agentside) ----------------------------------------

    def _xdp_for(self, configs: Sequence[VipConfig]) -> None:
        """Open the interface's pre-filter at start; give it the new VIP set on a reload."""
        if self.xdp is None:
            return
        if not self.xdp.opened:
            self.xdp.open(configs)
        else:
            self.xdp.reconfigure(configs)

    def xdp_report(self, unit: Unit) -> dict[str, Any]:
        if self.xdp is None:
            return {"mode": None, "describe": "off", "counters": None}
        return self.xdp.report(unit.datapath.cfg)


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
