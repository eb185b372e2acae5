"""The agent's hold on the kernel: its owner-flagged tables, the guard, address and MAC.

Fail-safe by construction: the agent's tables carry nft's `owner` flag and die with its netlink
socket, i.e. with the process, however it ends. The guard table (no owner flag) stays and then
drops every packet to the VIP that no owner claimed, so a node without a live agent never
answers for the VIP. A graceful stop removes everything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from clusterip.config import VipConfig
from clusterip.core.ownership import Ownership
from clusterip.link import Link
from clusterip.nft import Firewall
from clusterip.render import (
    render,
    render_delete,
    render_guard,
    render_guard_delete,
    render_update,
)

log = logging.getLogger("clusterip.core")
ADDR_FLAG = "addr=1"


@dataclass
class ApplyStats:
    changes: int = 0
    last_seconds: float = 0.0
    total_seconds: float = 0.0


class AgentDatapath:
    def __init__(self, cfg: VipConfig, buckets: int, firewall: Firewall, link: Link) -> None:
        self.cfg = cfg
        self.buckets = buckets
        self.firewall = firewall
        self.link = link
        self.current = Ownership(buckets)
        self.added_addr = False
        self.stats = ApplyStats()

    def start(self) -> None:
        """Guard first, then an owner table that owns nothing: defined from the first moment."""
        cfg = self.cfg
        self.link.check_interface(cfg.interface)
        self.added_addr = not self.link.has_address(cfg.interface, cfg.vip)
        # A previous agent's owner tables died with it; a stale static setup of this VIP is
        # replaced in the same transaction as the guard. The guard records whether the address
        # is ours, so `clusterip down` can clean up after an agent that was killed.
        note = ADDR_FLAG if self.added_addr else ""
        self.firewall.apply(render_delete(cfg) + render_guard(cfg, note))
        if self.added_addr:
            self.link.add_address(cfg.interface, cfg.vip, cfg.prefixlen)
        if cfg.clustermac not in self.link.multicast_macs(cfg.interface):
            self.link.add_multicast(cfg.interface, cfg.clustermac)
        self.apply(Ownership(self.buckets), force=True)
        self.link.send_garp(cfg.interface, cfg.vip, cfg.clustermac)

    def apply(self, own: Ownership, *, force: bool = False) -> bool:
        """Make the kernel hold `own`, in one transaction. True if anything changed."""
        if own == self.current and not force:
            return False
        started = time.perf_counter()
        if force:
            note = ADDR_FLAG if self.added_addr else ""
            script = render(self.cfg, own, mode="agent", owner=True, note_extra=note)
        else:
            script = render_update(self.cfg, self.current, own, owner=True)
        if script:
            self.firewall.apply(script)
        took = time.perf_counter() - started
        self.current = own
        self.stats.changes += 1
        self.stats.last_seconds = took
        self.stats.total_seconds += took
        return True

    def stop(self) -> None:
        """Graceful: remove the tables, the guard, the MAC and the address this agent added."""
        cfg = self.cfg
        try:
            self.firewall.apply(render_delete(cfg, owner=True) + render_guard_delete(cfg.vip))
        finally:
            if cfg.clustermac in self.link.multicast_macs(cfg.interface):
                self.link.del_multicast(cfg.interface, cfg.clustermac)
            if self.added_addr and self.link.has_address(cfg.interface, cfg.vip):
                self.link.del_address(cfg.interface, cfg.vip, cfg.prefixlen)
