"""The link boundary: the VIP address, the cluster MAC on the interface, gratuitous ARP (IPv4)
or unsolicited Neighbor Advertisements (IPv6).

Addresses go through pyroute2 (netlink). An IPv6 VIP is added `nodad` (every node holds it:
duplicate address detection would fail on all but the first) and deprecated (preferred
lifetime 0: it still receives and answers, and a socket may bind it, but the kernel never
picks it as the source of the node's own connections, which would then be answered to the
cluster). Linux has no netlink call for a link-layer multicast
address: `ip maddr` itself uses the SIOCADDMULTI/SIOCDELMULTI ioctls, and so do we. The kernel
keeps a reference count per address, so we add it once and delete it once, and an entry someone
else added stays.

The MAC modes (clusterip.macmode) put the cluster MAC elsewhere: `unicast` in the NIC's
*unicast* filter, through netlink (RTM_NEWNEIGH, AF_BRIDGE, NTF_SELF, permanent: what `bridge
fdb add MAC dev IF self permanent` sends; the kernel's default handler adds it to the device's
uc list, which a NIC with a unicast filter programs, and one without turns promiscuous for);
`igmp` through the group's membership, held by the kernel: an address with IFA_F_MCAUTOJOIN
(`ip addr add GROUP/32 dev IF autojoin`) makes the kernel join the group on the interface (its
MAC enters the multicast list, the kernel sends the IGMP/MLD reports and answers the queries)
with no process to keep alive: it survives `up`, and an agent's planned restart, whose node
keeps serving while no process runs. Scope host: never a source address.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from typing import Protocol

from clusterip import nd
from clusterip.config import Address, ConfigError, VipConfig

SIOCADDMULTI = 0x8931
SIOCDELMULTI = 0x8932
ARPHRD_ETHER = 1
ETH_P_ARP = 0x0806
IFA_F_NODAD = 0x02
IFA_F_MCAUTOJOIN = 0x400
RT_SCOPE_HOST = 254
NTF_SELF = 0x02
NUD_PERMANENT = 0x80
INFINITY_LIFE = 0xFFFFFFFF


class Link(Protocol):
    def check_interface(self, ifname: str) -> None: ...
    def own_mac(self, ifname: str) -> str: ...
    def has_address(self, ifname: str, addr: Address) -> bool: ...
    def add_address(self, ifname: str, addr: Address, prefixlen: int) -> None: ...
    def del_address(self, ifname: str, addr: Address, prefixlen: int) -> None: ...
    def multicast_macs(self, ifname: str) -> set[str]: ...
    def add_multicast(self, ifname: str, mac: str) -> None: ...
    def del_multicast(self, ifname: str, mac: str) -> None: ...
    def send_garp(self, ifname: str, vip: Address, mac: str) -> None: ...
    def unicast_macs(self, ifname: str) -> set[str]: ...
    def add_unicast(self, ifname: str, mac: str) -> None: ...
    def del_unicast(self, ifname: str, mac: str) -> None: ...
    def groups(self, ifname: str) -> set[str]: ...
    def join_group(self, ifname: str, group: Address) -> None: ...
    def leave_group(self, ifname: str, group: Address) -> None: ...


def holds_mac(link: Link, cfg: VipConfig) -> bool:
    """The interface holds cfg's cluster MAC as its MAC mode wants (filter, and group)."""
    plan = cfg.mac_plan
    if plan.group is not None and str(plan.group) not in link.groups(cfg.interface):
        return False
    if plan.filter == "unicast":
        return plan.mac in link.unicast_macs(cfg.interface)
    return plan.mac in link.multicast_macs(cfg.interface)


def attach_mac(link: Link, cfg: VipConfig) -> None:
    """Make the interface accept cfg's cluster MAC (idempotent): the multicast list
    (multicast), the group's membership (igmp: the kernel adds its MAC), the unicast filter
    (unicast)."""
    plan, ifname = cfg.mac_plan, cfg.interface
    if plan.group is not None:
        if str(plan.group) not in link.groups(ifname):
            link.join_group(ifname, plan.group)
    elif plan.filter == "unicast":
        if plan.mac not in link.unicast_macs(ifname):
            link.add_unicast(ifname, plan.mac)
    elif plan.mac not in link.multicast_macs(ifname):
        link.add_multicast(ifname, plan.mac)


