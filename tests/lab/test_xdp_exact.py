"""The XDP program, run by the kernel with BPF_PROG_TEST_RUN (root; nothing is attached).

Bit-exactness: the bucket the program computes is `clusterip.hashing.flow_bucket`, which is
nft's `jhash ... mod N seed S offset 1` (tests/lab/test_datapath.py checks that against nft).
The bucket comes back in the XDP metadata of a test build (meta_bucket, a load-time constant);
the production build (without it) is checked through its verdicts on random drop sets.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

import pytest

from clusterip.config import HASHMODES
from clusterip.hashing import bucket, flow_bucket
from clusterip.xdp import libbpf as bpf
from clusterip.xdp.filter import XdpFilter
from clusterip.xdp.frames import MF, TCP_ACK, TCP_SYN, arp_request, frame
from clusterip.xdp.spec import XdpVip

VIP = ipaddress.IPv4Address("192.0.2.10")
VIP6 = ipaddress.IPv6Address("2001:db8::10")
SEEDS = (0x00000000, 0x9E3779B9)
MODULI = (3, 64, 4096)
FLOWS_PER_CASE = 3500  # x 3 moduli x 2 seeds = 21,000 flows per hashmode
PROTOS = ("tcp", "udp", "sctp")
LOOPBACK = "lo"  # nothing is attached to it


def run(f: XdpFilter, data: bytes) -> tuple[int, bytes]:
    verdict, out, _ = bpf.test_run(f.prog_fd, data)
    return verdict, out


def meta_bucket(f: XdpFilter, data: bytes) -> int:
    verdict, out = run(f, data)
    assert verdict == bpf.XDP_PASS
    assert len(out) == len(data) + 4, "no bucket in the metadata"
    return int.from_bytes(out[:4], "little")


@pytest.fixture
def loaded() -> Iterator[list[XdpFilter]]:
    made: list[XdpFilter] = []
    yield made
    for f in made:
        f.close()


OWN_MAC = "02:c1:00:00:00:07"


def load(made: list[XdpFilter], vips: list[XdpVip], *, meta: bool = False) -> XdpFilter:
    f = XdpFilter(LOOPBACK, vips, meta_bucket=meta, own_mac=OWN_MAC)
    made.append(f)
    f.load()
    return f


def rand_flow(rng: random.Random) -> tuple[ipaddress.IPv4Address, int, int, str]:
    return (
        ipaddress.IPv4Address(rng.getrandbits(32)),
        rng.randrange(1, 65536),
        rng.randrange(1, 65536),
        rng.choice(PROTOS),
    )


@pytest.mark.parametrize("hashmode", HASHMODES)
def test_bucket_bit_exact_with_nft_hash(loaded: list[XdpFilter], hashmode: str) -> None:
    rng = random.Random(f"xdp-{hashmode}")
    checked = 0
    for seed in SEEDS:
        f = load(loaded, [XdpVip(VIP, hashmode, seed)], meta=True)
        for modulus in MODULI:
            f.set_buckets(VIP, range(1, modulus + 1), modulus)
            seen = set()
            for _ in range(FLOWS_PER_CASE):
                src, sport, dport, proto = rand_flow(rng)
                got = meta_bucket(f, frame(src, VIP, proto, sport, dport))
                want = flow_bucket(hashmode, seed, modulus, src, sport, dport)
                assert got == want, (hashmode, seed, modulus, str(src), sport, dport, proto)
                seen.add(got)
                checked += 1
            # The flows reach every bucket of the small moduli (the check is not vacuous).
            if modulus <= 64:
                assert seen == set(range(1, modulus + 1))
    assert checked >= 20_000


@pytest.mark.parametrize("hashmode", HASHMODES)
def test_production_build_drops_exactly_the_foreign_buckets(
    loaded: list[XdpFilter], hashmode: str
) -> None:
    """The build without metadata: a random half of 4096 buckets drops; every verdict and the
    counters match the Python bucket."""
    rng = random.Random(f"verdict-{hashmode}")
    seed = 0x5EED1234
    f = load(loaded, [XdpVip(VIP, hashmode, seed)])
    modulus = 4096
    passing = set(rng.sample(range(1, modulus + 1), modulus // 2))
    f.set_buckets(VIP, passing, modulus)
    dropped = 0
    for _ in range(5000):
        src, sport, dport, proto = rand_flow(rng)
        verdict, out = run(f, data := frame(src, VIP, proto, sport, dport))
        b = flow_bucket(hashmode, seed, modulus, src, sport, dport)
        assert verdict == (bpf.XDP_PASS if b in passing else bpf.XDP_DROP)
        if verdict == bpf.XDP_PASS:
            assert out == data  # passed frames are untouched
        dropped += verdict == bpf.XDP_DROP
    assert 2000 < dropped < 3000
    assert f.counters()[VIP] == {
        "dropped": dropped,
        "passed": 5000 - dropped,
        "owned": 0,
        "forged": 0,
    }


def test_ipv6_vip_hashes_nft_register_layout(loaded: list[XdpFilter]) -> None:
    """IPv6 is not served yet, but the program is ready: ip6 saddr (16 bytes) then the ports,
    each zero-padded to 4 bytes, as nft would lay out `ip6 saddr . th sport . th dport`."""
    rng = random.Random("v6")
    for hashmode in HASHMODES:
        f = load(loaded, [XdpVip(VIP, hashmode, 7), XdpVip(VIP6, hashmode, 0xABCDEF)], meta=True)
        f.set_buckets(VIP6, range(1, 4097), 4096)
        for _ in range(1000):
            src = ipaddress.IPv6Address(rng.getrandbits(128))
            sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
            key = src.packed
            if hashmode != "sourceip":
                key += sport.to_bytes(2, "big") + bytes(2)
            if hashmode == "sourceip-sourceport-destport":
                key += dport.to_bytes(2, "big") + bytes(2)
            got = meta_bucket(f, frame(src, VIP6, "tcp", sport, dport))
            assert got == bucket(key, 0xABCDEF, 4096)


def test_what_passes_untouched(loaded: list[XdpFilter]) -> None:
    """Everything that is not plainly foreign goes on to nft, even when every bucket drops."""
    vip = XdpVip(VIP, "sourceip-sourceport", 1, protocol="udp", dports=(53, 5300))
    f = load(loaded, [vip])
    f.set_buckets(VIP, (), 3)  # no bucket passes
    src = ipaddress.IPv4Address("198.51.100.7")
    other = ipaddress.IPv4Address("192.0.2.11")
    drop = frame(src, VIP, "udp", 40000, 5300)
    assert run(f, drop)[0] == bpf.XDP_DROP  # the control: this one is foreign
    cases = {
        "first fragment (MF)": frame(src, VIP, "udp", 40000, 5300, frag=MF),
        "non-first fragment": frame(src, VIP, "udp", 40000, 5300, frag=185),
        "last fragment": frame(src, VIP, "udp", 40000, 5300, frag=185 | 0),
        "icmp": frame(src, VIP, "icmp", l4=bytes([8, 0, 0, 0, 0, 1, 0, 1])),
        "protocol not configured": frame(src, VIP, "tcp", 40000, 5300),
        "port not configured": frame(src, VIP, "udp", 40000, 80),
        "another address": frame(src, other, "udp", 40000, 5300),
        "arp": arp_request(src, VIP),
        "truncated udp": frame(src, VIP, "udp", l4=b"\x9c\x40")[:36],
    }
    for name, data in cases.items():
        verdict, out = run(f, data)
        assert verdict == bpf.XDP_PASS, name
        assert out == data, name
    # IPv4 options move the ports: still hashed at the right place, so still dropped.
    assert run(f, frame(src, VIP, "udp", 40000, 5300, ip_options=b"\x01\x01\x01\x00"))[0] == 1
    # Not set yet (modulus 0): everything passes.
    fresh = load(loaded, [vip])
    assert run(fresh, drop)[0] == bpf.XDP_PASS


def test_owned_fast_path_rewrites_macs_except_bare_syns(loaded: list[XdpFilter]) -> None:
    mac = "03:bf:c0:00:02:0a"
    f = load(loaded, [XdpVip(VIP, "sourceip", 3, clustermac=mac, owned_protos=("tcp",))])
    f.set_buckets(VIP, (), 1, owned=[1])  # one bucket, owned
    src = ipaddress.IPv4Address("198.51.100.7")
    ack = frame(src, VIP, "tcp", 40000, 80, flags=TCP_ACK)
    verdict, out = run(f, ack)
    assert verdict == bpf.XDP_PASS
    assert out[:6] == bytes.fromhex(OWN_MAC.replace(":", ""))
    assert out[6:12] == bytes.fromhex(mac.replace(":", ""))
    assert out[12:] == ack[12:]
    for data in (
        frame(src, VIP, "tcp", 40000, 80, flags=TCP_SYN),  # bare SYN: nft records it
        frame(src, VIP, "udp", 40000, 80),  # UDP: not in owned_protos
    ):
        assert run(f, data) == (bpf.XDP_PASS, data)
    assert f.counters()[VIP] == {"dropped": 0, "passed": 2, "owned": 1, "forged": 0}


def test_a_multicast_source_to_a_vip_is_dropped_first(loaded: list[XdpFilter]) -> None:
    """The fast path marks its own rewrites with the cluster MAC as source: a frame that
    arrives with a multicast source is a forgery (or a loop), dropped whatever its bucket."""
    mac = "03:bf:c0:00:02:0a"
    f = load(loaded, [XdpVip(VIP, "sourceip", 3, clustermac=mac, protocol="udp")])
    f.set_buckets(VIP, (), 1, owned=[1])  # owned (UDP itself is not in owned_protos)
    src = ipaddress.IPv4Address("198.51.100.7")
    for source in (mac, "01:00:5e:00:00:01"):
        forged = frame(src, VIP, "udp", 40000, 5300, src_mac=source)
        assert run(f, forged)[0] == bpf.XDP_DROP, source
        icmp = frame(src, VIP, "icmp", l4=bytes([8, 0, 0, 0, 0, 1, 0, 1]), src_mac=source)
        assert run(f, icmp)[0] == bpf.XDP_DROP, source  # before the protocol is looked at
    other = ipaddress.IPv4Address("192.0.2.99")
    elsewhere = frame(src, other, "udp", 40000, 5300, src_mac=mac)
    assert run(f, elsewhere) == (bpf.XDP_PASS, elsewhere)  # not to a VIP: none of ours
    honest = frame(src, VIP, "udp", 40000, 5300)
    assert run(f, honest)[0] == bpf.XDP_PASS
    assert f.counters()[VIP] == {"dropped": 0, "passed": 1, "owned": 0, "forged": 4}
