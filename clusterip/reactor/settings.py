"""The agent's own settings (beyond the VIP configuration), from flags or a TOML `[agent]` table."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import ConfigError, read_toml
from clusterip.reactor.transport import DEFAULT_GROUP, DEFAULT_PORT, parse_group

DEFAULT_INTERVAL_MS = 50
DEFAULT_TOLERANCE = 5
DEFAULT_DRAIN_TIMEOUT = 300.0
MAX_NODE_ID = 255  # the wire format carries one byte (clusterip.agent.wire)


@dataclass(frozen=True)
class AgentSettings:
    node_id: int
    key_file: str
    weight: int = 1
    buckets: int = 4096
    interval: float = DEFAULT_INTERVAL_MS / 1000
    tolerance: int = DEFAULT_TOLERANCE
    peers: tuple[str, ...] = ()
    group: str = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    notify: str | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    metrics: str | None = None
    realtime: int = 10  # SCHED_RR priority of the agent; 0: normal scheduling
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def detection_time(self) -> float:
        return self.interval * self.tolerance


def _int(value: Any, what: str, low: int, high: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"bad {what} {str(value)!r}: expected a number from {low} to {high}"
        ) from None
    if not low <= n <= high:
        raise ConfigError(f"bad {what} {str(value)!r}: expected a number from {low} to {high}")
    return n


def _float(value: Any, what: str, low: float, high: float) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"bad {what} {str(value)!r}: expected {low} to {high}") from None
    if not low <= x <= high:
        raise ConfigError(f"bad {what} {str(value)!r}: expected {low} to {high}")
    return x


def build_settings(
    *,
    node_id: Any,
    key_file: Any,
    weight: Any = 1,
    buckets: Any = 4096,
    interval_ms: Any = DEFAULT_INTERVAL_MS,
    tolerance: Any = DEFAULT_TOLERANCE,
    peers: Any = (),
    group: Any = DEFAULT_GROUP,
    port: Any = DEFAULT_PORT,
    notify: Any = None,
    drain_timeout: Any = DEFAULT_DRAIN_TIMEOUT,
    metrics: Any = None,
    realtime: Any = 10,
) -> AgentSettings:
    if node_id is None:
        raise ConfigError("missing --node-id (a small integer unique in the cluster, 1 to 255)")
    if not key_file:
        raise ConfigError("missing --key-file (the shared secret, at least 16 bytes)")
    peer_list = []
    for p in [peers] if isinstance(peers, str) else list(peers or ()):
        for part in str(p).split(","):
            if part.strip():
                try:
                    peer_list.append(str(ipaddress.IPv4Address(part.strip())))
                except ValueError:
                    raise ConfigError(f"bad peer address {part.strip()!r}: expected IPv4") from None
    if metrics is not None and metrics != "":
        host, _, mport = str(metrics).rpartition(":")
        _int(mport, "metrics port", 1, 65535)
        if host:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ConfigError(f"bad metrics address {metrics!r}: expected ADDR:PORT") from None
    return AgentSettings(
        node_id=_int(node_id, "node id", 1, MAX_NODE_ID),
        key_file=str(key_file),
        weight=_int(weight, "weight", 0, 1000),
        buckets=_int(buckets, "bucket count", 1, 65535),
        interval=_int(interval_ms, "heartbeat interval (ms)", 5, 10_000) / 1000,
        tolerance=_int(tolerance, "tolerance (missed heartbeats)", 2, 100),
        peers=tuple(peer_list),
        group=parse_group(str(group)),
        port=_int(port, "heartbeat port", 1, 65535),
        notify=str(notify) if notify else None,
        drain_timeout=_float(drain_timeout, "drain timeout (s)", 0.0, 86400.0),
        metrics=str(metrics) if metrics else None,
        realtime=_int(realtime, "realtime priority", 0, 99),
    )


SETTING_KEYS = (
    "node_id",
    "key_file",
    "weight",
    "buckets",
    "interval_ms",
    "tolerance",
    "peers",
    "group",
    "port",
    "notify",
    "drain_timeout",
    "metrics",
    "realtime",
)


def settings_from_toml(path: str, overrides: Mapping[str, Any]) -> AgentSettings:
    """The `[agent]` table of a config file; flags given on the command line win."""
    table = read_toml(path).get("agent", {})
    if not isinstance(table, dict):
        raise ConfigError(f"bad config file {path!r}: [agent] must be a table")
    for key in table:
        if key not in SETTING_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in [agent]: allowed are {', '.join(sorted(SETTING_KEYS))}"
            )
    merged = {**table, **{k: v for k, v in overrides.items() if v not in (None, ())}}
    return build_settings(**merged)
