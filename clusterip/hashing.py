"""The bucket of a flow, computed exactly as the kernel's nft `jhash` expression computes it.

nft_jhash_eval (net/netfilter/nft_hash.c) does
    h = reciprocal_scale(jhash(&regs->data[sreg], len, seed), modulus) + offset
over the source registers. A concatenation (`ip saddr . th sport`) is laid out in 32-bit
registers: every field starts on a 4-byte boundary, so a 2-byte port is followed by two zero
bytes. An IPv6 source (`ip6 saddr`) fills four registers: 16, 20 or 24 bytes are hashed.
The bytes are the packet's bytes (network order); jhash reads them as little-endian words on
the machines we run on (x86-64, arm64).
"""

from __future__ import annotations

import ipaddress

JHASH_INITVAL = 0xDEADBEEF
_M32 = 0xFFFFFFFF


def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= _rol32(c, 4)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol32(a, 6)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol32(b, 8)
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= _rol32(c, 16)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol32(a, 19)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol32(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol32(b, 14)) & _M32
    a ^= c
    a = (a - _rol32(c, 11)) & _M32
    b ^= a
    b = (b - _rol32(a, 25)) & _M32
    c ^= b
    c = (c - _rol32(b, 16)) & _M32
    a ^= c
    a = (a - _rol32(c, 4)) & _M32
    b ^= a
    b = (b - _rol32(a, 14)) & _M32
    c ^= b
    c = (c - _rol32(b, 24)) & _M32
    return c


def jhash(key: bytes, initval: int) -> int:
    """Bob Jenkins' lookup3 hash as include/linux/jhash.h implements it (little-endian CPU)."""
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + initval) & _M32
    k = 0
    while length > 12:
        a = (a + int.from_bytes(key[k : k + 4], "little")) & _M32
        b = (b + int.from_bytes(key[k + 4 : k + 8], "little")) & _M32
        c = (c + int.from_bytes(key[k + 8 : k + 12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        length -= 12
        k += 12
    if length == 0:
        return c
    tail = key[k:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)


def reciprocal_scale(value: int, modulus: int) -> int:
    """include/linux/math.h: maps a 32-bit value onto [0, modulus) without a division."""
    return (value * modulus) >> 32


def flow_key(
    hashmode: str,
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int | None = None,
    dport: int | None = None,
) -> bytes:
    """The register bytes nft hashes for a flow under the given hashmode."""
    key = src.packed
    if hashmode == "sourceip":
        return key
    if sport is None:
        raise ValueError(f"hashmode {hashmode} needs the source port")
    key += sport.to_bytes(2, "big") + b"\0\0"
    if hashmode == "sourceip-sourceport":
        return key
    if dport is None:
        raise ValueError(f"hashmode {hashmode} needs the destination port")
    return key + dport.to_bytes(2, "big") + b"\0\0"


def bucket(key: bytes, seed: int, modulus: int, offset: int = 1) -> int:
    """`jhash KEY mod MODULUS seed SEED offset OFFSET` as nft evaluates it."""
    return reciprocal_scale(jhash(key, seed), modulus) + offset


def flow_bucket(
    hashmode: str,
    seed: int,
    modulus: int,
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int | None = None,
    dport: int | None = None,
    *,
    offset: int = 1,
) -> int:
    return bucket(flow_key(hashmode, src, sport, dport), seed, modulus, offset)
