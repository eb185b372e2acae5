"""Live flow counts for the agent, measured away from its heartbeat loop.

Reading the sockets and UDP flows of a busy node takes milliseconds of Python: done in the loop
it would delay heartbeats and get healthy nodes declared dead. A worker thread measures every
`every` seconds; the loop reads the latest counts with the time they were taken, and trusts a
zero only when it was measured after the bucket started draining.

The same thread takes each VIP's snapshot of this node's TCP flows (`snappers`) every
SNAPSHOT_EVERY seconds, and the agent's snapper writes it into the kernel's `mine` set when the
flows changed, so that a move that starts needs none of its own: the datapath relies on one up
to clusterip.reactor.datapath.SNAPSHOT_MAX_AGE old (flows younger than that are in its `syns`
set).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from clusterip.config import VipConfig
from clusterip.flows import Flow, FlowSource

log = logging.getLogger("clusterip.core")

Measurement = tuple[float, dict[int, int]]  # (taken at, live flows per bucket)
SNAPSHOT_EVERY = 3.0


class FlowWatcher:
    def __init__(
        self,
        source: FlowSource,
        configs: Sequence[VipConfig],
        modulus: int,
        every: float,
        clock: Callable[[], float],
        loop_source: FlowSource | None = None,
    ) -> None:
        self.source = source
        # The loop's own reader (its own netlink socket and memo), so that a count the loop
        # needs now never waits for one the thread or a status request is taking.
        self.loop_source = loop_source
        self.configs = list(configs)
        self.modulus = modulus
        self.every = every
        self.clock = clock
        self._latest: dict[str, Measurement] = {}
        self._flows: dict[str, list[Flow]] = {}
        self._reports: dict[str, tuple[float, list[Flow]]] = {}
        self._lock = threading.Lock()  # guards the results
        self._measuring = threading.Lock()  # one measurement at a time: the source is shared
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = 0.0
        # Measure only while someone needs the counts (the agent sets this while any bucket
        # drains): an idle agent reads no socket table and lists no set.
        self.active = True
        self.snappers: dict[str, Callable[[], Any]] = {}  # VIP -> take its snapshot
        self._snaps: dict[str, Any] = {}
        self._next_snap = 0.0

    def measure(self) -> None:
        """Take one measurement of every VIP now (in the calling thread)."""
        for cfg in self.configs:
            self.measure_now(cfg)

    def measure_now(self, cfg: VipConfig, *, loop: bool = False) -> tuple[float, list[Flow]] | None:
        """Measure one VIP now, in the calling thread (the worker may be measuring too: the
        source is used by one thread at a time; `loop`: the loop's own source, if any). None
        if the flows cannot be read."""
        own = loop and self.loop_source is not None
        with contextlib.nullcontext() if own else self._measuring:
            taken = self.clock()
            try:
                source = self.loop_source if own and self.loop_source else self.source
                flows = source.flows(cfg, self.modulus)
            except Exception as exc:  # cannot read them: keep draining until the timeout
                log.warning("cannot count flows of %s: %s", cfg.vip, exc)
                return None
        counts = dict(Counter(b for _a, _p, b in flows))
        with self._lock:
            self._latest[str(cfg.vip)] = (taken, counts)
            self._flows[str(cfg.vip)] = flows
            self._reports[str(cfg.vip)] = (taken, flows)
        return taken, flows

    def fresh(self, max_age: float) -> None:
        """Measure every VIP unless each was measured within `max_age` s (status requests:
        a client polling status must not make the agent read its flows at every request)."""
        now = self.clock()
        with self._lock:
            stale = [
                c for c in self.configs if now - self._latest.get(str(c.vip), (-1e18,))[0] > max_age
            ]
        for cfg in stale:
            self.measure_now(cfg)

    def poll(self, now: float) -> None:
        """Without a thread (tests, simulations): measure inline when due."""
        if self._thread is None and self.active and now >= self._next:
            self._next = now + self.every
            self.measure()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flow-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._snapshots()
        while not self._stop.wait(min(self.every, SNAPSHOT_EVERY)):
            if self.active:
                self.measure()
            self._snapshots()

    def _snapshots(self) -> None:
        if self.clock() < self._next_snap:
            return
        self._next_snap = self.clock() + SNAPSHOT_EVERY
        for vip, take in list(self.snappers.items()):
            try:
                snap = take()
            except Exception as exc:  # the move will take its own
                log.warning("cannot take a snapshot of the flows of %s: %s", vip, exc)
                continue
            with self._lock:
                self._snaps[vip] = snap

    def snapshot(self, vip: str) -> Any:
        """The latest snapshot of `vip`'s TCP flows that the thread took (None: none yet)."""
        with self._lock:
            return self._snaps.get(vip)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def latest(self, vip: str) -> Measurement | None:
        with self._lock:
            return self._latest.get(vip)

    def latest_flows(self, vip: str) -> tuple[float, list[Flow]] | None:
        """The latest measurement of `vip` as (taken at, flows): the same object until the
        next measurement (the core notices new ones by identity)."""
        with self._lock:
            return self._reports.get(vip)

    def flows(self, vip: str) -> list[Flow]:
        """The flows of the latest measurement (address, port, bucket)."""
        with self._lock:
            return list(self._flows.get(vip, []))
