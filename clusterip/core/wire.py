"""Agent wire format (version 2): HELLO, HEARTBEAT, LEAVE, RESTART and KEPT messages,
authenticated with HMAC-SHA256.

Every message is a fixed 64-byte header, a type-specific body and a 32-byte HMAC-SHA256 trailer
computed with the shared key over header and body. All integers are big-endian.

    offset size  field
     0      4    magic b"CIPA"
     4      1    version (2)
     5      1    type: 1 HELLO, 2 HEARTBEAT, 3 LEAVE, 4 KEPT, 5 RESTART
     6      1    state of the sender (NodeState)
     7      1    flags: bit 0 = the sender keeps flows of buckets it handed over (drains)
     8      2    node id of the sender (1..255)
    10      2    weight (0 = owns nothing)
    12      2    heartbeat interval of the sender, milliseconds (1..65535)
    14      2    body length
    16     16    VIP (IPv6; an IPv4 VIP as ::ffff:a.b.c.d)
    32      8    cluster fingerprint (see fingerprint.py)
    40      8    key id (public hash of the key)
    48      8    incarnation: grows at every restart of the sender (its start time in us)
    56      8    sequence number, from 1, +1 per message within an incarnation (all types)
    64      n    body
    64+n   32    HMAC-SHA256(key, header + body)

HEARTBEAT and HELLO body:
    8   view digest (of the member list below)
    8   previous incarnation: the one this incarnation continues after a planned restart, or 0
    8   kept: the sequence number of the first KEPT of the sender's latest announcement, or 0.
        A node takes a bucket from a peer that drains only once it has that announcement whole:
        what the peer keeps is dropped before the new owner answers anything of it, even if a
        KEPT and a heartbeat cross, or a KEPT is lost and must wait for its refresh.
    2   member count, then per member: node id (2), weight (2): the member set the sender
        assigns buckets to (its view), so a receiver knows exactly which buckets it claims
    2   ack count, then per ack: node id (2), incarnation (8), weight (2), state (1), flags (1;
        bit 0: a member of the sender's view by direct contact), age (2, ms since the sender
        last heard it, rounded down to two of its intervals): a peer the sender hears now.
A receiver counts the sender as a member only once its heartbeats ack the receiver's own
incarnation: that proves they were made after the receiver started, so recorded old traffic can
never pass for a live node. Acks flagged as members also tell the receiver about nodes it
cannot hear itself (one-way loss), so every node that hears any member builds the same view.
HELLO is the first heartbeat of an incarnation and asks peers to answer at once.

LEAVE: empty body. The sender has released its buckets and is going away.
RESTART: grace (4 bytes, ms). The sender's process stops; its node keeps serving exactly as now
for `grace`, and a successor with the same node id (its HELLO names this incarnation as the
previous one) continues it: peers keep its buckets where they are meanwhile.
KEPT: part (2), parts (2), count (2), then per flow: client address (4 or 16 bytes, the VIP's
family), client port (2), bucket (2, 1-based): flows the sender keeps in buckets it handed to
live nodes; every other node drops them.
CONFIG: the sender's cluster configuration as canonical JSON (what the fingerprint covers),
sent now and then, so a node that refuses another fingerprint can say which setting differs.

`unpack` checks, in order: structure (`Malformed`), MAC (`BadMac`), then, if given, the
fingerprint (`ForeignFingerprint`). Replay is checked by `replay.ReplayGuard`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple

from clusterip.core.fingerprint import ID_BYTES, key_id

MAGIC = b"CIPA"
VERSION = 2
HEADER = struct.Struct(">4sBBBBHHHH16s8s8sQQ")
MAC_BYTES = 32
FLAG_DRAINING = 0x01
_ACK = struct.Struct(">HQHBBH")
_MEMBER = struct.Struct(">HH")
_HB_HEAD = struct.Struct(">8sQQ")
_COUNT = struct.Struct(">H")
_KEPT_HEAD = struct.Struct(">HHH")
_RESTART = struct.Struct(">I")
DATAGRAM_LIMIT = 1400  # a KEPT datagram, header and MAC included, stays under this
KEPT_BUDGET = DATAGRAM_LIMIT - HEADER.size - _KEPT_HEAD.size - MAC_BYTES  # bytes of flows
MAX_NODE_ID = 255
U16 = 0xFFFF
U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class MsgType(IntEnum):
    HELLO = 1
    HEARTBEAT = 2
    LEAVE = 3
    KEPT = 4
    RESTART = 5
    CONFIG = 6


class NodeState(IntEnum):
    STARTING = 0  # listening before taking buckets
    ACTIVE = 1
    DRAINING = 2  # alive, takes no buckets
    LEAVING = 3
    PASSIVE = 4  # refuses to serve (another cluster heard, duplicate id): owns nothing
    ISOLATED = 5  # lost the majority of its last known members at once: owns nothing
    RESTARTING = 6  # its process stops; the node serves as it was until a successor continues


_STATES = {s.value: s for s in NodeState}


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


def vip_bytes(vip: Address) -> bytes:
    if isinstance(vip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + vip.packed).packed
    return vip.packed


def vip_of(raw: bytes) -> Address:
    v6 = ipaddress.IPv6Address(raw)
    return v6.ipv4_mapped or v6


@dataclass(frozen=True)
class Header:
    """The fixed header as read from the wire: not authenticated until the MAC is checked."""

    type: MsgType
    state: NodeState
    flags: int
    node_id: int
    weight: int
    interval_ms: int
    body_len: int
    vip: Address
    fingerprint: bytes
    key_id: bytes
    incarnation: int
    seq: int


class Ack(NamedTuple):
    """A peer the sender hears now: its incarnation, and what it reported of itself."""

    node_id: int
    incarnation: int
    weight: int = 0
    state: NodeState = NodeState.ACTIVE
    member: bool = False  # in the sender's view by direct contact (relayed to others)
    age_ms: int = 0  # since the sender last heard it (rounded down)


@dataclass(frozen=True, kw_only=True)
class Message:
    """Fields common to every message (the header minus framing)."""

    TYPE: ClassVar[MsgType]
    node_id: int
    vip: Address
    fingerprint: bytes
    key_id: bytes
    incarnation: int
    seq: int
    weight: int = 1
    state: NodeState = NodeState.ACTIVE
    interval_ms: int = 50
    flags: int = 0

    def __post_init__(self) -> None:
        _require(1 <= self.node_id <= MAX_NODE_ID, f"node id {self.node_id} not in 1..255")
        _require(0 <= self.weight <= U16, f"weight {self.weight} not in 0..65535")
        _require(1 <= self.interval_ms <= U16, f"interval {self.interval_ms} ms not in 1..65535")
        _require(len(self.fingerprint) == ID_BYTES, "fingerprint must be 8 bytes")
        _require(len(self.key_id) == ID_BYTES, "key id must be 8 bytes")
        _require(0 <= self.incarnation <= U64, "incarnation must fit in 64 bits")
        _require(1 <= self.seq <= U64, "seq must be 1..2**64-1")
        _require(self.flags & ~FLAG_DRAINING == 0, f"unknown flags {self.flags:#x}")

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
            self.flags,
            self.node_id,
            self.weight,
            self.interval_ms,
            len(body),
            vip_bytes(self.vip),
            self.fingerprint,
            self.key_id,
            self.incarnation,
            self.seq,
        )
        signed = head + body
        return signed + hmac.digest(key, signed, hashlib.sha256)

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
    previous: int = 0  # the incarnation this one continues after a planned restart
    kept: int = 0  # seq of the first KEPT of the latest announcement (0: none)
    members: tuple[tuple[int, int], ...] = ()  # (node id, weight), sorted
    acks: tuple[Ack, ...] = ()
    _acked: dict[int, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.view_digest) == ID_BYTES, "view digest must be 8 bytes")
        _require(0 <= self.previous <= U64, "previous incarnation must fit in 64 bits")
        _require(0 <= self.kept <= U64, "kept announcement must fit in 64 bits")
        _require(len(self.acks) <= MAX_NODE_ID and len(self.members) <= MAX_NODE_ID, "too long")
        # One pass each when all is well (decoding checks every heartbeat); the details only
        # when something is out of range.
        if not all(1 <= n <= MAX_NODE_ID and 0 <= w <= U16 for n, w in self.members):
            for node, weight in self.members:
                _require(1 <= node <= MAX_NODE_ID, f"member id {node} not in 1..255")
                _require(0 <= weight <= U16, f"member weight {weight} not in 0..65535")
        if not all(
            1 <= n <= MAX_NODE_ID and 0 <= i <= U64 and 0 <= w <= U16 and 0 <= age <= U16
            for n, i, w, _s, _m, age in self.acks
        ):
            for ack in self.acks:
                _require(
                    1 <= ack.node_id <= MAX_NODE_ID, f"ack node id {ack.node_id} not in 1..255"
                )
                _require(0 <= ack.incarnation <= U64, "ack incarnation must fit in 64 bits")
                _require(0 <= ack.weight <= U16, "ack weight must fit in 16 bits")
                _require(0 <= ack.age_ms <= U16, "ack age must fit in 16 bits")
        object.__setattr__(self, "_acked", {a.node_id: a.incarnation for a in self.acks})

    def acked(self, node_id: int) -> int | None:
        """Incarnation of `node_id` that the sender hears, if any."""
        return self._acked.get(node_id)

    def body(self) -> bytes:
        parts = [
            _HB_HEAD.pack(self.view_digest, self.previous, self.kept),
            _COUNT.pack(len(self.members)),
            *(_MEMBER.pack(n, w) for n, w in self.members),
            _COUNT.pack(len(self.acks)),
            *(
                _ACK.pack(a.node_id, a.incarnation, a.weight, a.state, int(a.member), a.age_ms)
                for a in self.acks
            ),
        ]
        return b"".join(parts)


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
class Restart(Message):
    """My process stops; my node keeps serving as it is for `grace_ms`, and a successor with
    my node id continues me: keep my buckets where they are until then."""

    TYPE = MsgType.RESTART
    state: NodeState = NodeState.RESTARTING
    grace_ms: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.grace_ms <= U32, "grace must fit in 32 bits (ms)")

    def body(self) -> bytes:
        return _RESTART.pack(self.grace_ms)


@dataclass(frozen=True, kw_only=True)
class Config(Message):
    """What my fingerprint covers, readable: lets a mismatched peer say what differs."""

    TYPE = MsgType.CONFIG
    fields: bytes = b"{}"  # canonical JSON

    def body(self) -> bytes:
        return self.fields


def config_fields(data: bytes) -> dict[str, object] | None:
    """The configuration in a CONFIG datagram, without checking its MAC (for diagnostics
    only: a sender with another key is exactly who we want to read it from)."""
    try:
        header = peek(data)
    except Malformed:
        return None
    if header.type != MsgType.CONFIG:
        return None
    raw = data[HEADER.size : HEADER.size + header.body_len]
    try:
        fields = json.loads(raw)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


KeptFlow = tuple[Address, int, int]  # client address, client port, bucket (1-based)


@dataclass(frozen=True, kw_only=True)
class Kept(Message):
    """Flows I keep in buckets I handed over to live nodes (draining): a new owner must not
    answer them, neither accept them nor reset them. `part`/`parts` number the datagrams of
    one announcement."""

    TYPE = MsgType.KEPT
    part: int = 0
    parts: int = 1
    flows: tuple[KeptFlow, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.flows) <= max_kept(self.vip), "too many flows in one KEPT")
        _require(0 <= self.part < self.parts <= U16, "bad KEPT part numbering")
        for addr, _port, _bucket in self.flows:
            _require(addr.version == self.vip.version, "a kept flow of another address family")

    def body(self) -> bytes:
        head = _KEPT_HEAD.pack(self.part, self.parts, len(self.flows))
        return head + b"".join(a.packed + struct.pack(">HH", p, b) for a, p, b in self.flows)


def max_kept(vip: Address) -> int:
    """Flows per KEPT datagram for a VIP of this family."""
    return KEPT_BUDGET // (len(vip.packed) + 4)


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
        "flags": header.flags,
    }


def _kept(header: Header, body: bytes) -> Kept:
    if len(body) < _KEPT_HEAD.size:
        raise Malformed(f"KEPT body too short: {len(body)} bytes", header)
    part, parts, count = _KEPT_HEAD.unpack_from(body)
    size = len(header.vip.packed)
    rec = struct.Struct(f">{size}sHH")
    rest = body[_KEPT_HEAD.size :]
    if len(rest) != count * rec.size:
        raise Malformed(f"{count} kept flows announced, {len(rest)} bytes follow", header)
    cls = type(header.vip)
    flows = tuple((cls(a), p, b) for a, p, b in rec.iter_unpack(rest))
    return Kept(**_common(header), part=part, parts=parts, flows=flows)


def _restart(header: Header, body: bytes) -> Restart:
    if len(body) != _RESTART.size:
        raise Malformed(f"RESTART body of {len(body)} bytes, expected {_RESTART.size}", header)
    (grace,) = _RESTART.unpack(body)
    return Restart(**_common(header), grace_ms=grace)


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
        raise Malformed(f"unsupported version {version} (this agent speaks {VERSION})")
    try:
        header = Header(
            type=MsgType(mtype),
            state=NodeState(state),
            flags=flags,
            node_id=node,
            weight=weight,
            interval_ms=interval,
            body_len=body_len,
            vip=vip_of(vip),
            fingerprint=fp,
            key_id=kid,
            incarnation=inc,
            seq=seq,
        )
    except ValueError as exc:
        raise Malformed(f"bad header field: {exc}") from None
    if flags & ~FLAG_DRAINING:
        raise Malformed(f"unknown flags {flags:#x}", header)
    if len(data) != HEADER.size + body_len + MAC_BYTES:
        raise Malformed(f"length {len(data)} does not match body length {body_len}", header)
    if not 1 <= node <= MAX_NODE_ID or interval == 0 or seq == 0:
        raise Malformed(f"field out of range (node {node}, interval {interval}, seq {seq})", header)
    return header


def authenticate(data: bytes, key: bytes, header: Header) -> None:
    """Check the MAC of a datagram whose header was peeked; raises BadMac."""
    end = HEADER.size + header.body_len
    mac = hmac.digest(key, data[:end], hashlib.sha256)
    if not hmac.compare_digest(mac, data[end:]):
        ours = key_id(key)
        if header.key_id != ours:
            why = f"signed with another key (key id {header.key_id.hex()}, ours {ours.hex()})"
        else:
            why = "MAC does not match with the same key id: corrupted or forged"
        raise BadMac(why, header)


def decode(header: Header, data: bytes) -> Message:
    """The message of an authenticated datagram; raises Malformed."""
    body = data[HEADER.size : HEADER.size + header.body_len]
    try:
        if header.type == MsgType.LEAVE:
            if body:
                raise Malformed(f"LEAVE with a {len(body)}-byte body", header)
            return Leave(**_common(header))
        if header.type == MsgType.KEPT:
            return _kept(header, body)
        if header.type == MsgType.RESTART:
            return _restart(header, body)
        if header.type == MsgType.CONFIG:
            return Config(**_common(header), fields=body)
        return _heartbeat(header, body)
    except ValueError as exc:
        raise Malformed(f"bad field: {exc}", header) from None


def unpack(data: bytes, key: bytes, *, fingerprint: bytes | None = None) -> Message:
    """Authenticated message from wire bytes.

    Raises Malformed (bad structure), BadMac (wrong key, corrupted or forged), or, when
    `fingerprint` is given and differs, ForeignFingerprint. Each carries the header if it could
    be read.
    """
    header = peek(data)
    authenticate(data, key, header)
    if fingerprint is not None and header.fingerprint != fingerprint:
        raise ForeignFingerprint(
            f"cluster fingerprint {header.fingerprint.hex()}, ours {fingerprint.hex()}", header
        )
    return decode(header, data)


def _heartbeat(header: Header, body: bytes) -> Heartbeat:
    if len(body) < _HB_HEAD.size + 2 * _COUNT.size:
        raise Malformed(f"heartbeat body too short: {len(body)} bytes", header)
    digest, previous, kept = _HB_HEAD.unpack_from(body)
    off = _HB_HEAD.size
    (nmembers,) = _COUNT.unpack_from(body, off)
    off += _COUNT.size
    end = off + nmembers * _MEMBER.size
    if end + _COUNT.size > len(body):
        raise Malformed(f"{nmembers} members announced, the body is shorter", header)
    members = tuple(_MEMBER.iter_unpack(body[off:end]))
    (nacks,) = _COUNT.unpack_from(body, end)
    rest = body[end + _COUNT.size :]
    if len(rest) != nacks * _ACK.size:
        raise Malformed(f"{nacks} acks announced, {len(rest)} bytes follow", header)
    try:
        acks = tuple(
            Ack(n, i, w, _STATES[s], bool(f & 1), age)
            for n, i, w, s, f, age in _ACK.iter_unpack(rest)
        )
    except KeyError as exc:
        raise Malformed(f"bad field: {exc.args[0]} is not a valid NodeState", header) from None
    cls = Hello if header.type == MsgType.HELLO else Heartbeat
    return cls(
        **_common(header),
        view_digest=digest,
        previous=previous,
        kept=kept,
        members=members,
        acks=acks,
    )
