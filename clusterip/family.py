"""The names a VIP's rules use for its address family (IPv4 or IPv6), for clusterip.render."""

from __future__ import annotations

from dataclasses import dataclass

from clusterip.config import VipConfig

# ICMP errors about a flow name the client in their inner header: accepted on every node.
ICMP_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"
ADDR_TYPE = "ipv4_addr"
# Fragments (flags MF or a fragment offset) carry ports only in the first one.
FRAGMENT = "ip frag-off & 0x3fff != 0"
# IPv6: the same errors (Packet Too Big carries path MTU discovery), and Neighbor Discovery
# sent to the VIP itself (a neighbour's unicast reachability probe, the answer to a node's
# solicitation): every node must see those, whatever the hash says.
ICMPV6_ERRORS = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"
ICMPV6_ND = "nd-neighbor-solicit, nd-neighbor-advert"
# An IPv6 datagram's fragments carry a fragment header (the first one too, as an IPv4 first
# fragment carries MF); only the first carries the ports.
FRAGMENT6 = "exthdr frag exists"


@dataclass(frozen=True)
class Family:
    """The names a VIP's rules use for its address family."""

    ip: str  # nft's protocol keyword: ip or ip6
    addr_type: str
    fragment: str
    icmp: str  # the rule's match for ICMP packets every node accepts

    @property
    def flow(self) -> str:
        return f"{self.ip} saddr . th sport . th dport"

    @property
    def flow_type(self) -> str:
        return f"{self.addr_type} . inet_service . inet_service"

    @property
    def pair_type(self) -> str:
        return f"{self.addr_type} . inet_service"


IPV4 = Family("ip", ADDR_TYPE, FRAGMENT, f"icmp type {{ {ICMP_ERRORS} }}")
IPV6 = Family("ip6", "ipv6_addr", FRAGMENT6, f"icmpv6 type {{ {ICMPV6_ERRORS}, {ICMPV6_ND} }}")


def family(cfg: VipConfig) -> Family:
    return IPV6 if cfg.vip.version == 6 else IPV4
