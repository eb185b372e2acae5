"""Agent wire format: HELLO, HEARTBEAT and LEAVE messages, authenticated with HMAC-SHA256.

Every message is a fixed 52-byte header, a type-specific body and a 32-byte HMAC-SHA256 trailer
computed with the shared key over header and body. All integers are big-endian.

    offset size  field
     0      4    magic b"CIPA"
     4      1    version (1)
     5      1    type: 1 HELLO, 2 HEARTBEAT, 3 LEAVE
     6      1    state of the sender: 0 starting, 1 active, 2 draining, 3 leaving, 4 passive
     7      1    flags, 0 (reserved)
     8      2    node id of the sender (1..255)
    10      2    weight (0 = owns nothing)
    12      2    heartbeat interval of the sender, milliseconds (1..65535)
    14      2    body length
    16      4    VIP (IPv4)
    20      8    cluster fingerprint (see fingerprint.py)
    28      8    key id (public hash of the key)
    36      8    incarnation: grows at every restart of the sender (its start time in us)
    44      8    sequence number, from 1, +1 per message within an incarnation
    52      n    body
    52+n   32    HMAC-SHA256(key, header + body)

HEARTBEAT and HELLO body: view digest (8 bytes: the member set the sender assigns buckets to),
ack count (2 bytes), then per ack the node id (2 bytes) and incarnation (8 bytes) of a peer the
sender currently hears. A receiver counts the sender as a member only once its heartbeats ack
the receiver's own incarnation: that proves they were made after the receiver started, so
recorded old traffic can never pass for a live node. HELLO is the first heartbeat of an
incarnation and asks peers to answer at once. LEAVE has an empty body: the sender has released
its buckets and is going away.

`unpack` checks, in order: structure (`Malformed`), MAC (`BadMac`), then, if given, the
fingerprint (`ForeignFingerprint`). Replay is checked by `replay.ReplayGuard`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple

from clusterip.core.fingerprint import ID_BYTES, key_id

MAGIC = b"CIPA"
VERSION = 1
HEADER = struct.Struct(">4sBBBBHHHH4s8s8sQQ")
MAC_BYTES = 32
_ACK = struct.Struct(">HQ")
_HB_HEAD = struct.Struct(">8sH")
_KEPT = struct.Struct(">4sHH")  # client address, client port, bucket (0-based)
MAX_KEPT = 160  # flows per KEPT datagram: 52 + 2 + 160 * 8 + 32 bytes, under 1400
MAX_NODE_ID = 255
U16 = 0xFFFF
U64 = (1 << 64) - 1


class MsgType(IntEnum):
    HELLO = 1
    HEARTBEAT = 2
    LEAVE = 3
    KEPT = 4


class NodeState(IntEnum):
    STARTING = 0  # listening before taking buckets
    ACTIVE = 1
    DRAINING = 2  # alive, takes no buckets
    LEAVING = 3
    PASSIVE = 4  # refuses to serve (foreign cluster heard, duplicate id): owns nothing


class Rejected(Exception):
    """A received datagram that was refused; `cause` names why (one counter per cause)."""

    cause: ClassVar[str] = "rejected"

    def __init__(self, detail: str, header: Header | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.header = header


class Malformed(Rejected):
    cause = "malformed"


class BadMac(Rejected):
    cause = "bad_mac"


class Replay(Rejected):
    cause = "replay"


class ForeignFingerprint(Rejected):
    cause = "foreign_fingerprint"


class DuplicateNodeId(Rejected):
    cause = "duplicate_node_id"


REJECT_CAUSES = tuple(
    c.cause for c in (BadMac, Replay, Malformed, ForeignFingerprint, DuplicateNodeId)
)


@dataclass(frozen=True)
class Header:
    """The fixed header as read from the wire: not authenticated until the MAC is checked."""

    type: MsgType
    state: NodeState
    node_id: int
    weight: int
    interval_ms: int
    body_len: int
    vip: ipaddress.IPv4Address
    fingerprint: bytes
    key_id: bytes
    incarnation: int
    seq: int


class Ack(NamedTuple):
    """A peer the sender currently hears, identified by node id and incarnation."""

    node_id: int
    incarnation: int


@dataclass(frozen=True, kw_only=True)
class Message:
    """Fields common to every message (the header minus framing)."""

    TYPE: ClassVar[MsgType]
    node_id: int
    vip: ipaddress.IPv4Address
    fingerprint: bytes
    key_id: bytes
    incarnation: int
    seq: int
    weight: int = 1
    state: NodeState = NodeState.ACTIVE
    interval_ms: int = 50

    def __post_init__(self) -> None:
        _require(1 <= self.node_id <= MAX_NODE_ID, f"node id {self.node_id} not in 1..255")
        _require(0 <= self.weight <= U16, f"weight {self.weight} not in 0..65535")
        _require(1 <= self.interval_ms <= U16, f"interval {self.interval_ms} ms not in 1..65535")
        _require(len(self.fingerprint) == ID_BYTES, "fingerprint must be 8 bytes")
        _require(len(self.key_id) == ID_BYTES, "key id must be 8 bytes")
        _require(0 <= self.incarnation <= U64, "incarnation must fit in 64 bits")
        _require(1 <= self.seq <= U64, "seq must be 1..2**64-1")

    def body(self) -> bytes:
        return b""

    def pack(self, key: bytes) -> bytes:
        """Wire bytes: header + body + HMAC-SHA256(key, header + body)."""
        body = self.body()
        head = HEADER.pack(
            MAGIC,
            VERSION,
            self.TYPE,
            self.state,
            0,
            self.node_id,
            self.weight,
            self.interval_ms,
            len(body),
            self.vip.packed,
            self.fingerprint,
            self.key_id,
            self.incarnation,
            self.seq,
        )
        signed = head + body
        return signed + hmac.new(key, signed, hashlib.sha256).digest()

    @classmethod
    def unpack(cls, data: bytes, key: bytes, *, fingerprint: bytes | None = None) -> Message:
        """Authenticated message from wire bytes; see `unpack`."""
        msg = unpack(data, key, fingerprint=fingerprint)
        if not isinstance(msg, cls):
            raise Malformed(f"expected {cls.__name__}, got {type(msg).__name__}")
        return msg


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """I am alive: my state, weight, the member set I assign to, and the peers I hear."""

    TYPE = MsgType.HEARTBEAT
    view_digest: bytes = bytes(ID_BYTES)
    acks: tuple[Ack, ...] = ()
    _acked: dict[int, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.view_digest) == ID_BYTES, "view digest must be 8 bytes")
        _require(len(self.acks) <= U16, "too many acks")
        for ack in self.acks:
            _require(1 <= ack.node_id <= MAX_NODE_ID, f"ack node id {ack.node_id} not in 1..255")
            _require(0 <= ack.incarnation <= U64, "ack incarnation must fit in 64 bits")
        object.__setattr__(self, "_acked", {a.node_id: a.incarnation for a in self.acks})

    def acked(self, node_id: int) -> int | None:
        """Incarnation of `node_id` that the sender hears, if any."""
        return self._acked.get(node_id)

    def body(self) -> bytes:
        head = _HB_HEAD.pack(self.view_digest, len(self.acks))
        return head + b"".join(_ACK.pack(a.node_id, a.incarnation) for a in self.acks)


@dataclass(frozen=True, kw_only=True)
class Hello(Heartbeat):
    """The first heartbeat of an incarnation: peers answer at once instead of at their next tick."""

    TYPE = MsgType.HELLO


@dataclass(frozen=True, kw_only=True)
class Leave(Message):
    """I have released my buckets and am going away: remove me now, do not wait for a timeout."""

    TYPE = MsgType.LEAVE
    state: NodeState = NodeState.LEAVING


@dataclass(frozen=True, kw_only=True)
class Kept(Message):
    """Flows I keep in buckets I handed over to live nodes (draining): a new owner must not
    answer them, neither accept them nor reset them. One datagram carries at most MAX_KEPT;
    `part`/`parts` number the datagrams of one announcement."""

    TYPE = MsgType.KEPT
    part: int = 0
    parts: int = 1
    flows: tuple[tuple[ipaddress.IPv4Address, int, int], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.flows) <= MAX_KEPT, f"more than {MAX_KEPT} flows in one KEPT")
        _require(0 <= self.part < self.parts <= U16, "bad KEPT part numbering")

    def body(self) -> bytes:
        head = struct.pack(">HHH", self.part, self.parts, len(self.flows))
        return head + b"".join(_KEPT.pack(a.packed, p, b) for a, p, b in self.flows)


def _common(header: Header) -> dict[str, Any]:
    """The fields every message takes from its header."""
    return {
        "node_id": header.node_id,
        "vip": header.vip,
        "fingerprint": header.fingerprint,
        "key_id": header.key_id,
        "incarnation": header.incarnation,
        "seq": header.seq,
        "weight": header.weight,
        "state": header.state,
        "interval_ms": header.interval_ms,
    }


def _kept(header: Header, body: bytes) -> Kept:
    if len(body) < 6:
        raise Malformed(f"KEPT body too short: {len(body)} bytes", header)
    part, parts, count = struct.unpack_from(">HHH", body)
    rest = body[6:]
    if len(rest) != count * _KEPT.size:
        raise Malformed(f"{count} kept flows announced, {len(rest)} bytes follow", header)
    flows = tuple((ipaddress.IPv4Address(a), p, b) for a, p, b in _KEPT.iter_unpack(rest))
    return Kept(
        **_common(header),
        part=part,
        parts=parts,
        flows=flows,
    )


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def peek(data: bytes) -> Header:
    """The unauthenticated header (for routing by VIP and for reports); raises Malformed."""
    if len(data) < HEADER.size + MAC_BYTES:
        raise Malformed(f"too short: {len(data)} bytes")
    (
        magic,
        version,
        mtype,
        state,
        flags,
        node,
        weight,
        interval,
        body_len,
        vip,
        fp,
        kid,
        inc,
        seq,
    ) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Malformed(f"bad magic {magic!r}")
    if version != VERSION:
        raise Malformed(f"unsupported version {version}")
    try:
        header = Header(
            type=MsgType(mtype),
            state=NodeState(state),
            node_id=node,
            weight=weight,
            interval_ms=interval,
            body_len=body_len,
            vip=ipaddress.IPv4Address(vip),
            fingerprint=fp,
            key_id=kid,
            incarnation=inc,
            seq=seq,
        )
    except ValueError as exc:
        raise Malformed(f"bad header field: {exc}") from None
    if flags != 0:
        raise Malformed(f"unknown flags {flags:#x}", header)
    if len(data) != HEADER.size + body_len + MAC_BYTES:
        raise Malformed(f"length {len(data)} does not match body length {body_len}", header)
    if not 1 <= node <= MAX_NODE_ID or interval == 0 or seq == 0:
        raise Malformed(f"field out of range (node {node}, interval {interval}, seq {seq})", header)
    return header


def unpack(data: bytes, key: bytes, *, fingerprint: bytes | None = None) -> Message:
    """Authenticated message from wire bytes.

    Raises Malformed (bad structure), BadMac (wrong key, corrupted or forged), or, when
    `fingerprint` is given and differs, ForeignFingerprint. Each carries the header if it could
    be read.
    """
    header = peek(data)
    end = HEADER.size + header.body_len
    mac = hmac.new(key, data[:end], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, data[end:]):
        ours = key_id(key)
        if header.key_id != ours:
            why = f"signed with another key (key id {header.key_id.hex()}, ours {ours.hex()})"
        else:
            why = "MAC does not match with the same key id: corrupted or forged"
        raise BadMac(why, header)
    if fingerprint is not None and header.fingerprint != fingerprint:
        raise ForeignFingerprint(
            f"cluster fingerprint {header.fingerprint.hex()}, ours {fingerprint.hex()}", header
        )
    body = data[HEADER.size : end]
    try:
        if header.type == MsgType.LEAVE:
            if body:
                raise Malformed(f"LEAVE with a {len(body)}-byte body", header)
            return Leave(
                **_common(header),
            )
        if header.type == MsgType.KEPT:
            return _kept(header, body)
        return _heartbeat(header, body)
    except ValueError as exc:
        raise Malformed(f"bad field: {exc}", header) from None


def _heartbeat(header: Header, body: bytes) -> Heartbeat:
    if len(body) < _HB_HEAD.size:
        raise Malformed(f"heartbeat body too short: {len(body)} bytes", header)
    digest, count = _HB_HEAD.unpack_from(body)
    rest = body[_HB_HEAD.size :]
    if len(rest) != count * _ACK.size:
        raise Malformed(f"{count} acks announced, {len(rest)} bytes follow", header)
    acks = tuple(Ack(n, i) for n, i in _ACK.iter_unpack(rest))
    cls = Hello if header.type == MsgType.HELLO else Heartbeat
    return cls(
        **_common(header),
        view_digest=digest,
        acks=acks,
    )
