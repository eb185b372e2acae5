"""Ethernet frames for exercising the pre-filter (tests, benchmark): pure byte builders."""

from __future__ import annotations

import ipaddress
import struct

from clusterip.xdp.spec import Address, mac_bytes

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
TCP_SYN, TCP_ACK = 0x02, 0x10
MF = 0x2000


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def l4_header(proto: str, sport: int, dport: int, *, flags: int = TCP_ACK) -> bytes:
    """A UDP (8 bytes), TCP (20) or SCTP common header (12) with the given ports; checksums 0."""
    if proto == "udp":
        return struct.pack("!HHHH", sport, dport, 8, 0)
    if proto == "tcp":
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    if proto == "sctp":
        return struct.pack("!HHII", sport, dport, 0, 0)
    raise ValueError(f"bad protocol {proto!r}: allowed are tcp, udp, sctp")


def frame(
    src: Address,
    dst: Address,
    proto: str = "udp",
    sport: int = 40000,
    dport: int = 5300,
    *,
    dst_mac: str = "03:bf:c0:00:02:0a",
    src_mac: str = "02:00:00:00:00:01",
    flags: int = TCP_ACK,
    payload: bytes = b"",
    frag: int = 0,
    ip_options: bytes = b"",
    l4: bytes | None = None,
) -> bytes:
    """One frame from src:sport to dst:dport. `frag` is the IPv4 flags+offset field
    (MF = 0x2000, offset in 8-byte units); `l4` replaces the layer 4 header and payload."""
    body = l4 if l4 is not None else l4_header(proto, sport, dport, flags=flags) + payload
    number = PROTO_NUMBERS[proto]
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        if len(ip_options) % 4:
            raise ValueError("IPv4 options must be a multiple of 4 bytes")
        ihl = 5 + len(ip_options) // 4
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            ihl * 4 + len(body),
            1,
            frag,
            64,
            number,
            0,
            src.packed,
            dst.packed,
        )
        hdr += ip_options
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        ethertype = ETH_P_IP
    elif isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
        hdr = struct.pack("!IHBB", 6 << 28, len(body), number, 64) + src.packed + dst.packed
        ethertype = ETH_P_IPV6
    else:
        raise ValueError(f"mixed address families: {src} and {dst}")
    eth = mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype)
    out = eth + hdr + body
    return out + bytes(max(0, 60 - len(out)))  # minimal Ethernet frame (no FCS)


def arp_request(sender: ipaddress.IPv4Address, target: ipaddress.IPv4Address) -> bytes:
    src_mac = mac_bytes("02:00:00:00:00:01")
    eth = b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + src_mac + sender.packed
    arp += bytes(6) + target.packed
    return eth + arp + bytes(60 - len(eth) - len(arp))
