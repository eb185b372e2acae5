"""One VIP served by the agent: its pure node and its datapath."""

from __future__ import annotations

from dataclasses import dataclass

from clusterip.core.vipnode import VipNode
from clusterip.reactor.datapath import AgentDatapath
from clusterip.state import Lease


@dataclass
class Unit:
    """One VIP: its pure node and its datapath."""

    node: VipNode
    datapath: AgentDatapath
    metrics_due: float = 0.0
    adopted: Lease | None = None  # the predecessor's lease this unit took over

    @property
    def vip(self) -> str:
        return self.node.vip
