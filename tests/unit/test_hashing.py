import ipaddress
from collections import Counter

import pytest

from clusterip.hashing import bucket, flow_bucket, flow_key, jhash, reciprocal_scale

A = ipaddress.IPv4Address


def test_lookup3_reference_vectors() -> None:
    # Bob Jenkins' lookup3.c driver5(): hashlittle() on a little-endian machine, which is what
    # the kernel's jhash() computes there.
    assert jhash(b"", 0) == 0xDEADBEEF
    assert jhash(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert jhash(b"Four score and seven years ago", 0) == 0x17770551
    assert jhash(b"Four score and seven years ago", 1) == 0xCD628161


def test_reciprocal_scale_range() -> None:
    assert reciprocal_scale(0, 7) == 0
    assert reciprocal_scale(0xFFFFFFFF, 7) == 6
    assert reciprocal_scale(0x80000000, 2) == 1


def test_flow_key_layout_is_register_aligned() -> None:
    src = A("198.18.1.2")
    assert flow_key("sourceip", src) == bytes([198, 18, 1, 2])
    assert flow_key("sourceip-sourceport", src, 0x1234) == bytes([198, 18, 1, 2, 0x12, 0x34, 0, 0])
    assert len(flow_key("sourceip-sourceport-destport", src, 1, 80)) == 12
    with pytest.raises(ValueError):
        flow_key("sourceip-sourceport", src)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_buckets_in_range_and_even(n: int) -> None:
    counts = Counter(
        flow_bucket(
            "sourceip-sourceport",
            0x1234ABCD,
            n,
            A(f"198.18.{i // 250}.{i % 250}"),
            1024 + i % 50000,
        )
        for i in range(20000)
    )
    assert set(counts) <= set(range(1, n + 1))
    assert len(counts) == n
    mean = 20000 / n
    assert max(counts.values()) < mean * 1.3


def test_seed_changes_assignment() -> None:
    key = flow_key("sourceip", A("198.18.1.1"))
    results = {bucket(key, seed, 1000) for seed in range(50)}
    assert len(results) > 40
