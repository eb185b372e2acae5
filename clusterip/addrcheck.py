"""Warnings about where a VIP sits: outside every subnet of its interface, or on an interface
with no IPv4 address at all. Both work (the VIP answers ARP on the segment), but they are
usually a typo or the wrong interface, so `up` and `agent` say so, in one line, and go on.

`address_warning` is pure; `warn_addresses` reads the interface's addresses (pyroute2).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable

from clusterip.config import VipConfig

IPv4If = ipaddress.IPv4Interface


def address_warning(vip: ipaddress.IPv4Address, ifname: str, addrs: Iterable[IPv4If]) -> str | None:
    """One line when `vip` is outside every subnet of `addrs` (the interface's IPv4 addresses;
    the VIP's own entry does not count), or when there is no address at all; else None."""
    own = [a for a in addrs if a.ip != vip]
    if not own:
        return (
            f"warning: interface {ifname} has no IPv4 address of its own: VIP {vip} answers "
            "on the segment, but the node has no address there for its own traffic"
        )
    if not any(vip in a.network for a in own):
        nets = ", ".join(str(a) for a in own)
        return (
            f"warning: VIP {vip} is outside every subnet of {ifname} ({nets}): clients reach "
            "it only through a route to this segment"
        )
    return None


def interface_addresses(ifname: str) -> list[IPv4If]:
    """The IPv4 addresses of `ifname` (this network namespace), with their prefixes."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        out = []
        for msg in ipr.get_addr(family=socket.AF_INET, index=found[0]):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(ipaddress.IPv4Interface(f"{addr}/{msg['prefixlen']}"))
        return out


def warn_addresses(cfg: VipConfig) -> str | None:
    """Print the warning for cfg (if any) on stderr; returns it."""
    try:
        line = address_warning(cfg.vip, cfg.interface, interface_addresses(cfg.interface))
    except (OSError, ValueError):
        return None  # the check is advice: never a reason to fail
    if line:
        print(f"clusterip: {line}", file=sys.stderr)
    return line
