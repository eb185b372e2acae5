"""Agent wire format v2: round trips, golden bytes, every rejection cause."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterip.core import wire
from clusterip.core.fingerprint import key_id
from clusterip.core.wire import (
    Ack,
    BadMac,
    Config,
    ForeignFingerprint,
    Heartbeat,
    Hello,
    Kept,
    Leave,
    Malformed,
    Message,
    NodeState,
    Rejected,
    Restart,
    unpack,
)
from tests.conftest import GOLDEN, check_golden

KEY = b"clusterip-test-key-0123456789abcdef"
OTHER_KEY = b"another-key-of-at-least-16-bytes"
FP = bytes.fromhex("f1f2f3f4f5f6f7f8")
VIP = ipaddress.IPv4Address("192.0.2.10")
VIP6 = ipaddress.IPv6Address("2001:db8::10")
HEADER = 64
ACK_BYTES = 16  # node id 2, incarnation 8, weight 2, state 1, flags 1, age 2
MEMBER_BYTES = 4  # node id 2, weight 2


def common(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "node_id": 3,
        "vip": VIP,
        "fingerprint": FP,
        "key_id": key_id(KEY),
        "incarnation": 1_732_600_000_123_456,
        "seq": 42,
        "weight": 1,
        "interval_ms": 50,
    }
    base.update(over)
    return base


SAMPLES: dict[str, Message] = {
    "hello": Hello(**common(seq=1, state=NodeState.STARTING)),  # type: ignore[arg-type]
    "heartbeat": Heartbeat(
        **common(state=NodeState.ACTIVE, weight=2, flags=wire.FLAG_DRAINING),  # type: ignore[arg-type]
        view_digest=bytes.fromhex("0102030405060708"),
        previous=1_732_599_000_000_003,
        kept=40,
        members=((1, 1), (3, 2), (7, 1)),
        acks=(
            Ack(1, 1_732_600_000_000_001, 1, NodeState.ACTIVE, True, 100),
            Ack(7, 1_732_600_000_000_007, 1, NodeState.DRAINING, False, 0),
        ),
    ),
    "leave": Leave(**common(seq=43)),  # type: ignore[arg-type]
    "restart": Restart(**common(seq=45), grace_ms=5000),  # type: ignore[arg-type]
    "config": Config(
        **common(seq=46),  # type: ignore[arg-type]
        fields=b'{"buckets":4096,"hashmode":"sourceip"}',
    ),
    "kept": Kept(
        **common(seq=44, state=NodeState.ACTIVE, flags=wire.FLAG_DRAINING),  # type: ignore[arg-type]
        part=0,
        parts=1,
        flows=((ipaddress.IPv4Address("198.51.100.7"), 40312, 17),),
    ),
    "kept6": Kept(
        **common(seq=47, vip=VIP6),  # type: ignore[arg-type]
        part=1,
        parts=2,
        flows=(
            (ipaddress.IPv6Address("2001:db8:1::7"), 40312, 1),
            (ipaddress.IPv6Address("2001:db8:1::8"), 443, 4096),
        ),
    ),
}


def to_hex(data: bytes) -> str:
    """Golden form: 16 bytes per line, hex, with offsets (comments start with #)."""
    lines = [f"# {len(data)} bytes; header 64, body, HMAC-SHA256 32 (key: {KEY.decode()})"]
    for off in range(0, len(data), 16):
        lines.append(f"{off:04x}: {data[off : off + 16].hex(' ')}")
    return "\n".join(lines) + "\n"


def from_hex(text: str) -> bytes:
    rows = [ln.split(":", 1)[1] for ln in text.splitlines() if ln and not ln.startswith("#")]
    return bytes.fromhex("".join(rows))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_bytes(name: str) -> None:
    check_golden(f"wire/{name}.hex", to_hex(SAMPLES[name].pack(KEY)))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_bytes_unpack_to_the_message(name: str) -> None:
    data = from_hex((GOLDEN / "wire" / f"{name}.hex").read_text())
    back = unpack(data, KEY, fingerprint=FP)
    assert back == SAMPLES[name] and type(back) is type(SAMPLES[name])


def test_header_layout_is_as_documented() -> None:
    msg = SAMPLES["heartbeat"]
    assert isinstance(msg, Heartbeat)
    data = msg.pack(KEY)
    body_len = 8 + 8 + 8 + 2 + 3 * MEMBER_BYTES + 2 + 2 * ACK_BYTES
    assert data[:4] == b"CIPA"
    assert data[4] == 2  # version
    assert data[5] == wire.MsgType.HEARTBEAT
    assert data[6] == NodeState.ACTIVE
    assert data[7] == wire.FLAG_DRAINING
    assert struct.unpack(">HHHH", data[8:16]) == (3, 2, 50, body_len)
    assert data[16:32] == bytes(10) + b"\xff\xff" + VIP.packed  # IPv4 as ::ffff:a.b.c.d
    assert data[32:40] == FP
    assert data[40:48] == key_id(KEY)
    assert struct.unpack(">QQ", data[48:64]) == (1_732_600_000_123_456, 42)
    assert len(data) == HEADER + body_len + wire.MAC_BYTES
    body = data[HEADER : HEADER + body_len]
    assert body[:8] == msg.view_digest
    assert struct.unpack(">QQ", body[8:24]) == (msg.previous, msg.kept)
    assert struct.unpack(">H", body[24:26]) == (3,)
    assert struct.unpack(">HH", body[26:30]) == (1, 1)
    acks = body[26 + 3 * MEMBER_BYTES :]
    assert struct.unpack(">H", acks[:2]) == (2,)
    # node, incarnation, weight, state, flags (bit 0: a member by direct contact), age ms
    assert struct.unpack(">HQHBBH", acks[2:18]) == (1, 1_732_600_000_000_001, 1, 1, 1, 100)
    assert struct.unpack(">HQHBBH", acks[18:34]) == (7, 1_732_600_000_000_007, 1, 2, 0, 0)
    assert hmac.compare_digest(
        data[-32:], hmac.digest(KEY, data[: HEADER + body_len], hashlib.sha256)
    )


def test_bodies_of_restart_config_and_kept_are_as_documented() -> None:
    restart = SAMPLES["restart"].pack(KEY)
    assert restart[5] == wire.MsgType.RESTART and restart[6] == NodeState.RESTARTING
    assert struct.unpack(">I", restart[HEADER:-32]) == (5000,)
    config = SAMPLES["config"].pack(KEY)
    assert config[5] == wire.MsgType.CONFIG
    assert json.loads(config[HEADER:-32]) == {"buckets": 4096, "hashmode": "sourceip"}
    kept6 = SAMPLES["kept6"].pack(KEY)
    assert kept6[16:32] == VIP6.packed
    part, parts, count = struct.unpack(">HHH", kept6[HEADER : HEADER + 6])
    assert (part, parts, count) == (1, 2, 2)
    first = kept6[HEADER + 6 : HEADER + 6 + 20]  # 16-byte address, port, 1-based bucket
    assert first == ipaddress.IPv6Address("2001:db8:1::7").packed + struct.pack(">HH", 40312, 1)
    kept4 = SAMPLES["kept"].pack(KEY)
    assert len(kept4) == HEADER + 6 + 8 + 32  # a 4-byte address for an IPv4 VIP


@pytest.mark.parametrize("vip", [VIP, VIP6, ipaddress.IPv6Address("::ffff:192.0.2.10")])
def test_vip_field_round_trip(vip: wire.Address) -> None:
    back = wire.vip_of(wire.vip_bytes(vip))
    # An IPv4-mapped IPv6 VIP is the IPv4 VIP: one cluster, whichever way it was written.
    expected = vip.ipv4_mapped if isinstance(vip, ipaddress.IPv6Address) else vip
    assert back == (expected or vip)
    assert len(wire.vip_bytes(vip)) == 16


@pytest.mark.parametrize("name", sorted(n for n in SAMPLES if n != "kept"))
def test_every_message_round_trips_with_an_ipv6_vip(name: str) -> None:
    msg = dataclasses.replace(SAMPLES[name], vip=VIP6)
    data = msg.pack(KEY)
    assert data[16:32] == VIP6.packed
    back = unpack(data, KEY, fingerprint=FP)
    assert back == msg and back.vip == VIP6 and back.vip != VIP


ADDRESSES4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ADDRESSES6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
U64 = st.integers(0, 2**64 - 1)
acks = st.builds(
    Ack,
    st.integers(1, 255),
    U64,
    st.integers(0, 0xFFFF),
    st.sampled_from(list(NodeState)),
    st.booleans(),
    st.integers(0, 0xFFFF),
)
members = st.lists(st.tuples(st.integers(1, 255), st.integers(0, 0xFFFF)), max_size=40)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    vip = draw(st.sampled_from([VIP, VIP6]))
    head = common(
        vip=vip,
        node_id=draw(st.integers(1, 255)),
        incarnation=draw(U64),
        seq=draw(st.integers(1, 2**64 - 1)),
        weight=draw(st.integers(0, 0xFFFF)),
        state=draw(st.sampled_from(list(NodeState))),
        interval_ms=draw(st.integers(1, 0xFFFF)),
        flags=draw(st.sampled_from([0, wire.FLAG_DRAINING])),
    )
    cls = draw(st.sampled_from([Hello, Heartbeat, Leave, Restart, Config, Kept]))
    if cls in (Hello, Heartbeat):
        return cls(  # type: ignore[no-any-return]
            **head,
            view_digest=draw(st.binary(min_size=8, max_size=8)),
            previous=draw(U64),
            kept=draw(U64),
            members=tuple(draw(members)),
            acks=tuple(draw(st.lists(acks, max_size=40))),
        )
    if cls is Restart:
        return Restart(**head, grace_ms=draw(st.integers(0, 2**32 - 1)))  # type: ignore[arg-type]
    if cls is Config:
        return Config(**head, fields=draw(st.binary(max_size=300)))  # type: ignore[arg-type]
    if cls is Kept:
        addresses = ADDRESSES4 if vip.version == 4 else ADDRESSES6
        flow = st.tuples(addresses, st.integers(0, 0xFFFF), st.integers(1, 0xFFFF))
        flows = draw(st.lists(flow, max_size=wire.max_kept(vip)))
        parts = draw(st.integers(1, 5))
        part = draw(st.integers(0, parts - 1))
        return Kept(**head, part=part, parts=parts, flows=tuple(flows))  # type: ignore[arg-type]
    return Leave(**head)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(messages())
def test_round_trip(msg: Message) -> None:
    data = msg.pack(KEY)
    back = unpack(data, KEY, fingerprint=FP)
    assert back == msg
    assert type(back) is type(msg)
    header = wire.peek(data)
    assert (header.seq, header.vip, header.type) == (msg.seq, msg.vip, msg.TYPE)
    assert len(data) <= wire.DATAGRAM_LIMIT or isinstance(msg, Heartbeat | Config)


@settings(max_examples=100, deadline=None)
@given(messages(), st.data())
def test_any_flipped_bit_is_refused(msg: Message, data: st.DataObject) -> None:
    packed = bytearray(msg.pack(KEY))
    bit = data.draw(st.integers(0, len(packed) * 8 - 1))
    packed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(Rejected) as info:
        unpack(bytes(packed), KEY, fingerprint=FP)
    assert info.value.cause in ("bad_mac", "malformed", "foreign_fingerprint")


@pytest.mark.parametrize("vip", [VIP, VIP6])
def test_a_full_kept_fits_one_datagram_and_one_more_flow_does_not(vip: wire.Address) -> None:
    family = type(vip)
    top = 2**32 if vip.version == 4 else 2**128
    flows = tuple((family(top - 1 - i), i, 1 + i % 7) for i in range(wire.max_kept(vip)))
    data = Kept(**common(vip=vip), flows=flows).pack(KEY)  # type: ignore[arg-type]
    assert len(data) <= wire.DATAGRAM_LIMIT
    assert unpack(data, KEY).flows == flows  # type: ignore[attr-defined]
    extra = (*flows, (family(1), 1, 1))
    with pytest.raises(ValueError, match="too many"):
        Kept(**common(vip=vip), flows=extra)  # type: ignore[arg-type]
    assert wire.max_kept(VIP6) < wire.max_kept(VIP)  # 16-byte addresses take more room


def test_kept_refuses_a_flow_of_the_other_family() -> None:
    v6flow = (ipaddress.IPv6Address("2001:db8::1"), 1, 1)
    with pytest.raises(ValueError, match="address family"):
        Kept(**common(), flows=(v6flow,))  # type: ignore[arg-type]
    v4flow = (ipaddress.IPv4Address("198.51.100.1"), 1, 1)
    with pytest.raises(ValueError, match="address family"):
        Kept(**common(vip=VIP6), flows=(v4flow,))  # type: ignore[arg-type]


def test_wrong_key_with_our_key_id_is_bad_mac_forged() -> None:
    data = SAMPLES["heartbeat"].pack(OTHER_KEY)  # claims our key id, signed with another key
    with pytest.raises(BadMac, match="corrupted or forged") as info:
        unpack(data, KEY)
    assert info.value.cause == "bad_mac"
    assert info.value.header is not None and info.value.header.node_id == 3


def test_other_key_id_is_reported_as_another_key() -> None:
    msg = dataclasses.replace(SAMPLES["leave"], key_id=key_id(OTHER_KEY))
    with pytest.raises(BadMac, match="another key") as info:
        unpack(msg.pack(OTHER_KEY), KEY)
    assert key_id(OTHER_KEY).hex() in info.value.detail
    assert key_id(KEY).hex() in info.value.detail


def test_tampered_payload_is_bad_mac() -> None:
    data = bytearray(SAMPLES["heartbeat"].pack(KEY))
    data[HEADER + 4] ^= 0xFF  # inside the body
    with pytest.raises(BadMac, match="corrupted or forged"):
        unpack(bytes(data), KEY)


def test_foreign_fingerprint_only_when_asked_and_after_the_mac() -> None:
    data = SAMPLES["heartbeat"].pack(KEY)
    assert unpack(data, KEY) == SAMPLES["heartbeat"]
    with pytest.raises(ForeignFingerprint) as info:
        unpack(data, KEY, fingerprint=bytes(8))
    assert info.value.cause == "foreign_fingerprint"
    assert FP.hex() in info.value.detail
    with pytest.raises(BadMac):  # a foreign node with another key: the MAC fails first
        unpack(SAMPLES["heartbeat"].pack(OTHER_KEY), KEY, fingerprint=bytes(8))


def resign(signed: bytes) -> bytes:
    return signed + hmac.digest(KEY, signed, hashlib.sha256)


def signed_part(msg: Message) -> bytes:
    return msg.pack(KEY)[: -wire.MAC_BYTES]


def with_body(msg: Message, body: bytes) -> bytes:
    """`msg`'s header with another body (the length field fixed up), signed with KEY."""
    head = signed_part(msg)[:HEADER]
    return resign(head[:14] + struct.pack(">H", len(body)) + head[16:] + body)


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:40], "too short"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x01" + b[5:], "version 1"),
        (lambda b: b[:5] + b"\x09" + b[6:], "bad header field"),
        (lambda b: b[:6] + b"\x09" + b[7:], "bad header field"),
        (lambda b: b[:7] + b"\x02" + b[8:], "flags"),
        (lambda b: b[:8] + b"\x00\x00" + b[10:], "out of range"),
        (lambda b: b[:8] + b"\x01\x00" + b[10:], "out of range"),
        (lambda b: b[:12] + b"\x00\x00" + b[14:], "out of range"),
        (lambda b: b[:56] + bytes(8) + b[64:], "out of range"),
        (lambda b: b + b"\x00", "length"),
    ],
    ids=[
        "short",
        "magic",
        "version",
        "type",
        "state",
        "flags",
        "node0",
        "node256",
        "interval0",
        "seq0",
        "length",
    ],
)
def test_malformed_header(mutate: Callable[[bytes], bytes], why: str) -> None:
    data = mutate(SAMPLES["heartbeat"].pack(KEY))
    with pytest.raises(Malformed, match=why) as info:
        unpack(data, KEY)
    assert info.value.cause == "malformed"