def detach_mac(link: Link, cfg: VipConfig) -> None:
    """Undo attach_mac (the caller checked that no other VIP of the interface uses it)."""
    plan, ifname = cfg.mac_plan, cfg.interface
    if plan.group is not None:
        if str(plan.group) in link.groups(ifname):
            link.leave_group(ifname, plan.group)
    elif plan.filter == "unicast":
        if plan.mac in link.unicast_macs(ifname):
            link.del_unicast(ifname, plan.mac)
    elif plan.mac in link.multicast_macs(ifname):
        link.del_multicast(ifname, plan.mac)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def garp_frames(own_mac: str, vip: ipaddress.IPv4Address, cluster_mac: str) -> list[bytes]:
    """A gratuitous ARP request and reply announcing VIP at the cluster MAC.

    The Ethernet source stays the node's own MAC: a multicast source address is invalid and
    a switch must never learn the cluster MAC on one port.
    """
    bcast = b"\xff" * 6
    eth = bcast + _mac_bytes(own_mac) + struct.pack("!H", ETH_P_ARP)
    frames = []
    for op, target in ((1, b"\0" * 6), (2, bcast)):
        arp = struct.pack("!HHBBH", ARPHRD_ETHER, 0x0800, 6, 4, op)
        arp += _mac_bytes(cluster_mac) + vip.packed + target + vip.packed
        frames.append(eth + arp)
    return frames


