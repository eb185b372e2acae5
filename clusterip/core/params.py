"""Agent tunables (`Params`) and the identity of a VIP's agent cluster (`Cluster`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import VipConfig
from clusterip.core import defaults as d
from clusterip.core.fingerprint import fingerprint as config_fingerprint
from clusterip.core.fingerprint import fingerprint_fields, key_id


@dataclass(frozen=True)
class Params:
    """Tunables; every node of a cluster should use the same ones (buckets are fingerprinted)."""

    buckets: int = d.BUCKETS
    interval: float = d.INTERVAL_MS / 1000  # seconds between heartbeats
    tolerance: int = d.TOLERANCE  # dead after interval * tolerance without a heartbeat
    listen: float | None = d.LISTEN  # startup listen period; None: one detection time
    handoff_timeout: float | None = None  # wait for a live owner's release; None: detection
    hold_down: float | None = None  # gather view changes this long; None: interval / 5
    coalesce: float | None = None  # received changes taken together; None: interval / 10
    isolation_limit: float = d.ISOLATION_LIMIT  # see clusterip.core.quorum
    forget_after: float = d.REPLAY_FORGET_AFTER  # replay state of a silent sender
    log_every: float = d.LOG_EVERY  # at most one log line per cause per this period

    def __post_init__(self) -> None:
        if not 1 <= self.buckets <= d.MAX_BUCKETS:
            raise ValueError(f"buckets {self.buckets} not in 1..{d.MAX_BUCKETS}")
        if not 0.001 <= self.interval <= 65.535:
            raise ValueError(f"interval {self.interval} s not in 0.001..65.535")
        if self.tolerance < 2:
            raise ValueError(f"tolerance {self.tolerance} below 2: one lost heartbeat = dead")
        for name in ("listen", "handoff_timeout", "hold_down", "coalesce"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def interval_ms(self) -> int:
        return max(1, round(self.interval * 1000))

    @property
    def dead_after(self) -> float:
        return self.interval * self.tolerance

    @property
    def listen_time(self) -> float:
        return self.dead_after if self.listen is None else self.listen

    @property
    def hold_time(self) -> float:
        """How long a changed member set is gathered before the assignment follows it: changes
        that arrive together (a cold start, a partition healing) make one reassignment, and
        nodes that turn active at the same instant hear each other before taking buckets."""
        return self.interval * d.HOLD_DOWN_FRACTION if self.hold_down is None else self.hold_down

    @property
    def coalesce_time(self) -> float:
        """Received changes that follow a full tick within this wait for its end, to be taken
        in together (clusterip.core.membership.tick)."""
        return self.interval * d.COALESCE_FRACTION if self.coalesce is None else self.coalesce

    @property
    def handoff_time(self) -> float:
        return self.dead_after if self.handoff_timeout is None else self.handoff_timeout


@dataclass(frozen=True)
class Cluster:
    """What identifies the cluster a VIP's agents form: VIP, key, fingerprint."""

    vip: ipaddress.IPv4Address | ipaddress.IPv6Address
    key: bytes = field(repr=False)
    fingerprint: bytes
    key_id: bytes
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)  # what it covers

    @classmethod
    def create(cls, cfg: VipConfig, key: bytes, *, buckets: int = d.BUCKETS) -> Cluster:
        kid = key_id(key)
        fields = fingerprint_fields(cfg, buckets=buckets, key_id=kid)
        return cls(cfg.vip, key, config_fingerprint(cfg, buckets=buckets, key_id=kid), kid, fields)
