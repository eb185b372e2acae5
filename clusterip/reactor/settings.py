"""The agent's own settings (beyond the VIP configuration), from flags or a TOML `[agent]` table."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import ConfigError, read_toml
from clusterip.core import defaults as d
from clusterip.core.defaults import SETTING_KEYS
from clusterip.reactor.transport import parse_group
from clusterip.xdp.spec import parse_cli_mode

__all__ = ["SETTING_KEYS", "AgentSettings", "build_settings", "settings_from_toml"]


@dataclass(frozen=True)
class AgentSettings:
    node_id: int
    key_file: str
    allow_readable_key: bool = False
    weight: int = d.WEIGHT
    buckets: int = d.BUCKETS
    interval: float = d.INTERVAL_MS / 1000
    tolerance: int = d.TOLERANCE
    peers: tuple[str, ...] = ()
    group: str = d.GROUP
    port: int = d.PORT
    notify: str | None = None
    drain_timeout: float = d.DRAIN_TIMEOUT
    restart_grace: float = d.RESTART_GRACE
    metrics: str | None = None
    realtime: int = d.REALTIME  # SCHED_RR priority of the agent; 0: normal scheduling
    xdp: str = d.XDP  # the XDP pre-filter: auto, on, off
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


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"bad {what} {str(value)!r}: expected true or false")


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
    allow_readable_key: Any = False,
    weight: Any = d.WEIGHT,
    buckets: Any = d.BUCKETS,
    interval_ms: Any = d.INTERVAL_MS,
    tolerance: Any = d.TOLERANCE,
    peers: Any = (),
    group: Any = d.GROUP,
    port: Any = d.PORT,
    notify: Any = None,
    drain_timeout: Any = d.DRAIN_TIMEOUT,
    restart_grace: Any = d.RESTART_GRACE,
    metrics: Any = None,
    realtime: Any = d.REALTIME,
    xdp: Any = d.XDP,
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
        node_id=_int(node_id, "node id", 1, d.MAX_NODE_ID),
        key_file=str(key_file),
        allow_readable_key=_bool(allow_readable_key, "allow_readable_key"),
        weight=_int(weight, "weight", 0, d.MAX_WEIGHT),
        buckets=_int(buckets, "bucket count", 1, d.MAX_BUCKETS),
        interval=_int(interval_ms, "heartbeat interval (ms)", 5, 10_000) / 1000,
        tolerance=_int(tolerance, "tolerance (missed heartbeats)", 2, 100),
        peers=tuple(peer_list),
        group=parse_group(str(group)),
        port=_int(port, "heartbeat port", 1, 65535),
        notify=str(notify) if notify else None,
        drain_timeout=_float(drain_timeout, "drain timeout (s)", 0.0, 86400.0),
        restart_grace=_float(restart_grace, "restart grace (s)", 0.0, 600.0),
        metrics=str(metrics) if metrics else None,
        realtime=_int(realtime, "realtime priority", 0, 99),
        xdp=parse_cli_mode(xdp),
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