class NetlinkLink:
    """The real interface, in the current network namespace."""

    def _index(self, ipr: object, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)  # type: ignore[attr-defined]
        if not found:
            raise ConfigError(f"no interface {ifname!r} in this network namespace")
        return int(found[0])

    def check_interface(self, ifname: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            self._index(ipr, ifname)

    def has_address(self, ifname: str, addr: Address) -> bool:
        from pyroute2 import IPRoute

        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            for msg in ipr.get_addr(family=family, index=index):
                if msg.get_attr("IFA_LOCAL") == str(addr) or msg.get_attr("IFA_ADDRESS") == str(
                    addr
                ):
                    return True
        return False

    def add_address(self, ifname: str, addr: Address, prefixlen: int) -> None:
        from pyroute2 import IPRoute

        extra: dict[str, object] = {}
        if addr.version == 6:  # nodad, deprecated: see the module's doc
            life = {"ifa_preferred": 0, "ifa_valid": INFINITY_LIFE}
            extra = {"flags": IFA_F_NODAD, "IFA_CACHEINFO": life}
        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            ipr.addr("add", index=index, address=str(addr), prefixlen=prefixlen, **extra)

    def del_address(self, ifname: str, addr: Address, prefixlen: int) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.addr("del", index=self._index(ipr, ifname), address=str(addr), prefixlen=prefixlen)

    def own_mac(self, ifname: str) -> str:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            msg = ipr.get_links(self._index(ipr, ifname))[0]
            return str(msg.get_attr("IFLA_ADDRESS"))

    def multicast_macs(self, ifname: str) -> set[str]:
        """The interface's link-layer multicast list (/proc/net/dev_mcast, per namespace)."""
        macs: set[str] = set()
        with open("/proc/net/dev_mcast") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 5 and parts[1] == ifname:
                    raw = parts[4]
                    macs.add(":".join(raw[i : i + 2] for i in range(0, 12, 2)))
        return macs

    def _ioctl(self, request: int, ifname: str, mac: str) -> None:
        # struct ifreq: char ifr_name[16]; struct sockaddr ifr_hwaddr (family + 14 bytes)
        # ifr_hwaddr.sa_family must be AF_UNSPEC (net/core/dev_ioctl.c), as iproute2 leaves it.
        ifreq = struct.pack("16sH14s", ifname.encode(), socket.AF_UNSPEC, _mac_bytes(mac))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), request, ifreq)

    def add_multicast(self, ifname: str, mac: str) -> None:
        self._ioctl(SIOCADDMULTI, ifname, mac)

    def del_multicast(self, ifname: str, mac: str) -> None:
        self._ioctl(SIOCDELMULTI, ifname, mac)

    def send_garp(self, ifname: str, vip: Address, mac: str) -> None:
        """Announce VIP at the cluster MAC: a gratuitous ARP request and reply (IPv4), an
        unsolicited Neighbor Advertisement to all nodes (IPv6)."""
        if isinstance(vip, ipaddress.IPv6Address):
            frames, proto = [nd.unsolicited_na(self.own_mac(ifname), vip, mac)], nd.ETH_P_IPV6
        else:
            frames, proto = garp_frames(self.own_mac(ifname), vip, mac), ETH_P_ARP
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto)) as sock:
            sock.bind((ifname, proto))
            for frame in frames:
                sock.send(frame)

    def unicast_macs(self, ifname: str) -> set[str]:
        """The unicast addresses added to the interface's filter (its fdb `self` entries)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            macs = {str(m.get_attr("NDA_LLADDR")) for m in ipr.fdb("dump", ifindex=index)}
        return {m for m in macs if ":" in m and not int(m[:2], 16) & 1}

    def _fdb(self, command: str, ifname: str, mac: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            ipr.fdb(command, ifindex=index, lladdr=mac, state=NUD_PERMANENT, flags=NTF_SELF)

    def add_unicast(self, ifname: str, mac: str) -> None:
        self._fdb("add", ifname, mac)

    def del_unicast(self, ifname: str, mac: str) -> None:
        self._fdb("del", ifname, mac)

    def groups(self, ifname: str) -> set[str]:
        """The groups the interface holds an autojoin address of."""
        from pyroute2 import IPRoute

        out: set[str] = set()
        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            for msg in ipr.get_addr(index=index):
                flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
                if flags & IFA_F_MCAUTOJOIN:
                    out.add(str(ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))))
        return out

    def join_group(self, ifname: str, group: Address) -> None:
        from pyroute2 import IPRoute

        flags = IFA_F_MCAUTOJOIN | (IFA_F_NODAD if group.version == 6 else 0)
        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            ipr.addr(
                "add",
                index=index,
                address=str(group),
                prefixlen=group.max_prefixlen,
                flags=flags,
                scope=RT_SCOPE_HOST,
            )

    def leave_group(self, ifname: str, group: Address) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = self._index(ipr, ifname)
            ipr.addr("del", index=index, address=str(group), prefixlen=group.max_prefixlen)


class FakeLink:
    """In-memory interfaces for unit tests."""

    def __init__(self, interfaces: dict[str, str] | None = None) -> None:
        self.interfaces = dict(interfaces or {"eth0": "02:00:00:00:00:01"})
        self.addresses: dict[str, set[tuple[str, int]]] = {i: set() for i in self.interfaces}
        self.mcast: dict[str, list[str]] = {i: [] for i in self.interfaces}
        self.garps: list[tuple[str, str, str]] = []
        self.ucast: dict[str, list[str]] = {i: [] for i in self.interfaces}
        self.joined: dict[str, list[str]] = {i: [] for i in self.interfaces}

    def check_interface(self, ifname: str) -> None:
        if ifname not in self.interfaces:
            raise ConfigError(f"no interface {ifname!r} in this network namespace")

    def own_mac(self, ifname: str) -> str:
        self.check_interface(ifname)
        return self.interfaces[ifname]

    def has_address(self, ifname: str, addr: Address) -> bool:
        self.check_interface(ifname)
        return any(a == str(addr) for a, _ in self.addresses[ifname])

    def add_address(self, ifname: str, addr: Address, prefixlen: int) -> None:
        self.check_interface(ifname)
        self.addresses[ifname].add((str(addr), prefixlen))

    def del_address(self, ifname: str, addr: Address, prefixlen: int) -> None:
        self.addresses[ifname].discard((str(addr), prefixlen))

    def multicast_macs(self, ifname: str) -> set[str]:
        return set(self.mcast.get(ifname, []))

    def add_multicast(self, ifname: str, mac: str) -> None:
        self.mcast[ifname].append(mac)

    def del_multicast(self, ifname: str, mac: str) -> None:
        self.mcast[ifname].remove(mac)

    def send_garp(self, ifname: str, vip: Address, mac: str) -> None:
        self.garps.append((ifname, str(vip), mac))

    def unicast_macs(self, ifname: str) -> set[str]:
        return set(self.ucast.get(ifname, []))

    def add_unicast(self, ifname: str, mac: str) -> None:
        self.ucast[ifname].append(mac)

    def del_unicast(self, ifname: str, mac: str) -> None:
        self.ucast[ifname].remove(mac)

    def groups(self, ifname: str) -> set[str]:
        return set(self.joined.get(ifname, []))

    def join_group(self, ifname: str, group: Address) -> None:
        # The kernel adds the group's MAC to the multicast list with the membership.
        from clusterip.macmode import group_mac

        self.joined[ifname].append(str(group))
        self.mcast[ifname].append(group_mac(group))

    def leave_group(self, ifname: str, group: Address) -> None:
        from clusterip.macmode import group_mac

        self.joined[ifname].remove(str(group))
        self.mcast[ifname].remove(group_mac(group))
