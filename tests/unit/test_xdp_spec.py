"""The pure parts of the XDP pre-filter: its configuration blob, bucket plans, move ordering."""

from __future__ import annotations

import ctypes
import ipaddress
import random

import pytest

from clusterip.config import ConfigError, build
from clusterip.render import Ownership
from clusterip.xdp.frames import checksum, frame
from clusterip.xdp.spec import (
    DROP,
    OWNED,
    PASS,
    Buckets,
    Conf,
    XdpVip,
    buckets_for,
    build_conf,
    parse_conf,
    parse_mode,
    steps,
)

VIP = ipaddress.IPv4Address("192.0.2.10")


def test_conf_layout_is_the_programs() -> None:
    # struct xdp_conf in bpf/clusterip_xdp.c: 12 + 8 x 32 + 8 x 8192 bytes (the object file's
    # .rodata; `load` checks the size against the compiled object too).
    assert ctypes.sizeof(Conf) == 12 + 8 * 32 + 8 * 8192


def test_conf_round_trip() -> None:
    vips = [
        XdpVip(VIP, "sourceip-sourceport-destport", 0xDEADBEEF, "tcp", (80, 443)),
        XdpVip(ipaddress.IPv6Address("2001:db8::1"), "sourceip", 7, "all", (), "01:00:5e:00:00:01"),
    ]
    conf = build_conf(vips, "02:c1:00:00:00:01")
    assert conf.n_vips == 2 and conf.has_v6 == 1 and conf.meta_bucket == 0
    assert bytes(conf.vips[0].addr[:4]) == VIP.packed
    assert conf.vips[0].protos == 1 and conf.vips[1].protos == 7
    assert conf.dports[0][80 >> 3] == 1 << (80 & 7)
    back, mac = parse_conf(bytes(conf))
    assert back == vips and mac == "02:c1:00:00:00:01"


def test_from_config_takes_the_hash_fields() -> None:
    cfg = build(vip="192.0.2.10", interface="eth0", total_nodes=3, local_nodes=[1], dports=[80])
    v = XdpVip.from_config(cfg)
    assert (v.vip, v.hashmode, v.seed, v.protocol, v.dports, v.clustermac) == (
        cfg.vip,
        cfg.hashmode,
        cfg.seed,
        cfg.protocol,
        (80,),
        cfg.clustermac,
    )


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"hashmode": "dest"}, "bad hashmode 'dest'"),
        ({"seed": 1 << 32}, "bad seed"),
        ({"protocol": "icmp"}, "bad protocol 'icmp'"),
        ({"dports": (0,)}, "bad destination port 0"),
        ({"clustermac": "ff:ff:ff:ff:ff:ff"}, "the broadcast MAC is not allowed"),
        ({"clustermac": "00:00:00:00:00:00"}, "the all-zero MAC"),
        ({"owned_protos": ("icmp",)}, "bad owned protocol 'icmp'"),
    ],
)
def test_bad_vip_one_line(kwargs: dict[str, object], named: str) -> None:
    args: dict[str, object] = {"vip": VIP, "hashmode": "sourceip", "seed": 1, **kwargs}
    with pytest.raises(ConfigError) as err:
        XdpVip(**args)  # type: ignore[arg-type]
    assert named in str(err.value) and "\n" not in str(err.value)


def test_too_many_or_duplicate_vips() -> None:
    v = XdpVip(VIP, "sourceip", 1)
    with pytest.raises(ConfigError, match="given twice"):
        build_conf([v, v], "02:00:00:00:00:01")
    many = [XdpVip(ipaddress.IPv4Address(f"192.0.2.{i}"), "sourceip", 1) for i in range(1, 10)]
    with pytest.raises(ConfigError, match="bad number of VIPs on one interface 9: 1 to 8"):
        build_conf(many, "02:00:00:00:00:01")


def test_bucket_values_and_bad_buckets() -> None:
    b = Buckets.of(4, passing=[1, 2], owned=[2, 3])
    assert b.values() == {2: OWNED, 3: OWNED, 4: DROP}
    assert [b.verdict(i) for i in (1, 2, 3, 4)] == [PASS, OWNED, OWNED, DROP]
    assert Buckets().verdict(5) == PASS  # not set: everything passes
    with pytest.raises(ConfigError, match="bad pass bucket 5: expected 1 to 4"):
        Buckets.of(4, [5])
    with pytest.raises(ConfigError, match="bad bucket count 16385"):
        Buckets.of(16385)


