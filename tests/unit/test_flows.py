"""Live flows: sock_diag messages, the snapshot per bucket, and the nft JSON of the UDP set.

The real sock_diag read is checked against pyroute2's decoding in tests/lab/test_sockets.py.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from clusterip.flows import snapshot
from clusterip.sockdiag import (
    ESTABLISHED,
    FIN_WAIT2,
    FLOW_STATES,
    LAST_ACK,
    LINGERING_STATES,
    LISTEN,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    SYN_RECV,
    TIME_WAIT,
    Sock,
    parse,
    request,
)
from clusterip.state import set_pairs

VIP = ipaddress.IPv4Address("198.18.0.100")


def diag_msg(state: int, lport: int, raddr: str, rport: int) -> bytes:
    """One SOCK_DIAG_BY_FAMILY message as the kernel sends it (inet_diag_msg, 72 bytes)."""
    sockid = struct.pack("!HH", lport, rport) + VIP.packed + bytes(12)
    sockid += socket.inet_aton(raddr) + bytes(12) + bytes(12)  # dst, ifindex, cookie
    body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0) + sockid + bytes(20)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def done() -> bytes:
    return struct.pack("=IHHII", 20, NLMSG_DONE, 2, 1, 0) + bytes(4)


def test_request_asks_for_flows_on_the_vip_only() -> None:
    data = request(VIP)
    length, kind, flags = struct.unpack_from("=IHH", data)
    assert length == len(data) == 16 + 56 + 4 + 4 + 8 + 4
    assert kind == SOCK_DIAG_BY_FAMILY and flags == 0x301
    family, proto, _ext, states = struct.unpack_from("=BBBxI", data, 16)
    assert (family, proto) == (socket.AF_INET, socket.IPPROTO_TCP)
    assert states == FLOW_STATES and not states & (1 << LISTEN)
    assert states & (1 << SYN_RECV) and states & (1 << LAST_ACK)
    assert not states & (1 << TIME_WAIT)  # over, and a busy service has many
    _f, _p, _e, lingering = struct.unpack_from("=BBBxI", request(VIP, states=LINGERING_STATES), 16)
    assert lingering == FLOW_STATES | 1 << TIME_WAIT
    assert data.endswith(VIP.packed)  # the bytecode's address condition


def test_parse_messages_until_done() -> None:
    out: list[Sock] = []
    first = diag_msg(ESTABLISHED, 80, "198.18.1.1", 40000)
    first += diag_msg(TIME_WAIT, 443, "198.18.1.2", 40001)
    assert parse(first, out) is False
    assert parse(diag_msg(SYN_RECV, 80, "198.18.1.3", 40002) + done(), out) is True
    assert out == [
        Sock("198.18.1.1", 40000, 80, ESTABLISHED),
        Sock("198.18.1.2", 40001, 443, TIME_WAIT),
        Sock("198.18.1.3", 40002, 80, SYN_RECV),
    ]
    assert [s.over for s in out] == [False, True, False]


def test_parse_error() -> None:
    err = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -22) + bytes(16)
    with pytest.raises(OSError, match="Invalid argument"):
        parse(err, [])


def test_snapshot_is_every_live_flow_on_the_vip() -> None:
    socks = [
        Sock("198.18.1.1", 40000, 80, ESTABLISHED),
        Sock("198.18.1.2", 40001, 443, TIME_WAIT),
        Sock("198.18.1.3", 40002, 443, FIN_WAIT2),
    ]
    assert snapshot(socks) == [("198.18.1.1", 40000, 80), ("198.18.1.3", 40002, 443)]


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
    assert set_pairs(objects) == [("198.18.1.1", 5000), ("198.18.1.2", 5001)]


UDP_SET_TEXT = (  # as nft 1.0.6 prints it (tabs), a long list wrapped over lines
    "table netdev clusterip_198_18_0_100 {\n\tset udp_seen {\n"
    "\t\ttype ipv4_addr . inet_service\n\t\tsize 65536\n\t\tflags dynamic,timeout\n"
    "\t\ttimeout 30s\n\t\telements = { 198.18.1.1 . 5000 timeout 30s expires 29s990ms,\n"
    "\t\t\t     198.18.1.2 . 53 expires 12s }\n\t}\n}\n"
)


class TextNft:
    def __init__(self, text: str) -> None:
        self.text = text
        self.asked: list[str] = []

    def list_text(self, what: str) -> str:
        self.asked.append(what)
        return self.text


def test_socket_flows_read_the_udp_set_as_text_and_hash_each_flow_once() -> None:
    from dataclasses import replace

    from clusterip import config
    from clusterip.flows import FakeSockets, SocketFlows
    from clusterip.hashing import flow_bucket

    cfg = replace(config.build(vip=str(VIP), interface="eth0", total_nodes=1), total_nodes=4096)
    tcp = Sock("198.18.1.3", 40000, 80, ESTABLISHED)
    flows = SocketFlows(table=FakeSockets({str(VIP): [tcp]}))
    nft = TextNft(UDP_SET_TEXT)
    flows._nft = nft  # type: ignore[assignment]
    got = flows.flows(cfg, 4096)

    def b(src: str, sport: int, dport: int) -> int:
        addr = ipaddress.IPv4Address(src)
        return flow_bucket(cfg.hashmode, cfg.seed, 4096, addr, sport, dport)

    assert got == [
        ("198.18.1.3", 40000, b("198.18.1.3", 40000, 80)),
        ("198.18.1.1", 5000, b("198.18.1.1", 5000, 0)),
        ("198.18.1.2", 53, b("198.18.1.2", 53, 0)),
    ]
    assert nft.asked == ["set netdev clusterip_198_18_0_100 udp_seen"]
    assert flows.flows(cfg, 4096) == got  # from the memo the second time
    nft.text = ""  # the tables are gone: no UDP flow
    assert flows.flows(cfg, 4096) == got[:1]


def test_udp_seen_text_of_either_family() -> None:
    """The agent reads `udp_seen` as nft's text: IPv4 and IPv6 elements alike."""
    from clusterip.flows import udp_pairs

    v4 = """table netdev clusterip_198_18_0_100 {
    set udp_seen {
        type ipv4_addr . inet_service
        size 65536
        flags dynamic,timeout
        timeout 30s
        elements = { 198.18.1.7 . 40312 timeout 30s expires 29s1ms,
                 198.18.1.10 . 5 expires 2s }
    }
}"""
    v6 = """table netdev clusterip_fdc0__100 {
    set udp_seen {
        type ipv6_addr . inet_service
        flags dynamic,timeout
        elements = { fdc1:0:0:1::1 . 51417 timeout 30s expires 29s, ::ffff:1.2.3.4 . 7,
                 2001:db8::7 . 40312 expires 1s }
    }
}"""
    assert udp_pairs(v4) == [("198.18.1.7", 40312), ("198.18.1.10", 5)]
    assert udp_pairs(v6) == [
        ("fdc1:0:0:1::1", 51417),
        ("::ffff:1.2.3.4", 7),
        ("2001:db8::7", 40312),
    ]
    assert udp_pairs("table netdev t {\n}") == []
