"""Live flows per bucket on this node: its TCP sockets, and the UDP flows its datapath saw.

A draining bucket is done when this node has no live flow in it; the flows it keeps are
announced to the other nodes (clusterip.core.kept). No conntrack: TCP flows are the
kernel's own sockets (/proc/net/tcp of this namespace, a text read of a few milliseconds for
thousands of sockets), UDP flows the agent's `udp_seen` set, which the datapath refreshes on
every packet of an owned bucket (clusterip.render). The bucket of each flow is computed with
the same kernel-exact jhash as the datapath uses.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from clusterip.config import VipConfig
from clusterip.hashing import flow_bucket
from clusterip.nft import NftFirewall
from clusterip.render import table_name

Flow = tuple[str, int, int]  # client address, client port, bucket (1-based)
BucketOf = Callable[[str, int, int], int]

PROC_TCP = "/proc/net/tcp"
# TCP states (include/net/tcp_states.h) of sockets that carry no flow: LISTEN, CLOSE and
# TIME_WAIT (over; the socket lookup at prerouting still finds it while it lasts).
_NO_FLOW = {0x0A, 0x07, 0x06}


class FlowSource(Protocol):
    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        """Live flows to cfg.vip on this node, counted per bucket 1..modulus."""

    def flows(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        """The live flows to cfg.vip on this node, each with its bucket."""


def _proc_addr(word: str) -> tuple[str, int]:
    """`0164A8C0:0050` -> ('192.168.100.1', 80): the kernel prints the address as a native
    32-bit integer (so little-endian machines reverse its bytes), the port as a number."""
    addr, _, port = word.partition(":")
    raw = struct.pack("=I", int(addr, 16))
    return str(ipaddress.IPv4Address(raw)), int(port, 16)


def proc_tcp_flows(text: str, vip: str) -> list[tuple[str, int, int]]:
    """(client address, client port, local port) of the live TCP sockets on `vip`, from
    /proc/net/tcp's text (established, handshaking and closing; not listening, not over)."""
    out: list[tuple[str, int, int]] = []
    for line in text.splitlines()[1:]:
        words = line.split()
        if len(words) < 4:
            continue
        try:
            state = int(words[3], 16)
            if state in _NO_FLOW:
                continue
            local, lport = _proc_addr(words[1])
            if local != vip:
                continue
            remote, rport = _proc_addr(words[2])
        except ValueError:
            continue
        out.append((remote, rport, lport))
    return out


def set_flows(objects: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    """(address, port) elements of an `ipv4_addr . inet_service` set, from nft's JSON."""
    out: list[tuple[str, int]] = []
    for obj in objects:
        body = obj.get("set")
        if not body:
            continue
        for elem in body.get("elem", []) or []:
            if isinstance(elem, dict) and "elem" in elem:  # with timeout/expires
                elem = elem["elem"]["val"]
            parts = elem.get("concat") if isinstance(elem, dict) else None
            if parts and len(parts) == 2:
                out.append((str(parts[0]), int(parts[1])))
    return out


def _bucket(cfg: VipConfig, modulus: int, src: str, sport: int, dport: int) -> int:
    addr = ipaddress.IPv4Address(src)
    return flow_bucket(cfg.hashmode, cfg.seed, modulus, addr, sport, dport)


class SocketFlows:
    """This namespace's TCP sockets and the agent's UDP flow set, with a bucket memo."""

    def __init__(self, *, udp: bool = True) -> None:
        self.udp = udp
        self._memo: dict[tuple[str, int, str, int, int], int] = {}
        self._nft: NftFirewall | None = None  # its own netlink socket: used by a thread

    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        return dict(Counter(b for _s, _p, b in self.flows(cfg, modulus)))

    def flows(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        if len(self._memo) > 200_000:  # flows come and go: forget now and then
            self._memo.clear()
        memo = self._memo
        vip = str(cfg.vip)

        def bucket_of(src: str, sport: int, dport: int) -> int:
            key = (vip, modulus, src, sport, dport)
            b = memo.get(key)
            if b is None:
                b = memo[key] = _bucket(cfg, modulus, src, sport, dport)
            return b

        with open(PROC_TCP) as fh:
            tcp = proc_tcp_flows(fh.read(), vip)
        out = [(src, sport, bucket_of(src, sport, dport)) for src, sport, dport in tcp]
        if self.udp and cfg.protocol in ("udp", "all"):
            # The set holds no destination port: in the dport hashmode the port is that of
            # the configured service when there is exactly one (else the flow counts as 0).
            dport = cfg.dports[0] if len(cfg.dports) == 1 else 0
            out.extend((a, p, bucket_of(a, p, dport)) for a, p in self._udp(cfg))
        return out

    def _udp(self, cfg: VipConfig) -> list[tuple[str, int]]:
        if self._nft is None:
            self._nft = NftFirewall()
        # None when there are no agent tables (static mode), or they are being replaced.
        return set_flows(self._nft.list_objects(f"set netdev {table_name(cfg)} udp_seen"))


class FakeFlows:
    """Canned flows for tests: counts per bucket, or explicit (address, port, bucket)."""

    def __init__(self, counts: dict[int, int] | None = None, flows: list[Flow] | None = None):
        self.counts = dict(counts or {})
        self.listed = list(flows or [])

    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        if self.listed:
            return dict(Counter(b for _s, _p, b in self.listed))
        return dict(self.counts)

    def flows(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        if self.listed:
            return list(self.listed)
        return [
            (f"198.18.{100 + b // 250}.{b % 250 + 1}", 1024 + i, b)
            for b, n in sorted(self.counts.items())
            for i in range(n)
        ]