def _apply(state: dict[str, object], step: tuple[str, object]) -> None:
    kind, arg = step
    if kind == "modulus":
        state["modulus"] = arg
    else:
        assert isinstance(arg, dict)
        values = state["values"]
        assert isinstance(values, dict)
        values.update(arg)


def _verdict(state: dict[str, object], bucket: int) -> int:
    values = state["values"]
    assert isinstance(values, dict)
    return PASS if not state["modulus"] else int(values.get(bucket, PASS))


@pytest.mark.parametrize("trial", range(200))
def test_steps_never_drop_what_either_side_passes(trial: int) -> None:
    """After every single map write, a bucket passes if old or new passes it, and is OWNED
    only if old and new both say OWNED; the end state is exactly `new`."""
    rng = random.Random(trial)

    def rand(modulus: int) -> Buckets:
        pick = [rng.choice((PASS, DROP, OWNED)) for _ in range(modulus)]
        return Buckets.of(
            modulus,
            [i + 1 for i, v in enumerate(pick) if v == PASS],
            [i + 1 for i, v in enumerate(pick) if v == OWNED],
        )

    m_old = rng.choice((0, 3, 8))
    old = rand(m_old)
    new = rand(rng.choice((m_old, m_old, 3, 8)) or 3)
    state: dict[str, object] = {"modulus": old.modulus, "values": dict(old.values())}
    plan = steps(old, new)
    for step in plan[:-1]:  # the states in between (the last write makes it `new`)
        _apply(state, step)
        m = int(str(state["modulus"]))
        for b in range(1, m + 1):
            v = _verdict(state, b)
            if old.modulus != new.modulus:
                assert v == PASS, (b, v)  # a bucket changes meaning: nothing drops meanwhile
                continue
            a, z = old.verdict(b), new.verdict(b)
            assert v == (a if a == z else PASS), (b, a, z, v)
    if plan:
        _apply(state, plan[-1])
    assert state["modulus"] == new.modulus
    assert {b: _verdict(state, b) for b in range(1, new.modulus + 1)} == {
        b: new.verdict(b) for b in range(1, new.modulus + 1)
    }


def test_meet_is_safe_for_both() -> None:
    old = Buckets.of(4, passing=[1], owned=[2])
    new = Buckets.of(4, passing=[3], owned=[2, 4])
    mid = old.meet(new)
    # 1: pass->drop (released in nft first: pass meanwhile); 3: drop->pass (pass before nft
    # takes it); 2 stays owned; 4: drop->owned goes through pass.
    assert [mid.verdict(b) for b in (1, 2, 3, 4)] == [PASS, OWNED, PASS, PASS]
    assert old.meet(Buckets.of(8)).passing == frozenset(range(1, 9))


def test_buckets_for_an_nft_ownership() -> None:
    own = Ownership.of(6, owned=[1, 2, 3], draining=[4], guarded=[2], orphaned=[3])
    assert buckets_for(own) == Buckets.of(6, [1, 2, 3, 4])
    fast = buckets_for(own, owned_fast=True)
    assert fast.owned == {1} and fast.passing == {2, 3, 4}
    kept = Ownership(6, frozenset({1}), kept=frozenset({("198.51.100.1", 4000)}))
    assert buckets_for(kept, owned_fast=True).owned == frozenset()


def test_parse_mode() -> None:
    assert parse_mode(" Native ") == "native" and parse_mode("off") == "off"
    with pytest.raises(ConfigError, match="bad XDP mode 'fast': allowed are auto, on, native"):
        parse_mode("fast")


def test_frames() -> None:
    data = frame(ipaddress.IPv4Address("198.51.100.7"), VIP, "udp", 40000, 53)
    assert len(data) == 60 and data[12:14] == b"\x08\x00"
    assert checksum(data[14:34]) == 0  # a valid IPv4 header checksum
    assert data[34:38] == (40000).to_bytes(2, "big") + (53).to_bytes(2, "big")
