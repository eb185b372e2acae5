"""Flows other live nodes keep: KEPT announcements in, the datapath's `kept` set out.

A node that hands a bucket over to a live node keeps the bucket's established flows (it
drains). It announces them, (client address, client port), before the heartbeat that lets the
new owner take the bucket, and again every REFRESH seconds while it drains. Every other node
drops those flows at ingress: the new owner neither accepts them nor answers them with a RST,
even when it took the bucket from a node that died meanwhile. Entries not refreshed for
KEPT_TTL seconds, or of a node that is gone, are forgotten.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from clusterip.core import defaults
from clusterip.core.params import Cluster
from clusterip.core.replay import ReplayGuard
from clusterip.core.wire import MAX_KEPT, Kept
from clusterip.flows import Flow

REFRESH = defaults.KEPT_REFRESH
KEPT_TTL = defaults.KEPT_TTL

KeptFlow = tuple[str, int]  # client address, client port


@dataclass
class KeptBook:
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    parts: dict[int, dict[int, tuple[frozenset[KeptFlow], float]]] = field(default_factory=dict)

    def take(self, msg: Kept, now: float) -> None:
        """An authenticated KEPT (raises Replay, from the guard, if it is old)."""
        self.guard.admit(msg.node_id, msg.incarnation, msg.seq, now)
        book = self.parts.setdefault(msg.node_id, {})
        for stale in [p for p in book if p >= msg.parts]:
            del book[stale]
        book[msg.part] = (frozenset((str(a), port) for a, port, _b in msg.flows), now)

    def forget(self, node: int) -> None:
        self.parts.pop(node, None)

    def current(self, now: float) -> frozenset[KeptFlow]:
        out: set[KeptFlow] = set()
        for node in list(self.parts):
            book = self.parts[node]
            for part in [p for p, (_f, t) in book.items() if now - t > KEPT_TTL]:
                del book[part]
            for flows, _t in book.values():
                out |= flows
        return frozenset(out)


@dataclass
class Announcer:
    """This node's side: its KEPT messages, with a sequence of their own."""

    node_id: int
    incarnation: int
    cluster: Cluster
    seq: int = 0
    last: float = -1e18
    announced: bool = False  # whether the last announcement listed any flow

    def due(self, now: float, draining: bool) -> bool:
        return (draining and now - self.last >= REFRESH) or (not draining and self.announced)

    def messages(self, flows: Sequence[Flow], draining: set[int], now: float) -> list[bytes]:
        """KEPT datagrams for our flows in `draining` buckets (1-based); one empty one when
        nothing is kept any more, so that the others forget at once."""
        kept = [(ipaddress.IPv4Address(a), p, b - 1) for a, p, b in flows if b in draining]
        chunks = [kept[i : i + MAX_KEPT] for i in range(0, len(kept), MAX_KEPT)] or [[]]
        out = []
        for part, chunk in enumerate(chunks):
            self.seq += 1
            msg = Kept(
                node_id=self.node_id,
                vip=self.cluster.vip,
                fingerprint=self.cluster.fingerprint,
                key_id=self.cluster.key_id,
                incarnation=self.incarnation,
                seq=self.seq,
                part=part,
                parts=len(chunks),
                flows=tuple(chunk),
            )
            out.append(msg.pack(self.cluster.key))
        self.last = now
        self.announced = bool(kept)
        return out
