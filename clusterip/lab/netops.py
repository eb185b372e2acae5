"""Network operations for the lab build (`NetOps`: real `Pyroute2Ops`, fake `MemoryNetOps`)
and running code inside a network namespace (`in_netns`)."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Protocol, TypeVar

from clusterip.lab.errors import LabError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


# --- entering a namespace -------------------------------------------------------------------
def _setns_to(fd: int) -> Callable[[], None]:
    """A function joining the namespace open as `fd`. libc is looked up here, in the caller,
    so that a forked child (preexec_fn) only makes the call."""
    setns = ctypes.CDLL(None, use_errno=True).setns

    def join() -> None:
        if setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    return join


def in_netns(ns: str, fn: Callable[[], _T]) -> _T:
    """Run `fn` in a short-lived thread that joined namespace `ns` (setns is per thread)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
            try:
                _setns_to(fd)()
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: _T = box["value"]
    return value


# --- network operations: the I/O boundary of the build ----------------------------------------
Port = tuple[str, str, str]  # (switch port name, host namespace, host interface name)


class NetOps(Protocol):
    """What the build needs from the kernel. `Pyroute2Ops` is real, `MemoryNetOps` a fake."""

    def list_ns(self) -> set[str]: ...
    def create_ns(self, name: str) -> int: ...
    def ns_inode(self, name: str) -> int | None: ...
    def remove_ns(self, name: str) -> None: ...
    def sysctls(self, ns: str, values: Mapping[str, str]) -> None: ...
    def setup_switch(
        self, ns: str, bridge: str, ports: Sequence[Port], *, snooping: bool = False
    ) -> None: ...
    def nft(self, ns: str, script: str) -> None: ...
    def setup_host(
        self,
        ns: str,
        ifname: str,
        mac: str,
        addrs: Sequence[str],
        prefixlen: int,
        routes: Sequence[tuple[str, str]],
    ) -> None: ...
    def neighbour(self, ns: str, ip: str) -> str | None: ...
    def setup_ipv6(
        self,
        ns: str,
        ifname: str,
        addrs: Sequence[str],
        prefixlen: int,
        routes: Sequence[tuple[str, str]],
        *,
        lo_addrs: Sequence[str] = (),
    ) -> None: ...


IFA_F_NODAD = 0x02