def heartbeat_body(members: bytes = b"\x00\x00", acks: bytes = b"\x00\x00") -> bytes:
    return bytes(8 + 8 + 8) + members + acks  # digest, previous, kept, lists


def ack_record(node: int = 1, state: int = 1, flags: int = 0) -> bytes:
    return struct.pack(">HQHBBH", node, 5, 1, state, flags, 0)


@pytest.mark.parametrize(
    ("name", "body", "why"),
    [
        ("heartbeat", bytes(10), "too short"),
        ("heartbeat", heartbeat_body(acks=b"\x00\x03" + ack_record() * 2), "3 acks announced"),
        ("heartbeat", heartbeat_body(members=b"\x00\x05" + b"\x00\x01\x00\x01"), "5 members"),
        ("heartbeat", heartbeat_body(acks=b"\x00\x01" + ack_record(node=0)), "ack node id"),
        ("heartbeat", heartbeat_body(acks=b"\x00\x01" + ack_record(state=9)), "NodeState"),
        ("heartbeat", heartbeat_body(members=b"\x00\x01\x00\x00\x00\x01"), "member id"),
        ("hello", heartbeat_body() + b"\x00", "0 acks announced, 1 bytes"),
        ("leave", b"\x00", "LEAVE"),
        ("restart", b"\x00\x00\x13", "RESTART body"),
        ("restart", b"\x00" * 5, "RESTART body"),
        ("kept", b"\x00\x00\x00", "too short"),
        ("kept", struct.pack(">HHH", 0, 1, 2) + bytes(8), "2 kept flows announced"),
        ("kept", struct.pack(">HHH", 1, 1, 0), "part numbering"),
        ("kept", struct.pack(">HHH", 0, 0, 0), "part numbering"),
        # an IPv6 VIP's KEPT carries 16-byte addresses: a 4-byte record is malformed
        ("kept6", struct.pack(">HHH", 0, 1, 1) + bytes(8), "1 kept flows announced"),
    ],
)
def test_malformed_authenticated_bodies(name: str, body: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why) as info:
        unpack(with_body(SAMPLES[name], body), KEY)
    assert info.value.header is not None and info.value.header.node_id == 3


