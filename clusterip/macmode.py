"""MAC modes: which link-layer address the cluster answers ARP/ND with, and how frames to it
reach every node (`--mac-mode`, config key `mac_mode`). Pure: derivations and the plan of
what the interface must hold; `clusterip.link` does the I/O.

multicast  (default) a multicast MAC outside the IGMP/MLD ranges: `03:bf:` + the IPv4 VIP's
           four bytes (Microsoft NLB's multicast mode), `03:b6:` + an IPv6 VIP's last four.
           Switches flood it to every port. In the interface's multicast list.
igmp       the MAC of a multicast *group* derived from the VIP, which every node joins (the
           kernel sends the IGMP/MLD reports and answers the queries): an IGMP-snooping switch
           delivers the VIP's frames to the cluster's ports only.
           IPv4: group 239.255.x.y from the VIP's last two bytes (Microsoft NLB's IGMP mode),
           MAC 01:00:5e:7f:x:y. 239.255.0.0/16 is the IPv4 organisation-local scope (RFC 2365):
           never routed out of a site, used by no well-known protocol, and the 01:00:5e mapping
           of a 239.255 group is exact in its last two bytes, so an admin reads the VIP in it.
           IPv6: group ff05::b6XX:XXXX from the VIP's last three bytes (site-local scope, as
           239.255 is for IPv4), MAC 33:33:b6:XX:XX:XX: never a solicited-node MAC (33:33:ff)
           nor a well-known one (33:33:00:00:00:xx), and `b6` as in the multicast mode's MAC.
           A --clustermac in the group MAC range names the group instead: IPv4 01:00:5e:AA:B:C
           is 239.(128+AA).B.C, IPv6 33:33:AA:BB:CC:DD is ff05::AABB:CCDD.
unicast    a shared *unicast* MAC: `02:bf:` + the IPv4 VIP's four bytes (NLB's unicast mode),
           `02:b6:` + an IPv6 VIP's last four (locally administered, nobody's vendor MAC). Every
           node adds it to its NIC's unicast filter (as `bridge fdb add MAC dev IF self
           permanent` does), never sends from it (ARP/ND carry it as the sender's hardware
           address, the Ethernet source stays the node's own), so switches never learn it and
           flood it. Routers that refuse a multicast MAC in ARP (RFC 1812 3.3.2) accept it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAC_MODES = ("multicast", "igmp", "unicast")
DEFAULT_MAC_MODE = "multicast"
MULTICAST_PREFIX = {4: "03:bf:", 6: "03:b6:"}
UNICAST_PREFIX = {4: "02:bf:", 6: "02:b6:"}
IGMP_GROUP_NET = ipaddress.IPv4Network("239.255.0.0/16")
MLD_GROUP_PREFIX = 0xFF05 << 112  # ff05:: site-local scope
MLD_GROUP_TAG = 0xB6  # the group's byte 12: ff05::b6XX:XXXX


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def group_mac(group: Address) -> str:
    """The Ethernet MAC of a multicast group: 01:00:5e + its low 23 bits (RFC 1112), or 33:33 +
    its low 32 bits (RFC 2464)."""
    if group.version == 4:
        low = int(group) & 0x7FFFFF
        return _mac(b"\x01\x00\x5e" + low.to_bytes(3, "big"))
    return _mac(b"\x33\x33" + group.packed[-4:])


def default_group(vip: Address) -> Address:
    """The igmp mode's group of a VIP (see the module's doc)."""
    if vip.version == 4:
        return IGMP_GROUP_NET.network_address + int.from_bytes(vip.packed[-2:], "big")
    low = (MLD_GROUP_TAG << 24) | int.from_bytes(vip.packed[-3:], "big")
    return ipaddress.IPv6Address(MLD_GROUP_PREFIX | low)


def group_of_mac(mac: str, version: int) -> Address:
    """The group an igmp-mode cluster MAC stands for (the inverse of group_mac for the groups
    this mode uses: 239.128.0.0/9, ff05::/96)."""
    raw = mac_bytes(mac)
    if version == 4:
        return ipaddress.IPv4Address(bytes([239, 0x80 | (raw[3] & 0x7F), raw[4], raw[5]]))
    return ipaddress.IPv6Address(MLD_GROUP_PREFIX | int.from_bytes(raw[2:], "big"))


def default_mac(vip: Address, mode: str = DEFAULT_MAC_MODE) -> str:
    """The cluster MAC of a VIP in a MAC mode when --clustermac is not given."""
    if mode == "igmp":
        return group_mac(default_group(vip))
    prefix = UNICAST_PREFIX if mode == "unicast" else MULTICAST_PREFIX
    return prefix[vip.version] + _mac(vip.packed[-4:])


def mac_problem(mac: str, mode: str, version: int) -> str:
    """Why `mac` (normalised aa:bb:..) cannot be the cluster MAC in `mode`, or "" if it can."""
    raw = mac_bytes(mac)
    multicast = bool(raw[0] & 1)
    if mode == "unicast":
        if multicast:
            return "must be a unicast MAC in --mac-mode unicast (low bit of the first byte clear)"
        if not any(raw):
            return "the all-zero MAC is not allowed"
        return ""
    if not multicast:
        return (
            "must be a multicast MAC (low bit of the first byte set, e.g. 01:.. or 03:..); "
            "a unicast cluster MAC needs --mac-mode unicast"
        )
    if mac == "ff:ff:ff:ff:ff:ff":
        return "the broadcast MAC is not allowed"
    if mode == "igmp":
        if version == 4 and not (raw[:3] == b"\x01\x00\x5e" and raw[3] < 0x80):
            return "--mac-mode igmp needs an IPv4 group MAC, 01:00:5e:00:00:00 to 01:00:5e:7f:ff:ff"
        if version == 6 and raw[:2] != b"\x33\x33":
            return "--mac-mode igmp needs an IPv6 group MAC, 33:33:xx:xx:xx:xx"
    return ""


@dataclass(frozen=True)
class MacPlan:
    """What the cluster interface must hold for a VIP's cluster MAC, in one MAC mode."""

    mode: str
    mac: str
    group: Address | None = None  # igmp: the group the node joins (an autojoin address)

    @property
    def filter(self) -> str:
        """Which address filter of the NIC the MAC sits in: `unicast` or `multicast`."""
        return "unicast" if self.mode == "unicast" else "multicast"

    def describe(self) -> str:
        """`igmp, group 239.255.0.100`, `unicast`, `multicast`."""
        return self.mode + (f", group {self.group}" if self.group is not None else "")


def plan(mode: str, mac: str, vip: Address) -> MacPlan:
    group = group_of_mac(mac, vip.version) if mode == "igmp" else None
    return MacPlan(mode, mac, group)
