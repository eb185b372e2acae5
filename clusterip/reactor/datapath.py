"""The agent's hold on the kernel: the VIP's tables, its live table, address and MAC.

Fail-safe, and restartable without losing a flow:
- The VIP's netdev and arp tables (hash, bucket map, flow sets, ARP rewrite) have no owner:
  they outlive the process. The *live* table does (nft `flags owner`): the kernel deletes it
  the moment the agent's netlink socket closes, however the process ends. It marks the VIP's
  packets; the netdev table drops every unmarked one unless its `lease` set holds the VIP.
- kill -9 (or a crash): the live table dies, the node drops every VIP packet at once.
  `clusterip down` removes what is left.
- `suspend(grace)` (a planned stop or restart): one transaction puts the VIP in the lease set
  for `grace` seconds, with this agent's node id and incarnation; the process then exits. The
  node serves on exactly as it was, and stops by itself when the kernel expires the lease.
- `start()` finds such a lease and tables that match its configuration: it *adopts* them (its
  own live table, the lease deleted, one transaction; the sets and their flows untouched) and
  returns what the kernel holds. Otherwise it starts clean, replacing whatever was there.
- `stop()`: graceful removal. Stop answering first, then address and MAC, then the tables.

The `mine` set (this node's TCP flows, which buckets that start to drain or are guarded check)
is written *ahead*: the flow watcher's thread calls `snapshot_ahead()` every few seconds, which
writes a fresh snapshot into the kernel through its own netlink socket when the flows changed.
A move then needs no snapshot in its own transaction while the one written ahead is younger
than SNAPSHOT_MAX_AGE (flows since are in `syns`). A snapshot costs libnftables about 4.4 us a
flow to parse (30,000 flows: 133 ms on the lab's VM); inside a move it held up the loop, and so
the heartbeats, at the very moment a failover needs them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

from clusterip.config import ConfigError, VipConfig
from clusterip.core import defaults
from clusterip.core.ownership import Ownership
from clusterip.flows import SockDiag, SocketTable, TcpFlow, snapshot
from clusterip.link import Link, attach_mac, detach_mac
from clusterip.nft import Firewall, FirewallError
from clusterip.render import (
    checked,
    render,
    render_adopt,
    render_delete,
    render_drop_all,
    render_ingress,
    render_lease,
    render_mine,
    render_update,
    table_name,
)
from clusterip.state import Lease, VipState, mac_shared, parse_tables
from clusterip.xdp.agentside import AgentXdp

log = logging.getLogger("clusterip.core")
ADDR_FLAG = "addr=1"


@dataclass
class ApplyStats:
    changes: int = 0
    last_seconds: float = 0.0
    total_seconds: float = 0.0
    snapshots: int = 0
    last_snapshot_flows: int = 0
    last_snapshot_seconds: float = 0.0
    ahead_writes: int = 0


# A snapshot may be this old when its buckets start to move: every flow established since
# has its SYN in the `syns` set (SYN_TIMEOUT, 60 s) until well after that.
SNAPSHOT_MAX_AGE = 10.0


@dataclass(frozen=True)
class Snapshot:
    flows: list[TcpFlow]
    taken: float  # time.monotonic()


@dataclass(frozen=True)
class Adoption:
    """What `start()` took over from a suspended predecessor."""

    ownership: Ownership  # what the kernel holds, read back (the datapath serves it now)
    lease: Lease  # the predecessor's node id, incarnation and the lease's end


class AgentDatapath:
    def __init__(
        self,
        cfg: VipConfig,
        buckets: int,
        firewall: Firewall,
        link: Link,
        sockets: SocketTable | None = None,
        *,
        flow_timeout: float = defaults.DRAIN_TIMEOUT,
        xdp: AgentXdp | None = None,
        ahead: Firewall | None = None,
    ) -> None:
        self.cfg = replace(cfg, total_nodes=buckets, local_nodes=())
        # Another netlink socket for `snapshot_ahead` (libnftables contexts are per thread);
        # None: every move takes and writes its own snapshot.
        self.ahead = ahead
        self._ahead_flows: frozenset[TcpFlow] | None = None  # what `mine` holds, written ahead
        self._ahead_taken = -math.inf  # when that snapshot was taken (time.monotonic())
        self._ahead_written = -math.inf  # when it was last written (timeouts run from there)
        self.xdp = xdp  # the interface's XDP pre-filter, shared by the agent's VIPs
        self.buckets = buckets
        self.firewall = firewall
        self.link = link
        self.sockets: SocketTable = sockets if sockets is not None else SockDiag()
        self.flow_timeout = max(1, round(flow_timeout))
        self.current = Ownership(buckets)
        self.added_addr = False
        self.suspended = False
        self.stats = ApplyStats()

    # ----- life cycle ----------------------------------------------------------------------

    def start(self, *, node_id: int | None = None) -> Adoption | None:
        """Take the VIP: adopt a suspended predecessor's datapath (of `node_id`, if given),
        else start clean with nothing owned. Either way one transaction."""
        cfg = self.cfg
        self.link.check_interface(cfg.interface)
        old = self._state()
        if old is not None and old.live:
            raise ConfigError(f"VIP {cfg.vip} is already served by a running agent on this node")
        if old is not None and old.lease is not None and self._adoptable(old, node_id):
            adopted = self._adopt(old)
            if adopted is not None:
                return adopted
        self.added_addr = not self.link.has_address(cfg.interface, cfg.vip) or (
            old is not None and old.mode == "agent" and ADDR_FLAG in _extra(old)
        )
        note = ADDR_FLAG if self.added_addr else ""
        # A stale setup of this VIP (a static one, or an agent's that nobody adopted) is
        # replaced in the same transaction.
        script = render_delete(cfg) + render(
            cfg,
            Ownership(self.buckets),
            mode="agent",
            live=True,
            note_extra=note,
            flow_timeout=self.flow_timeout,
            nic_mac=self.link.own_mac(cfg.interface),
            xdp_fast=self._xdp_fast(),
        )
        self.firewall.apply(script)
        self.current = Ownership(self.buckets)
        if self.xdp is not None:
            self.xdp.set(self.cfg, self.current)
        self._link_up()
        return None

    def _xdp_fast(self) -> bool:
        """Render the fast-path rule: only while this agent's XDP program has the VIP."""
        return self.xdp is not None and self.xdp.serves(self.cfg)

    def _adoptable(self, old: VipState, node_id: int | None) -> bool:
        cfg, have = self.cfg, old.config
        return (
            old.mode == "agent"
            and old.current
            and old.lease is not None
            and (node_id is None or old.lease.node_id == node_id)
            and old.ownership.modulus == self.buckets
            and have.interface == cfg.interface
            and have.prefixlen == cfg.prefixlen
            and have.cluster_fields() == cfg.cluster_fields()
        )

    def _adopt(self, old: VipState) -> Adoption | None:
        assert old.lease is not None
        try:
            # Deleting the lease fails if the kernel expired it meanwhile: then start clean.
            # The fast-path rule as this agent's XDP wants it, in the same transaction (the
            # predecessor may have had one: its program is gone, so was its rule's purpose).
            script = render_adopt(self.cfg)
            if self.xdp is not None:
                script += render_ingress(self.cfg, xdp_fast=self._xdp_fast(), live=True)
            self.firewall.apply(script)
        except FirewallError as exc:
            log.warning("%s: cannot adopt the previous agent's datapath: %s", self.cfg.vip, exc)
            return None
        self.current = old.ownership
        if self.xdp is not None:  # re-attached: its buckets as the adopted tables have them
            self.xdp.set(self.cfg, self.current)
        self.added_addr = ADDR_FLAG in _extra(old)
        self._link_up()
        log.info(
            "%s: adopted the datapath of node %d (incarnation %d), %.1f s of its lease left",
            self.cfg.vip,
            old.lease.node_id,
            old.lease.incarnation,
            old.lease.left,
        )
        return Adoption(old.ownership, old.lease)

    def _link_up(self) -> None:
        cfg = self.cfg
        if not self.link.has_address(cfg.interface, cfg.vip):
            self.link.add_address(cfg.interface, cfg.vip, cfg.prefixlen)
        attach_mac(self.link, cfg)
        self.link.send_garp(cfg.interface, cfg.vip, cfg.clustermac)

    def _announce(self) -> None:
        """Takeover of a dead node's buckets: announce the VIP at the cluster MAC again (an
        unsolicited NA, or gratuitous ARP), served already; a failure only costs a log line."""
        cfg = self.cfg
        try:
            self.link.send_garp(cfg.interface, cfg.vip, cfg.clustermac)
        except OSError as exc:
            log.warning("%s: cannot announce the VIP: %s", cfg.vip, exc)

    def _state(self) -> VipState | None:
        for st in parse_tables(self.firewall.ruleset(counters=False)):
            if st.config.vip == self.cfg.vip:
                return st
        return None

    def apply(self, own: Ownership, *, flows: Snapshot | None = None) -> bool:
        """Make the kernel hold `own`, in one transaction. True if anything changed.

        When buckets start to check flows (draining or guarded), this node's flows replace
        the `mine` set in the same transaction: `flows` if given and younger than
        SNAPSHOT_MAX_AGE (a caller can take it with `snapshot()` in another thread, to keep
        sock_diag off its loop), else a snapshot taken now.
        """
        if self.suspended:
            raise RuntimeError("the datapath was suspended for a successor: nothing to apply")
        if own == self.current:
            return False
        started = time.perf_counter()
        mine = None
        if checked(own) - checked(self.current) and not self.ahead_fresh():
            fresh = flows is not None and time.monotonic() - flows.taken < SNAPSHOT_MAX_AGE
            mine = flows.flows if fresh and flows is not None else self.snapshot().flows
        script = render_update(self.cfg, self.current, own, mine=mine, live=True)
        if self.xdp is not None:  # a bucket moving here passes XDP before nft takes it, etc.
            self.xdp.change(self.cfg, own, lambda: self.firewall.apply(script) if script else None)
        elif script:
            self.firewall.apply(script)
        took = time.perf_counter() - started
        taken_over = own.orphaned - self.current.orphaned
        self.current = own
        self.stats.changes += 1
        if taken_over:
            self._announce()
        self.stats.last_seconds = took
        self.stats.total_seconds += took
        return True

    def counters(self) -> dict[str, dict[str, int]]:
        """The VIP's packet counters (accepted, foreign, kept, midflow, fragments, down)."""
        # Read with the counters (the tables alone, as _state() reads them, carry none).
        for st in parse_tables(self.firewall.ruleset(counters=True)):
            if st.config.vip == self.cfg.vip:
                return dict(st.counters)
        return {}

    def snapshot(self) -> Snapshot:
        """This node's TCP flows on the VIP, now (sock_diag; safe in any thread)."""
        began = time.perf_counter()
        flows = snapshot(self.sockets.sockets(self.cfg.vip))
        self.stats.snapshots += 1
        self.stats.last_snapshot_flows = len(flows)
        self.stats.last_snapshot_seconds = time.perf_counter() - began
        return Snapshot(flows, time.monotonic())

    def ahead_fresh(self) -> bool:
        """Whether `mine` holds a snapshot written ahead that a move may rely on: taken less
        than SNAPSHOT_MAX_AGE ago, and written less than half the flow timeout ago."""
        now = time.monotonic()
        return (
            now - self._ahead_taken < SNAPSHOT_MAX_AGE
            and now - self._ahead_written < self.flow_timeout / 2
        )

    def snapshot_ahead(self) -> Snapshot:
        """A snapshot, also written into the kernel's `mine` set in a transaction of its own
        when the flows changed since the last one written (or their timeouts run short). For
        the flow watcher's thread: the loop's transactions go through another socket. Adding
        this node's own flows is right at any time (a bucket that checks nothing ignores the
        set); a flow that ended meanwhile only lingers until its timeout (a new SYN on its
        port deletes it)."""
        snap = self.snapshot()
        if self.ahead is None or self.suspended:
            return snap
        flows = frozenset(snap.flows)
        now = time.monotonic()
        if flows != self._ahead_flows or now - self._ahead_written >= self.flow_timeout / 4:
            name = table_name(self.cfg)
            try:
                self.ahead.apply(render_mine(name, snap.flows))
            except FirewallError as exc:  # tables gone (stopping): the moves take their own
                log.debug("%s: cannot write the flows ahead: %s", self.cfg.vip, exc)
                self._ahead_taken = -math.inf
                return snap
            self._ahead_flows, self._ahead_written = flows, now
            self.stats.ahead_writes += 1
        self._ahead_taken = snap.taken  # unchanged flows: the set holds this snapshot too
        return snap

    def suspend(self, grace: float, *, node_id: int, incarnation: int) -> None:
        """Leave the node serving for `grace` seconds after this process exits, for a
        successor to adopt (0: it stops at once, as if killed). One transaction; afterwards
        this object applies nothing and `stop()` does nothing."""
        lease = Lease(node_id, incarnation, time.time() + grace, grace)
        self.firewall.apply(render_lease(self.cfg, round(grace * 1000), lease.note()))
        self.suspended = True

    def stop(self) -> None:
        """Graceful: stop answering, remove the MAC and the address this agent added, then
        the tables. Nothing after a suspend."""
        if self.suspended:
            return
        cfg = self.cfg
        if self.xdp is not None:  # the fast path ends before nft stops answering
            self.xdp.drop_all(cfg, self.buckets)
        try:
            self.firewall.apply(render_drop_all(cfg))
        except FirewallError as exc:  # tables already gone: go on with the rest
            log.warning("%s: %s", cfg.vip, exc)
        try:
            shared = mac_shared(parse_tables(self.firewall.ruleset(counters=False)), cfg)
            if not shared:
                detach_mac(self.link, cfg)
            if self.added_addr and self.link.has_address(cfg.interface, cfg.vip):
                self.link.del_address(cfg.interface, cfg.vip, cfg.prefixlen)
        finally:
            self.firewall.apply(render_delete(cfg, owner=True))
        self.current = Ownership(self.buckets)


def _extra(st: VipState) -> set[str]:
    return {f"{k}={v}" for k, v in st.comment_fields.items()}
