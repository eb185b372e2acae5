"""Prometheus metrics of the agent (`--metrics ADDR:PORT`), on a registry of its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.owned = Gauge("clusterip_buckets_owned", "Buckets this node owns", ["vip"], registry=r)
        self.draining = Gauge(
            "clusterip_buckets_draining", "Buckets kept for established flows", ["vip"], registry=r
        )
        self.members = Gauge("clusterip_members", "Live members counted", ["vip"], registry=r)
        self.passive = Gauge(
            "clusterip_passive", "1 when this node stays out of the cluster", ["vip"], registry=r
        )
        self.rejected = Gauge(
            "clusterip_rejected_messages",
            "Rejected messages by cause",
            ["vip", "cause"],
            registry=r,
        )
        self.changes = Counter(
            "clusterip_ownership_changes", "Ownership changes applied", ["vip"], registry=r
        )
        self.apply_seconds = Gauge(
            "clusterip_last_apply_seconds",
            "Duration of the last nft transaction",
            ["vip"],
            registry=r,
        )

        self._xdp = XdpCollector()
        r.register(self._xdp)

    def set_xdp(self, vip: str, counters: Mapping[str, int] | None) -> None:
        """The XDP pre-filter's packet counters of `vip` (None: it has none)."""
        self._xdp.set(vip, counters)

    def serve(self, spec: str) -> None:
        host, _, port = spec.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)

    def update(
        self,
        vip: str,
        *,
        owned: int,
        draining: int,
        members: int,
        passive: bool,
        rejected: Mapping[str, int],
        apply_seconds: float,
    ) -> None:
        self.owned.labels(vip).set(owned)
        self.draining.labels(vip).set(draining)
        self.members.labels(vip).set(members)
        self.passive.labels(vip).set(1 if passive else 0)
        self.apply_seconds.labels(vip).set(apply_seconds)
        for cause, n in rejected.items():
            self.rejected.labels(vip, cause).set(n)


class XdpCollector:
    """`clusterip_xdp_packets_total{vip, verdict}`: what the pre-filter did (dropped: foreign
    buckets; forged: a multicast source; passed: on to nft; owned: the fast path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, int]] = {}

    def set(self, vip: str, counters: Mapping[str, int] | None) -> None:
        with self._lock:
            if counters is None:
                self._rows.pop(vip, None)
            else:
                self._rows[vip] = dict(counters)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "clusterip_xdp_packets",
            "Packets the XDP pre-filter handled, by verdict",
            labels=["vip", "verdict"],
        )
        with self._lock:
            for vip, row in sorted(self._rows.items()):
                for verdict, n in sorted(row.items()):
                    family.add_metric([vip, verdict], n)
        yield family
