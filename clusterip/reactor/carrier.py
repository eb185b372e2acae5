"""Carrier of the cluster interface, watched through rtnetlink (pyroute2).

A node whose link is down (cable, switch port, a veth whose peer went down) is the one cut
off: the membership gives up its share at once instead of after the peers' timeouts, and never
takes the others' buckets while it has no carrier (clusterip.core.quorum).
"""

from __future__ import annotations

from typing import Any

IFF_LOWER_UP = 1 << 16


class CarrierWatch:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._ipr: Any = None
        self._index = 0
        self.up: bool | None = None

    def open(self) -> None:
        from pyroute2 import IPRoute, IPRSocket
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        # Subscribe first, then read the state: no change can fall in between.
        sock = IPRSocket()
        try:
            sock.bind(groups=RTMGRP_LINK)
            with IPRoute() as ipr:
                (self._index,) = ipr.link_lookup(ifname=self.ifname) or (0,)
                self.up = _carrier(ipr.get_links(self._index)[0]) if self._index else None
        except BaseException:
            sock.close()
            raise
        self._ipr = sock

    def fileno(self) -> int:
        fd: int = self._ipr.fileno()
        return fd

    def poll(self) -> bool | None:
        """Read what arrived; the new carrier state if it changed, else None."""
        changed = None
        for msg in self._ipr.get():
            if msg.get("index") != self._index or msg.get("event") != "RTM_NEWLINK":
                continue
            up = _carrier(msg)
            if up != self.up:
                self.up = changed = up
        return changed

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def _carrier(link: Any) -> bool:
    """UP, or UNKNOWN (drivers that do not report it) with the lower layer up."""
    state = link.get_attr("IFLA_OPERSTATE")
    return state == "UP" or (state == "UNKNOWN" and bool((link.get("flags") or 0) & IFF_LOWER_UP))
