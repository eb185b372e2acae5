"""The doctor's look at the segment: who answers ARP (NS) for the VIP, and which node (by the
Ethernet source of its answer) answers each of a few test flows. Raw packet sockets (root);
the frame builders and parsers are pure.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time
from collections.abc import Callable

from clusterip import nd
from clusterip.doctor.facts import Answer

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def arp_request(own_mac: str, own_ip: ipaddress.IPv4Address, vip: ipaddress.IPv4Address) -> bytes:
    mac = nd.mac_bytes(own_mac)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac + own_ip.packed + b"\0" * 6 + vip.packed
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def solicited_node(addr: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + addr.packed[-3:])


def neighbor_solicitation(
    own_mac: str, src: ipaddress.IPv6Address, vip: ipaddress.IPv6Address
) -> bytes:
    mac = nd.mac_bytes(own_mac)
    dst = solicited_node(vip)
    body = struct.pack("!BBHI", 135, 0, 0, 0) + vip.packed + bytes([1, 1]) + mac
    cks = nd.checksum(src, dst, body)
    body = body[:2] + struct.pack("!H", cks) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src.packed + dst.packed
    eth = b"\x33\x33" + dst.packed[-4:] + mac + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + body


def parse_answer(frame: bytes, vip: Address) -> Answer | None:
    """(Ethernet source, advertised MAC) if `frame` is an ARP reply or an NA for `vip`."""
    if len(frame) < 14:
        return None
    src = _mac(frame[6:12])
    proto = struct.unpack("!H", frame[12:14])[0]
    if proto == ETH_P_ARP and vip.version == 4 and len(frame) >= 42:
        op = struct.unpack("!H", frame[20:22])[0]
        if op == 2 and frame[28:32] == vip.packed:
            return src, _mac(frame[22:28])
    if proto == ETH_P_IPV6 and vip.version == 6 and len(frame) >= 78:
        if frame[20] != 58 or frame[54] != 136 or frame[62:78] != vip.packed:
            return None
        opts = frame[78:]
        while len(opts) >= 8 and opts[1]:
            if opts[0] == 2:
                return src, _mac(opts[2:8])
            opts = opts[opts[1] * 8 :]
    return None


def _listen(ifname: str, until: float, keep: Callable[[bytes], None], send: bytes = b"") -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((ifname, ETH_P_ALL))
        if send:
            sock.send(send)
        while (left := until - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            frame, meta = sock.recvfrom(65535)
            if meta[2] != socket.PACKET_OUTGOING:
                keep(frame)


def who_answers(
    ifname: str, own_mac: str, own_ip: Address | None, vip: Address, wait: float = 1.0
) -> list[Answer]:
    """Ask the segment for the VIP (an ARP request, or an NS to its solicited-node group) and
    collect every answer for `wait` seconds."""
    if isinstance(vip, ipaddress.IPv4Address):
        src4 = own_ip if isinstance(own_ip, ipaddress.IPv4Address) else ipaddress.IPv4Address(0)
        frame = arp_request(own_mac, src4, vip)
    else:
        src6 = own_ip if isinstance(own_ip, ipaddress.IPv6Address) else ipaddress.IPv6Address(0)
        frame = neighbor_solicitation(own_mac, src6, vip)
    answers: list[Answer] = []

    def keep(f: bytes) -> None:
        got = parse_answer(f, vip)
        if got is not None:
            answers.append(got)

    _listen(ifname, time.monotonic() + wait, keep, frame)
    return answers


def parse_tcp_reply(frame: bytes, vip: Address, port: int) -> tuple[int, str] | None:
    """(our port, Ethernet source) if `frame` is a SYN-ACK or RST from vip:port."""
    proto = struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0
    if proto == ETH_P_IP and vip.version == 4 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 6 or frame[26:30] != vip.packed:
            return None
        tcp = frame[14 + ihl :]
    elif proto == ETH_P_IPV6 and vip.version == 6 and len(frame) >= 54:
        if frame[20] != 6 or frame[22:38] != vip.packed:
            return None
        tcp = frame[54:]
    else:
        return None
    if len(tcp) < 14:
        return None
    sport, dport = struct.unpack("!HH", tcp[:4])
    flags = tcp[13]
    if sport != port or not (flags & 0x12 == 0x12 or flags & 0x04):
        return None
    return dport, _mac(frame[6:12])


def flow_answers(
    ifname: str, vip: Address, port: int, count: int = 8, wait: float = 1.5
) -> dict[int, set[str]]:
    """Open `count` TCP connections to vip:port and note, per client port, the MACs whose
    SYN-ACK or RST came back: each flow should have exactly one (its node's own MAC)."""
    family = socket.AF_INET6 if vip.version == 6 else socket.AF_INET
    socks, seen = [], {}
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        socks.append(s)
    replies: dict[int, set[str]] = {}

    def keep(f: bytes) -> None:
        got = parse_tcp_reply(f, vip, port)
        if got is not None and got[0] in seen:
            replies.setdefault(got[0], set()).add(got[1])

    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sniff:
            sniff.bind((ifname, ETH_P_ALL))
            for s in socks:
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                seen[s.getsockname()[1]] = s
                s.connect_ex((str(vip), port))
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                ready, _, _ = select.select([sniff], [], [], left)
                if not ready:
                    break
                frame, meta = sniff.recvfrom(65535)
                if meta[2] != socket.PACKET_OUTGOING:
                    keep(frame)
    finally:
        for s in socks:
            s.close()
    return {p: replies.get(p, set()) for p in seen}
