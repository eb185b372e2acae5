"""Flows other live nodes keep: KEPT announcements in, the datapath's `kept` set out.

A node that hands a bucket over to a live node keeps the bucket's established flows (it
drains). It announces them, (client address, client port), before the heartbeat that lets the
new owner take the bucket, and again every KEPT_REFRESH seconds while it drains. Every other
node drops those flows at ingress. That is not what a move's correctness rests on (each node
accepts a moving bucket's mid-flow packets only for flows it owns: clusterip.render), but what
spares a live node's flows when a death elsewhere makes other nodes reset the unknown flows of
the buckets they own. Entries not refreshed for KEPT_TTL seconds, or of a node that is gone,
are forgotten. KEPT messages are authenticated and replay-checked by the membership like every
other message (one sequence per incarnation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clusterip.core import defaults
from clusterip.core.params import Cluster
from clusterip.core.wire import Address, Kept, max_kept

REFRESH = defaults.KEPT_REFRESH
KEPT_TTL = defaults.KEPT_TTL

KeptFlow = tuple[str, int]  # client address, client port
ADOPTED = 0  # node ids are 1..255: the flows a predecessor's datapath kept, by whoever
Flow = tuple[str, int, int]  # client address, client port, bucket (1-based)


@dataclass
class KeptBook:
    parts: dict[int, dict[int, tuple[frozenset[KeptFlow], float]]] = field(default_factory=dict)
    # node -> (announcement, parts received of it): an announcement is known once whole
    _incoming: dict[int, tuple[int, set[int], int]] = field(default_factory=dict)
    complete: dict[int, int] = field(default_factory=dict)  # node -> latest whole announcement

    def take(self, msg: Kept, now: float) -> int | None:
        """An authenticated, fresh KEPT; returns the announcement it completes, if it does."""
        book = self.parts.setdefault(msg.node_id, {})
        for stale in [p for p in book if p >= msg.parts]:
            del book[stale]
        book[msg.part] = (frozenset((str(a), port) for a, port, _b in msg.flows), now)
        announcement = msg.seq - msg.part
        current = self._incoming.get(msg.node_id)
        if current is None or current[0] != announcement:
            if current is not None and current[0] > announcement:
                return None  # a part of an older announcement, late
            current = (announcement, set(), msg.parts)
            self._incoming[msg.node_id] = current
        current[1].add(msg.part)
        if len(current[1]) == current[2] and self.complete.get(msg.node_id, 0) < announcement:
            self.complete[msg.node_id] = announcement
            return announcement
        return None

    def adopt(self, flows: frozenset[KeptFlow], now: float) -> None:
        """What a predecessor's datapath dropped as kept by others (planned restart): kept as
        an announcement of its own (node 0) until it expires, by when the nodes that keep them
        have announced them again (every KEPT_REFRESH) if they still do."""
        if flows:
            self.parts[ADOPTED] = {0: (frozenset(flows), now)}

    def forget(self, node: int, at: float | None = None) -> None:
        """Forget what `node` keeps: now, or its flows only at `at` (they expire then)."""
        self._incoming.pop(node, None)
        self.complete.pop(node, None)
        book = self.parts.pop(node, None)
        if at is not None and book:
            self.parts[node] = {p: (f, min(t, at - KEPT_TTL)) for p, (f, t) in book.items()}

    def announcers(self) -> frozenset[int]:
        """The nodes whose kept flows are known."""
        return frozenset(self.parts)

    def current(self, now: float) -> frozenset[KeptFlow]:
        out: set[KeptFlow] = set()
        for node in list(self.parts):
            book = self.parts[node]
            # The same sum as deadline(): an entry is gone at the very time it says.
            for part in [p for p, (_f, t) in book.items() if now >= t + KEPT_TTL]:
                del book[part]
            if not book:
                del self.parts[node]
            for flows, _t in book.values():
                out |= flows
        return frozenset(out)

    def deadline(self) -> float | None:
        """When the next entry expires, if any."""
        times = [t + KEPT_TTL for book in self.parts.values() for _f, t in book.values()]
        return min(times, default=None)


@dataclass
class Announcer:
    """This node's side: KEPT messages for the flows it keeps."""

    cluster: Cluster
    last: float = -1e18
    announcement: int = 0  # seq of the first KEPT of the latest announcement
    announced: bool = False  # whether the last announcement listed any flow

    def due(self, now: float, draining: bool) -> bool:
        return (draining and now - self.last >= REFRESH) or (not draining and self.announced)

    def next_due(self, draining: bool) -> float | None:
        if draining:
            return self.last + REFRESH
        return None

    def messages(
        self,
        flows: Iterable[Flow],
        draining: frozenset[int],
        now: float,
        header: Callable[[], dict[str, object]],
    ) -> list[Kept]:
        """KEPT messages for our flows in `draining` buckets; one empty one when nothing is
        kept any more, so that the others forget at once. `header` gives each message its
        common fields (node id, incarnation, next sequence number, ...)."""
        family = type(self.cluster.vip)
        kept: list[tuple[Address, int, int]] = [
            (family(a), p, b) for a, p, b in flows if b in draining
        ]
        size = max_kept(self.cluster.vip)
        chunks = [kept[i : i + size] for i in range(0, len(kept), size)] or [[]]
        out = [
            Kept(**header(), part=part, parts=len(chunks), flows=tuple(chunk))  # type: ignore[arg-type]
            for part, chunk in enumerate(chunks)
        ]
        self.announcement = out[0].seq
        self.last = now
        self.announced = bool(kept)
        return out
