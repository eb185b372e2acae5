"""Live flows from /proc/net/tcp's text and from the nft JSON of the UDP flow set."""

from __future__ import annotations

import socket
import struct

from clusterip.flows import proc_tcp_flows, set_flows


def _hex(addr: str, port: int) -> str:
    """As the kernel prints it: the address as a native integer, the port as a number."""
    (native,) = struct.unpack("=I", socket.inet_aton(addr))
    return f"{native:08X}:{port:04X}"


def _line(n: int, local: tuple[str, int], remote: tuple[str, int], state: int) -> str:
    return (
        f"  {n}: {_hex(*local)} {_hex(*remote)} {state:02X} 00000000:00000000 00:00000000 "
        "00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1"
    )


VIP = "198.18.0.100"
TEXT = "\n".join(
    [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid",
        _line(0, ("0.0.0.0", 80), ("0.0.0.0", 0), 0x0A),  # listening
        _line(1, (VIP, 80), ("198.18.1.1", 40000), 0x01),  # established
        _line(2, (VIP, 80), ("198.18.1.2", 40001), 0x06),  # TIME_WAIT: over
        _line(3, (VIP, 443), ("198.18.1.3", 40002), 0x03),  # SYN_RECV: handshaking
        _line(4, (VIP, 80), ("198.18.1.4", 40003), 0x08),  # CLOSE_WAIT: still a flow
        _line(5, ("198.18.0.1", 22), ("198.18.1.5", 40004), 0x01),  # another address
        "garbage",
    ]
)


def test_live_sockets_on_the_vip_only() -> None:
    assert proc_tcp_flows(TEXT, VIP) == [
        ("198.18.1.1", 40000, 80),
        ("198.18.1.3", 40002, 443),
        ("198.18.1.4", 40003, 80),
    ]


def test_no_header_no_flows() -> None:
    assert proc_tcp_flows("", VIP) == []


def test_udp_set_elements_with_and_without_timeouts() -> None:
    objects = [
        {"metainfo": {}},
        {
            "set": {
                "name": "udp_seen",
                "elem": [
                    {"elem": {"val": {"concat": ["198.18.1.1", 5000]}, "timeout": 30}},
                    {"concat": ["198.18.1.2", 5001]},
                ],
            }
        },
    ]
    assert set_flows(objects) == [("198.18.1.1", 5000), ("198.18.1.2", 5001)]
