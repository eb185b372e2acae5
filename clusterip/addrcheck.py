"""Warnings about where a VIP sits: outside every subnet of its interface, or on an interface
with no address of the VIP's family at all (IPv6: link-local ones do not count). Both work
(the VIP answers ARP or ND on the segment), but they are usually a typo or the wrong
interface, so `up` and `agent` say so, in one line, and go on.

`address_warning` is pure; `warn_addresses` reads the interface's addresses (pyroute2).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable

from clusterip.config import VipConfig

IfAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_warning(vip: Address, ifname: str, addrs: Iterable[IfAddr]) -> str | None:
    """One line when `vip` is outside every subnet of `addrs` (the interface's addresses of
    the VIP's family; the VIP's own entry and IPv6 link-local ones do not count), or when there
    is no such address at all; else None."""
    own = [a for a in addrs if a.version == vip.version and a.ip != vip and not a.ip.is_link_local]
    if not own:
        return (
            f"warning: interface {ifname} has no IPv{vip.version} address of its own: VIP "
            f"{vip} answers on the segment, but the node has no address there for its own "
            "traffic"
        )
    if not any(vip in a.network for a in own):
        nets = ", ".join(str(a) for a in own)
        return (
            f"warning: VIP {vip} is outside every subnet of {ifname} ({nets}): clients reach "
            "it only through a route to this segment"
        )
    return None


def interface_addresses(ifname: str, version: int = 4) -> list[IfAddr]:
    """The addresses of `ifname` of one IP version (this network namespace), with prefixes."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        out: list[IfAddr] = []
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        for msg in ipr.get_addr(family=family, index=found[0]):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out


def warn_addresses(cfg: VipConfig) -> str | None:
    """Print the warning for cfg (if any) on stderr; returns it."""
    try:
        line = address_warning(
            cfg.vip, cfg.interface, interface_addresses(cfg.interface, cfg.vip.version)
        )
    except (OSError, ValueError):
        return None  # the check is advice: never a reason to fail
    if line:
        print(f"clusterip: {line}", file=sys.stderr)
    return line
