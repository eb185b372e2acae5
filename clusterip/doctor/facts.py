"""What `clusterip doctor` collects: plain data, no I/O (clusterip.doctor.collect fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Answer = tuple[str, str]  # (Ethernet source MAC, the MAC the ARP reply / NA advertises)


@dataclass(frozen=True)
class KernelFacts:
    release: str  # uname -r
    libnftables: str = ""  # "" if the binding imports, else why not
    probes: dict[str, str] = field(default_factory=dict)  # nft feature -> "" or the error


@dataclass(frozen=True)
class VipFacts:
    """One VIP on this node, as the kernel holds it now."""

    vip: str
    interface: str
    version: int
    mac_mode: str
    clustermac: str
    group: str | None
    mode: str  # static or agent (the tables' comment)
    own_mac: str = ""
    tables: bool = True  # the VIP's netdev table
    neighbour_table: bool = True  # its arp (IPv4) or ip6 (IPv6) table
    has_address: bool = True
    addr_flags: frozenset[str] = frozenset()  # nodad, dadfailed, tentative (IPv6)
    mac_held: bool = True  # the interface's filter accepts the cluster MAC as the mode wants
    promiscuous: bool = False  # the interface is (a NIC without a unicast filter, in unicast)
    counters_before: dict[str, int] = field(default_factory=dict)  # packets per counter
    counters_after: dict[str, int] = field(default_factory=dict)
    window: float = 1.0  # seconds between the two readings
    rp_filter: int | None = None  # effective (max of all and the interface); None: IPv6
    rp_drops: int = 0  # packets the reverse path filter dropped during the window
    arp_ignore: int = 0  # effective (max of all and the interface)
    arp_announce: int = 0
    other_drops: tuple[str, ...] = ()  # rules of other tables that drop the VIP's traffic
    other_policies: tuple[str, ...] = ()  # other base chains on its path with policy drop
    offloads: tuple[str, ...] = ()  # what bypasses the ingress hook (flowtables, other XDP)
    answers: tuple[Answer, ...] = ()  # replies to our ARP request / NS for the VIP
    probed: bool = True  # the segment was probed (a raw socket could be opened)


@dataclass(frozen=True)
class ClientFacts:
    """This host, a client of the VIP (`doctor --client`)."""

    vip: str
    interface: str
    neighbour: str | None  # the link-layer address of its neighbour entry, if usable
    neighbour_state: str  # reachable, stale, failed, incomplete, none, ...
    answers: tuple[Answer, ...] = ()
    port: int = 80
    flows: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (client port, MACs that answered)
    predicted: dict[int, int] = field(default_factory=dict)  # client port -> bucket (`which`)


AgentDoc = dict[str, Any]  # one VIP of the agent's status (clusterip status --json)