def test_every_rejection_is_a_rejected_with_its_own_cause() -> None:
    classes = [wire.BadMac, wire.Replay, wire.Malformed, wire.ForeignFingerprint]
    classes.append(wire.DuplicateNodeId)
    assert all(issubclass(c, Rejected) for c in classes)
    assert len({c.cause for c in classes}) == len(classes) == len(wire.REJECT_CAUSES)


def test_typed_unpack_checks_the_class() -> None:
    data = SAMPLES["leave"].pack(KEY)
    assert Leave.unpack(data, KEY) == SAMPLES["leave"]
    with pytest.raises(Malformed, match="expected Heartbeat"):
        Heartbeat.unpack(data, KEY)
    assert Restart.unpack(SAMPLES["restart"].pack(KEY), KEY) == SAMPLES["restart"]


@pytest.mark.parametrize(
    "bad",
    [
        {"node_id": 0},
        {"node_id": 256},
        {"weight": 70000},
        {"interval_ms": 0},
        {"seq": 0},
        {"fingerprint": b"short"},
        {"key_id": b""},
        {"incarnation": -1},
        {"flags": 0x02},
    ],
)
def test_constructor_refuses_out_of_range_fields(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Leave(**common(**bad))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"members": ((0, 1),)},
        {"members": ((1, 70000),)},
        {"acks": (Ack(0, 1),)},
        {"acks": (Ack(1, 1, weight=70000),)},
        {"acks": (Ack(1, 1, age_ms=70000),)},
        {"previous": -1},
        {"view_digest": b"short"},
        {"members": tuple((1, 1) for _ in range(256))},
    ],
)
def test_heartbeat_constructor_refuses_out_of_range_lists(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Heartbeat(**common(), **bad)  # type: ignore[arg-type]


def test_restart_grace_must_fit_32_bits() -> None:
    with pytest.raises(ValueError, match="grace"):
        Restart(**common(), grace_ms=2**32)  # type: ignore[arg-type]


def test_acked_lookup() -> None:
    hb = SAMPLES["heartbeat"]
    assert isinstance(hb, Heartbeat)
    assert hb.acked(7) == 1_732_600_000_000_007
    assert hb.acked(2) is None


def test_config_fields_are_readable_without_the_key() -> None:
    """A node with another key must still learn which settings differ: CONFIG is read before
    (and without) the MAC check."""
    data = dataclasses.replace(SAMPLES["config"], key_id=key_id(OTHER_KEY)).pack(OTHER_KEY)
    with pytest.raises(BadMac):
        unpack(data, KEY)
    assert wire.config_fields(data) == {"buckets": 4096, "hashmode": "sourceip"}
    assert wire.config_fields(SAMPLES["heartbeat"].pack(KEY)) is None  # not a CONFIG
    assert wire.config_fields(b"garbage") is None
    for body in (b"not json", b"[1, 2]"):
        bad = dataclasses.replace(SAMPLES["config"], fields=body).pack(KEY)
        assert wire.config_fields(bad) is None
