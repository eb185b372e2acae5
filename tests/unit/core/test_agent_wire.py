"""Agent wire format: round trips, golden bytes, every rejection cause."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterip.core import wire
from clusterip.core.fingerprint import key_id
from clusterip.core.wire import (
    Ack,
    BadMac,
    ForeignFingerprint,
    Heartbeat,
    Hello,
    Leave,
    Malformed,
    Message,
    NodeState,
    Rejected,
    unpack,
)
from tests.conftest import check_golden

KEY = b"clusterip-test-key-0123456789abcdef"
OTHER_KEY = b"another-key-of-at-least-16-bytes"
FP = bytes.fromhex("f1f2f3f4f5f6f7f8")
VIP = ipaddress.IPv4Address("192.0.2.10")


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
        **common(state=NodeState.ACTIVE, weight=2),  # type: ignore[arg-type]
        view_digest=bytes.fromhex("0102030405060708"),
        acks=(Ack(1, 1_732_600_000_000_001), Ack(7, 1_732_600_000_000_007)),
    ),
    "leave": Leave(**common(seq=43)),  # type: ignore[arg-type]
    "kept": wire.Kept(
        **common(seq=44, state=NodeState.ACTIVE),  # type: ignore[arg-type]
        part=0,
        parts=1,
        flows=((ipaddress.IPv4Address("198.51.100.7"), 40312, 17),),
    ),
}


def to_hex(data: bytes) -> str:
    """Golden form: 16 bytes per line, hex, with offsets (comments start with #)."""
    lines = [f"# {len(data)} bytes; header 52, body, HMAC-SHA256 32 (key: {KEY.decode()})"]
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
    from tests.conftest import GOLDEN

    data = from_hex((GOLDEN / "wire" / f"{name}.hex").read_text())
    assert unpack(data, KEY, fingerprint=FP) == SAMPLES[name]


def test_header_layout_is_as_documented() -> None:
    data = SAMPLES["heartbeat"].pack(KEY)
    assert data[:4] == b"CIPA"
    assert data[4] == 1  # version
    assert data[5] == wire.MsgType.HEARTBEAT
    assert data[6] == NodeState.ACTIVE
    assert struct.unpack(">HHHH", data[8:16]) == (3, 2, 50, 8 + 2 + 2 * 10)
    assert data[16:20] == VIP.packed
    assert data[20:28] == FP
    assert data[28:36] == key_id(KEY)
    assert struct.unpack(">QQ", data[36:52]) == (1_732_600_000_123_456, 42)
    assert len(data) == 52 + 8 + 2 + 20 + 32


messages = st.builds(
    lambda cls, node, inc, seq, weight, state, ms, acks, digest: cls(
        **common(
            node_id=node, incarnation=inc, seq=seq, weight=weight, state=state, interval_ms=ms
        ),
        **({} if cls is Leave else {"acks": tuple(acks), "view_digest": digest}),
    ),
    st.sampled_from([Hello, Heartbeat, Leave]),
    st.integers(1, 255),
    st.integers(0, 2**64 - 1),
    st.integers(1, 2**64 - 1),
    st.integers(0, 0xFFFF),
    st.sampled_from(list(NodeState)),
    st.integers(1, 0xFFFF),
    st.lists(st.builds(Ack, st.integers(1, 255), st.integers(0, 2**64 - 1)), max_size=64),
    st.binary(min_size=8, max_size=8),
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_round_trip(msg: Message) -> None:
    data = msg.pack(KEY)
    back = unpack(data, KEY, fingerprint=FP)
    assert back == msg
    assert type(back) is type(msg)
    assert wire.peek(data).seq == msg.seq


@settings(max_examples=100, deadline=None)
@given(messages, st.data())
def test_any_flipped_bit_is_refused(msg: Message, data: st.DataObject) -> None:
    packed = bytearray(msg.pack(KEY))
    bit = data.draw(st.integers(0, len(packed) * 8 - 1))
    packed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(Rejected) as info:
        unpack(bytes(packed), KEY, fingerprint=FP)
    assert info.value.cause in ("bad_mac", "malformed", "foreign_fingerprint")


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
    data[60] ^= 0xFF  # inside the body
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


def resign(body_and_header: bytes) -> bytes:
    import hashlib
    import hmac

    return body_and_header + hmac.new(KEY, body_and_header, hashlib.sha256).digest()


def signed_part(msg: Message) -> bytes:
    return msg.pack(KEY)[: -wire.MAC_BYTES]


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:40], "too short"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "version"),
        (lambda b: b[:5] + b"\x09" + b[6:], "bad header field"),
        (lambda b: b[:6] + b"\x09" + b[7:], "bad header field"),
        (lambda b: b[:7] + b"\x01" + b[8:], "flags"),
        (lambda b: b[:8] + b"\x00\x00" + b[10:], "out of range"),
        (lambda b: b[:8] + b"\x01\x00" + b[10:], "out of range"),
        (lambda b: b + b"\x00", "length"),
    ],
)
def test_malformed_header(mutate: object, why: str) -> None:
    data = mutate(SAMPLES["heartbeat"].pack(KEY))  # type: ignore[operator]
    with pytest.raises(Malformed, match=why) as info:
        unpack(data, KEY)
    assert info.value.cause == "malformed"


def test_malformed_authenticated_bodies() -> None:
    hb = signed_part(SAMPLES["heartbeat"])
    # ack count says 3, two follow (length field fixed up, so only the body is wrong)
    body = hb[52:]
    bad = body[:8] + b"\x00\x03" + body[10:]
    head = hb[:14] + struct.pack(">H", len(bad)) + hb[16:52]
    with pytest.raises(Malformed, match="3 acks"):
        unpack(resign(head + bad), KEY)
    short = hb[:14] + struct.pack(">H", 4) + hb[16:52] + b"\x00" * 4
    with pytest.raises(Malformed, match="too short"):
        unpack(resign(short), KEY)
    lv = signed_part(SAMPLES["leave"])
    with pytest.raises(Malformed, match="LEAVE"):
        unpack(resign(lv[:14] + b"\x00\x01" + lv[16:] + b"\x00"), KEY)
    ack0 = hb[:62] + b"\x00\x00" + hb[64:]  # an ack for node 0
    with pytest.raises(Malformed, match="ack node id"):
        unpack(resign(ack0), KEY)


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
    ],
)
def test_constructor_refuses_out_of_range_fields(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Leave(**common(**bad))  # type: ignore[arg-type]


def test_acked_lookup() -> None:
    hb = SAMPLES["heartbeat"]
    assert isinstance(hb, Heartbeat)
    assert hb.acked(7) == 1_732_600_000_000_007
    assert hb.acked(2) is None
