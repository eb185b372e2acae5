"""What the membership state machine reports to the I/O layer, and what `view()` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from clusterip.core.wire import NodeState

Level = Literal["info", "warning", "error"]


@dataclass(frozen=True)
class PeerUp:
    """A peer incarnation was heard for the first time (not yet necessarily a member)."""

    node_id: int
    incarnation: int
    address: str


@dataclass(frozen=True)
class PeerDown:
    """A peer incarnation is gone: `reason` is "timeout", "leave", "restarted" (a new
    incarnation that does not continue it) or "restart timed out" (no successor in time)."""

    node_id: int
    incarnation: int
    reason: str


@dataclass(frozen=True)
class PeerContinued:
    """A peer's process was replaced by a successor that continues it (planned restart): the
    same node, serving the same buckets, under a new incarnation. Nothing of it is orphaned."""

    node_id: int
    old: int
    new: int


@dataclass(frozen=True)
class StateChanged:
    """This node's own state changed (e.g. starting -> active, active -> passive)."""

    old: NodeState
    new: NodeState
    reason: str


@dataclass(frozen=True)
class OwnershipChanged:
    """The buckets this node accepts new connections for changed.

    Apply `lost` before sending the next heartbeat: peers take a bucket from a live node only
    once its heartbeat shows the new view, which must mean the bucket is released.

    - gained: bucket -> previous owner (None if nobody owned it).
    - orphaned: the gained buckets whose previous owner is dead, left or unknown: their
      established flows have no server any more (the datapath should reset them). The others
      came from a live node, which keeps serving its established flows.
    - lost: bucket -> new owner (None if nobody, e.g. this node went passive or is leaving).
    - owned: everything owned after the change.
    - drain: whether lost buckets keep this node's established flows (False when it stops
      serving altogether: isolated, passive, leaving; others take those flows over).

    Buckets are 1-based, as the datapath numbers them.
    """

    owned: frozenset[int]
    gained: Mapping[int, int | None] = field(default_factory=dict)
    orphaned: frozenset[int] = frozenset()
    lost: Mapping[int, int | None] = field(default_factory=dict)
    drain: bool = True


@dataclass(frozen=True)
class Notice:
    """A log line, already rate-limited per cause (at most one per cause per period)."""

    level: Level
    cause: str
    text: str


Event = PeerUp | PeerDown | PeerContinued | StateChanged | OwnershipChanged | Notice


@dataclass(frozen=True)
class MemberInfo:
    """A peer as this node sees it."""

    node_id: int
    incarnation: int
    address: str
    state: NodeState
    weight: int
    last_heard: float
    acks_us: bool  # its heartbeats show it hears our current incarnation
    counted: bool  # in the member set buckets are assigned to
    via: int | None = None  # heard only through this node (one-way loss between us)


@dataclass(frozen=True)
class RefusedInfo:
    """A sender whose messages were refused, by (address, claimed node id)."""

    address: str
    node_id: int | None
    cause: str
    detail: str
    count: int
    last_seen: float


@dataclass(frozen=True)
class View:
    """Everything a status command shows about one VIP's membership."""

    node_id: int
    incarnation: int
    state: NodeState
    reason: str
    members: tuple[MemberInfo, ...]
    refused: tuple[RefusedInfo, ...]
    assigned_to: Mapping[int, int]  # the member set (node id -> weight) buckets go to
    view_digest: bytes
    owned: frozenset[int]
    pending: frozenset[int]  # assigned to us, waiting for the live previous owner to release
    rejected: Mapping[str, int]  # rejections per cause
    base: frozenset[int] = frozenset()  # the last known membership the quorum is counted in
    carrier: bool = True