class Pyroute2Ops:
    """NetOps through pyroute2 netlink; sysctls through /proc/sys from a thread in the ns."""

    def list_ns(self) -> set[str]:
        from pyroute2 import netns

        return set(netns.listnetns())

    def create_ns(self, name: str) -> int:
        from pyroute2 import netns

        netns.create(name)
        ino = self.ns_inode(name)
        if ino is None:
            raise LabError(f"namespace {name!r} vanished right after it was created")
        return ino

    def ns_inode(self, name: str) -> int | None:
        path = os.path.join(NETNS_DIR, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        # An unmounted leftover file is a plain file on /run's filesystem, not an nsfs inode.
        return st.st_ino if os.path.ismount(path) else None

    def remove_ns(self, name: str) -> None:
        from pyroute2 import netns

        with suppress(FileNotFoundError):
            netns.remove(name)

    def sysctls(self, ns: str, values: Mapping[str, str]) -> None:
        def write() -> None:
            for key, value in values.items():
                path = "/proc/sys/" + key.replace(".", "/")
                if os.path.exists(path):  # e.g. no ipv6 in this kernel: nothing to disable
                    with open(path, "w") as fh:
                        fh.write(value)

        in_netns(ns, write)

    def setup_switch(
        self, ns: str, bridge: str, ports: Sequence[Port], *, snooping: bool = False
    ) -> None:
        """The bridge; `snooping`: IGMP/MLD snooping with the bridge as the querier."""
        with _iproute(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link(
                "add",
                ifname=bridge,
                kind="bridge",
                br_stp_state=0,
                br_mcast_snooping=int(snooping),
                br_mcast_querier=int(snooping),
                br_nf_call_iptables=0,
                br_nf_call_arptables=0,
            )
            br = ipr.link_lookup(ifname=bridge)[0]
            for port, peer_ns, peer_if in ports:
                ipr.link(
                    "add", ifname=port, kind="veth", peer={"ifname": peer_if, "net_ns_fd": peer_ns}
                )
                idx = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=idx, master=br)
                ipr.brport("set", index=idx, mcast_flood=1, bcast_flood=1, unicast_flood=1)
                if snooping:  # every port a router port: clusterip.lab.snoop says why
                    ipr.brport("set", index=idx, multicast_router=2)
                ipr.link("set", index=idx, state="up")
            ipr.link("set", index=br, state="up")

    def nft(self, ns: str, script: str) -> None:
        """Load an nft script in namespace `ns` (one transaction)."""
        from clusterip.nft import NftFirewall

        in_netns(ns, lambda: NftFirewall().apply(script))

    def setup_host(
        self,
        ns: str,
        ifname: str,
        mac: str,
        addrs: Sequence[str],
        prefixlen: int,
        routes: Sequence[tuple[str, str]],
    ) -> None:

        with _iproute(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=idx, address=mac)
            for addr in addrs:
                ipr.addr("add", index=idx, address=addr, prefixlen=prefixlen)
            ipr.link("set", index=idx, state="up")
            for dst, gateway in routes:
                ipr.route("add", dst=dst, gateway=gateway, oif=idx)

    def setup_ipv6(
        self,
        ns: str,
        ifname: str,
        addrs: Sequence[str],
        prefixlen: int,
        routes: Sequence[tuple[str, str]],
        *,
        lo_addrs: Sequence[str] = (),
    ) -> None:
        """IPv6 addresses on `ifname` (`prefixlen`) and /128s on lo, all nodad; routes."""
        with _iproute(ns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            lo = ipr.link_lookup(ifname="lo")[0]
            for addr in addrs:
                ipr.addr("add", index=idx, address=addr, prefixlen=prefixlen, flags=IFA_F_NODAD)
            for addr in lo_addrs:
                ipr.addr("add", index=lo, address=addr, prefixlen=128, flags=IFA_F_NODAD)
            for dst, gateway in routes:
                ipr.route("add", dst=dst, gateway=gateway, oif=idx)

    def neighbour(self, ns: str, ip: str) -> str | None:

        usable = 0x02 | 0x04 | 0x08 | 0x10 | 0x80  # REACHABLE STALE DELAY PROBE PERMANENT
        with _iproute(ns) as ipr:
            for msg in ipr.get_neighbours(dst=ip):
                lladdr = msg.get_attr("NDA_LLADDR")
                if lladdr and msg["state"] & usable:
                    return str(lladdr)
        return None


class MemoryNetOps:
    """In-memory NetOps for tests without root: records namespaces, links and calls."""

    def __init__(self) -> None:
        self.namespaces: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.sysctl_values: dict[str, dict[str, str]] = {}
        self.links: dict[str, dict[str, Any]] = {}
        self.neighbours: dict[tuple[str, str], str] = {}
        self._next_ino = 1

    def list_ns(self) -> set[str]:
        return set(self.namespaces)

    def create_ns(self, name: str) -> int:
        if name in self.namespaces:
            raise FileExistsError(name)
        self.calls.append(("create_ns", name))
        self.namespaces[name] = self._next_ino
        self.links[name] = {"lo": {}}
        self._next_ino += 1
        return self.namespaces[name]

    def ns_inode(self, name: str) -> int | None:
        return self.namespaces.get(name)

    def remove_ns(self, name: str) -> None:
        self.calls.append(("remove_ns", name))
        self.namespaces.pop(name, None)
        self.links.pop(name, None)

    def sysctls(self, ns: str, values: Mapping[str, str]) -> None:
        self._need(ns, "sysctls")
        self.sysctl_values.setdefault(ns, {}).update(values)

    def setup_switch(
        self, ns: str, bridge: str, ports: Sequence[Port], *, snooping: bool = False
    ) -> None:
        self._need(ns, "setup_switch")
        self.links[ns][bridge] = {"kind": "bridge", "up": True, "snooping": snooping}
        for port, peer_ns, peer_if in ports:
            self._need(peer_ns, "setup_switch")
            self.links[ns][port] = {"kind": "veth", "master": bridge, "up": True}
            self.links[peer_ns][peer_if] = {"kind": "veth", "peer": (ns, port)}

    def setup_host(
        self,
        ns: str,
        ifname: str,
        mac: str,
        addrs: Sequence[str],
        prefixlen: int,
        routes: Sequence[tuple[str, str]],
    ) -> None:
        self._need(ns, "setup_host")
        link = self.links[ns][ifname]
        link.update(mac=mac, addrs=[f"{a}/{prefixlen}" for a in addrs], up=True)
        link["routes"] = list(routes)

    def setup_ipv6(
        self,
        ns: str,
        ifname: str,
        addrs: Sequence[str],
        prefixlen: int,
        routes: Sequence[tuple[str, str]],
        *,
        lo_addrs: Sequence[str] = (),
    ) -> None:
        self._need(ns, "setup_ipv6")
        link = self.links[ns][ifname]
        link.setdefault("addrs6", []).extend(f"{a}/{prefixlen}" for a in addrs)
        link.setdefault("routes6", []).extend(routes)
        self.links[ns]["lo"].setdefault("addrs6", []).extend(f"{a}/128" for a in lo_addrs)

    def neighbour(self, ns: str, ip: str) -> str | None:
        return self.neighbours.get((ns, ip))

    def nft(self, ns: str, script: str) -> None:
        self._need(ns, "nft")
        self.links[ns].setdefault("nft", []).append(script)

    def _need(self, ns: str, call: str) -> None:
        self.calls.append((call, ns))
        if ns not in self.namespaces:
            raise FileNotFoundError(f"no namespace {ns!r}")


def _iproute(ns: str) -> Any:
    """An rtnetlink socket in namespace `ns`: pyroute2 >= 0.9's IPRoute(netns=), or NetNS on
    older ones (Debian 12 ships 0.7.2, where IPRoute takes no netns)."""
    import pyroute2

    try:
        return pyroute2.IPRoute(netns=ns)
    except TypeError:
        return pyroute2.NetNS(ns)
