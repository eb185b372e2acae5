"""Lab topology as data: namespace names, links and addresses of a one-machine cluster.

Pure: nothing here touches the system. `clusterip.lab.net` builds what this describes.

Layout of a lab called NAME with N nodes and M client addresses::

    NAME-sw   switch namespace: bridge `br0`, one veth port per host: n1 .. nN, c
    NAME-nK   node K:  eth0 = 198.18.0.K/16              (K = 1 .. N)
    NAME-c    client:  eth0 = 198.18.0.254/16 (gateway), then the M client addresses
                       198.18.1.1 .. 198.18.1.254, 198.18.2.1 .. (all /16, secondaries)

The client namespace plays "many clients behind a router": nodes route the client subnets
(198.18.1.0/24, 198.18.2.0/24, ...) via the gateway address 198.18.0.254, and the client sends
its ARP requests from that address (arp_announce=2). Without this every node would need one
neighbour entry per client address, and the kernel's ARP table (global, gc_thresh3 = 1024
entries across all namespaces) overflows with a few nodes and a few hundred clients.

The VIP the cluster serves is `vip` (198.18.0.100) on the same /16; nothing is configured for
it here, that is the datapath's job.

A lab built with `ipv6=True` is dual stack, with unique-local addresses only (fdc1::/48):

    NAME-nK   eth0 also fdc1::K/64
    NAME-c    eth0 also fdc1::fe/64 (gateway6); the M client addresses fdc1:0:0:1::1 ..
              fdc1:0:0:1::M (hex) on `lo`, /128 each
    VIP6      fdc1::100

The client addresses sit on `lo` for the same reason as `arp_announce=2`: the kernel solicits
a neighbour from the address of the packet that needs it only if that address is on the
outgoing interface, so the client's solicitations come from the gateway address, and the
nodes (which route fdc1:0:0:1::/64 via fdc1::fe) hold one neighbour entry, not one per client.

Models of real networks (the MAC modes, `clusterip.macmode`), as data:

`snooping=True`: the switch does IGMP/MLD snooping with a querier (the bridge's
    `mcast_snooping 1`, `mcast_querier 1`): it learns which ports joined which group from the
    hosts' own reports, and forwards a frame to a group's MAC to those ports only, as switches
    that snoop into their MAC tables do (`clusterip.lab.snoop`).
`router=True`: one more host, NAME-r on port `r`, eth0 = 198.18.0.253/16 (fdc1::fd/64),
    that refuses what RFC 1812 3.3.2 routers refuse: an ARP packet whose sender hardware
    address is multicast (and, for IPv6, a Neighbor Advertisement with a multicast target
    link-layer address): an `arp` (`ip6`) table in its namespace drops them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from clusterip.config import ConfigError, VipConfig, build

LAB_NET = ipaddress.IPv4Network("198.18.0.0/16")
PREFIXLEN = LAB_NET.prefixlen
DEFAULT_VIP = "198.18.0.100"
GATEWAY = "198.18.0.254"
LAB_NET6 = ipaddress.IPv6Network("fdc1::/48")  # unique local (RFC 4193): never routed out
HOST_NET6 = ipaddress.IPv6Network("fdc1::/64")
CLIENT_NET6 = ipaddress.IPv6Network("fdc1:0:0:1::/64")
PREFIXLEN6 = HOST_NET6.prefixlen
DEFAULT_VIP6 = "fdc1::100"
GATEWAY6 = "fdc1::fe"
INTERFACE = "eth0"
BRIDGE = "br0"
CLIENT_PORT = "c"
ROUTER_PORT = "r"
ROUTER = "198.18.0.253"
ROUTER6 = "fdc1::fd"
ROUTER_MAC = "02:c1:00:00:02:00"
MAX_NODES = 64
MAX_CLIENTS = 1000
MAX_NAME = 8
HOSTS_PER_SUBNET = 254
_NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")


def check_name(name: str) -> str:
    """A lab name: 1 to 8 characters of a-z and 0-9 (namespace names are derived from it)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"bad lab name {name!r}: 1 to {MAX_NAME} characters of lowercase letters a-z and digits"
        )
    return name


def _check_count(value: object, what: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ConfigError(
            f"bad number of {what} {value!r}: expected a whole number from 1 to {high}"
        )
    return value


def in_lab_net(addr: str, what: str) -> str:
    """Raise unless `addr` is inside 198.18.0.0/16 or fdc1::/48 (labs never leave them)."""
    try:
        ip = ipaddress.ip_address(str(addr).strip())
    except ValueError:
        raise ConfigError(
            f"bad {what} {addr!r}: expected an address in {LAB_NET} or {LAB_NET6}"
        ) from None
    net = LAB_NET6 if ip.version == 6 else LAB_NET
    if ip not in net:
        raise ConfigError(f"bad {what} {addr!r}: lab traffic stays inside {net}")
    return str(ip)


@dataclass(frozen=True)
class LabTopo:
    """A lab: `nodes` cluster nodes and one client namespace holding `clients` addresses."""

    name: str
    nodes: int
    clients: int
    ipv6: bool = False  # dual stack (see the module's doc)
    snooping: bool = False  # the switch snoops IGMP/MLD, with a querier (see the module's doc)
    router: bool = False  # a router host that refuses multicast MACs in ARP/ND

    def __post_init__(self) -> None:
        check_name(self.name)
        _check_count(self.nodes, "nodes", MAX_NODES)
        _check_count(self.clients, "clients", MAX_CLIENTS)

    # --- namespaces -------------------------------------------------------------------------
    @property
    def switch_ns(self) -> str:
        return f"{self.name}-sw"

    @property
    def client_ns(self) -> str:
        return f"{self.name}-c"

    @property
    def router_ns(self) -> str:
        if not self.router:
            raise ConfigError(f"lab {self.name!r} has no router (build it with router=True)")
        return f"{self.name}-r"

    @property
    def router_addr(self) -> str:
        return ROUTER

    @property
    def router_addr6(self) -> str:
        return ROUTER6

    def node_ns(self, k: int) -> str:
        return f"{self.name}-n{self._node(k)}"

    def node_name(self, k: int) -> str:
        """The node's label: what its servers answer with, and its port on the switch."""
        return f"n{self._node(k)}"

    @property
    def node_indexes(self) -> range:
        return range(1, self.nodes + 1)

    @property
    def host_namespaces(self) -> tuple[str, ...]:
        """Node namespaces in order, then the client's (then the router's, if any)."""
        router = (self.router_ns,) if self.router else ()
        return (*(self.node_ns(k) for k in self.node_indexes), self.client_ns, *router)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, in build order (switch first)."""
        return (self.switch_ns, *self.host_namespaces)

    def hosts(self) -> dict[str, str]:
        """Host label (as `clusterip lab exec` takes it) -> namespace."""
        out = {self.node_name(k): self.node_ns(k) for k in self.node_indexes}
        out["client"] = self.client_ns
        out["switch"] = self.switch_ns
        if self.router:
            out["router"] = self.router_ns
        return out

    def host_ns(self, host: str) -> str:
        hosts = self.hosts()
        if host not in hosts:
            raise ConfigError(
                f"bad host {host!r} for lab {self.name!r}: allowed are n1..n{self.nodes}, "
                "client, switch"
            )
        return hosts[host]

    # --- links ------------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return BRIDGE

    @property
    def interface(self) -> str:
        """The host side of every link (nodes and client)."""
        return INTERFACE

    def switch_port(self, ns: str) -> str:
        """Name of the bridge port (in the switch namespace) leading to host namespace `ns`."""
        if ns == self.client_ns:
            return CLIENT_PORT
        if self.router and ns == self.router_ns:
            return ROUTER_PORT
        for k in self.node_indexes:
            if ns == self.node_ns(k):
                return self.node_name(k)
        raise ConfigError(f"bad namespace {ns!r}: not a host of lab {self.name!r}")

    def ports(self) -> tuple[tuple[str, str], ...]:
        """(switch port, host namespace) for every host."""
        return tuple((self.switch_port(ns), ns) for ns in self.host_namespaces)

    def node_mac(self, k: int) -> str:
        """Fixed, locally administered unicast MAC of node K's eth0 (02:c1:00:00:00:KK)."""
        return f"02:c1:00:00:00:{self._node(k):02x}"

    @property
    def client_mac(self) -> str:
        return "02:c1:00:00:01:00"

    def host_mac(self, ns: str) -> str:
        if ns == self.client_ns:
            return self.client_mac
        if self.router and ns == self.router_ns:
            return ROUTER_MAC
        return self.node_mac(int(self.switch_port(ns)[1:]))

    # --- addresses --------------------------------------------------------------------------
    @property
    def prefixlen(self) -> int:
        return PREFIXLEN

    def node_addr(self, k: int) -> str:
        return str(LAB_NET.network_address + self._node(k))

    def node_addrs(self) -> tuple[str, ...]:
        return tuple(self.node_addr(k) for k in self.node_indexes)

    @property
    def vip(self) -> str:
        return DEFAULT_VIP

    @property
    def gateway(self) -> str:
        """The client namespace's primary address: the 'router' the clients sit behind."""
        return GATEWAY

    def client_addrs(self) -> tuple[str, ...]:
        """198.18.1.1 .. 198.18.1.254, 198.18.2.1 .., `clients` of them."""
        base = int(LAB_NET.network_address)
        per = HOSTS_PER_SUBNET
        return tuple(
            str(ipaddress.IPv4Address(base + 256 * (1 + i // per) + 1 + i % per))
            for i in range(self.clients)
        )

    def client_subnets(self) -> tuple[str, ...]:
        """The /24s holding client addresses; nodes route them via `gateway`."""
        count = (self.clients + HOSTS_PER_SUBNET - 1) // HOSTS_PER_SUBNET
        return tuple(f"198.18.{i}.0/24" for i in range(1, count + 1))

    def host_addrs(self, ns: str) -> tuple[str, ...]:
        """Addresses of host namespace `ns` on eth0, primary first."""
        if ns == self.client_ns:
            return (self.gateway, *self.client_addrs())
        if self.router and ns == self.router_ns:
            return (ROUTER,)
        return (self.node_addr(int(self.switch_port(ns)[1:])),)

    def client_range(self) -> str:
        """All client addresses in the probe's `--sources` syntax: one first-last run per /24."""
        addrs = self.client_addrs()
        runs = [addrs[i : i + HOSTS_PER_SUBNET] for i in range(0, len(addrs), HOSTS_PER_SUBNET)]
        return ",".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)

    # --- IPv6 (labs built with ipv6=True) ------------------------------------------------------
    @property
    def prefixlen6(self) -> int:
        return PREFIXLEN6

    @property
    def vip6(self) -> str:
        return DEFAULT_VIP6

    @property
    def gateway6(self) -> str:
        return GATEWAY6

    def node_addr6(self, k: int) -> str:
        return str(HOST_NET6.network_address + self._node(k))

    def client_addrs6(self) -> tuple[str, ...]:
        """fdc1:0:0:1::1 .. (hex), `clients` of them."""
        base = CLIENT_NET6.network_address
        return tuple(str(base + 1 + i) for i in range(self.clients))

    def client_subnet6(self) -> str:
        return str(CLIENT_NET6)

    def client_range6(self) -> str:
        """All IPv6 client addresses in the probe's `--sources` syntax."""
        addrs = self.client_addrs6()
        return addrs[0] if len(addrs) == 1 else f"{addrs[0]}-{addrs[-1]}"

    # --- cluster config ---------------------------------------------------------------------
    def vip_config(
        self,
        local_nodes: Iterable[int] = (),
        *,
        vip: str | None = None,
        total_nodes: int | None = None,
        protocol: str = "all",
        dports: Iterable[int] = (),
        hashmode: str = "sourceip-sourceport",
        clustermac: str | None = None,
        seed: str | int | None = None,
        mac_mode: str | None = None,
    ) -> VipConfig:
        """A `clusterip.config.VipConfig` for this lab (VIP on eth0, one bucket per node)."""
        return build(
            vip=in_lab_net(vip or self.vip, "VIP"),
            interface=self.interface,
            total_nodes=total_nodes if total_nodes is not None else self.nodes,
            local_nodes=list(local_nodes),
            protocol=protocol,
            dports=list(dports),
            hashmode=hashmode,
            clustermac=clustermac,
            seed=seed,
            mac_mode=mac_mode,
        )

    def _node(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.nodes:
            raise ConfigError(f"bad node {k!r} for lab {self.name!r}: expected 1 to {self.nodes}")
        return k


ROUTER_TABLE = "lab_router"


def router_rules() -> str:
    """The router's refusal (RFC 1812 3.3.2), one nft script: ARP whose sender hardware address
    is multicast, and Neighbor Advertisements whose target link-layer address option (type 2,
    at byte 24 of the message, the MAC at byte 26) is multicast, are dropped and counted."""
    t = ROUTER_TABLE
    count = 'counter name "refused"'
    return f"""table arp {t} {{
	counter refused {{
	}}
	chain input {{
		type filter hook input priority 0; policy accept;
		arp saddr ether & 01:00:00:00:00:00 == 01:00:00:00:00:00 {count} drop
	}}
}}
table ip6 {t} {{
	counter refused {{
	}}
	chain input {{
		type filter hook input priority 0; policy accept;
		icmpv6 type nd-neighbor-advert @th,192,8 2 @th,208,8 & 0x1 == 0x1 {count} drop
	}}
}}
"""
