"""Live flows per bucket, from this node's conntrack table (pyroute2's netlink conntrack).

A draining bucket is done when this node has no live TCP flow in it: the bucket of each entry
is computed with the same kernel-exact jhash as the datapath uses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from clusterip.config import VipConfig
from clusterip.hashing import flow_bucket

# conntrack's TCP states (include/uapi/linux/netfilter/nf_conntrack_tcp.h) that are over.
_TCP_DONE = {"TIME_WAIT", "CLOSE", "NONE"}


Flow = tuple[str, int, int]  # client address, client port, bucket (1-based)


class FlowSource(Protocol):
    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        """Live TCP flows to cfg.vip on this node, counted per bucket 1..modulus."""

    def flows(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        """The live TCP flows to cfg.vip on this node, each with its bucket."""


PROC_CONNTRACK = "/proc/net/nf_conntrack"


BucketOf = Callable[[str, int, int], int]


def parse_proc_conntrack(
    text: str, cfg: VipConfig, modulus: int, bucket_of: BucketOf | None = None
) -> dict[int, int]:
    """Live TCP flows to the VIP per bucket, from /proc/net/nf_conntrack's text."""
    return dict(Counter(b for _s, _p, b in proc_flows(text, cfg, modulus, bucket_of)))


def proc_flows(
    text: str, cfg: VipConfig, modulus: int, bucket_of: BucketOf | None = None
) -> list[Flow]:
    """Live TCP and UDP flows to the VIP, each with its bucket, from /proc/net/nf_conntrack.

    A line: `ipv4 2 tcp 6 431999 ESTABLISHED src=C dst=VIP sport=P dport=Q src=... [ASSURED]
    ...`; the first src/dst/sport/dport are the original direction.
    """
    vip = f"dst={cfg.vip}"
    out: list[Flow] = []
    for line in text.splitlines():
        if vip not in line:
            continue
        words = line.split()
        if len(words) < 10 or words[0] != "ipv4" or words[2] not in ("tcp", "udp"):
            continue
        if words[2] == "tcp" and words[5] in _TCP_DONE:
            continue
        fields: dict[str, str] = {}
        for word in words[4:]:  # the first src/dst/ports: the original direction
            key, _, value = word.partition("=")
            if key in ("src", "dst", "sport", "dport") and key not in fields:
                fields[key] = value
        if fields.get("dst") != str(cfg.vip):
            continue
        src, sport, dport = fields["src"], int(fields["sport"]), int(fields["dport"])
        find = bucket_of or (lambda a, p, q: _bucket(cfg, modulus, a, p, q))
        out.append((src, sport, find(src, sport, dport)))
    return out


def _bucket(cfg: VipConfig, modulus: int, src: str, sport: int, dport: int) -> int:
    addr = ipaddress.IPv4Address(src)
    return flow_bucket(cfg.hashmode, cfg.seed, modulus, addr, sport, dport)


class ConntrackFlows:
    """This namespace's conntrack table: /proc/net/nf_conntrack where the kernel has it (a
    text read, about a millisecond for hundreds of flows), else netlink through pyroute2 (which
    parses about a flow per 3 ms in Python: too slow to run often beside heartbeats)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, str, int, int], int] = {}

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

        try:
            with open(PROC_CONNTRACK) as fh:
                return proc_flows(fh.read(), cfg, modulus, bucket_of)
        except FileNotFoundError:
            return self.flows_netlink(cfg, modulus)

    def per_bucket_netlink(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        return dict(Counter(b for _s, _p, b in self.flows_netlink(cfg, modulus)))

    def flows_netlink(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        out: list[Flow] = []
        want = NFCTAttrTuple(proto=socket.IPPROTO_TCP, daddr=str(cfg.vip))
        with Conntrack() as ct:
            for entry in ct.dump_entries(tuple_orig=want):
                if entry.protoinfo is not None and entry.protoinfo.state_name() in _TCP_DONE:
                    continue
                t = entry.tuple_orig
                out.append((t.saddr, t.sport, _bucket(cfg, modulus, t.saddr, t.sport, t.dport)))
        return out


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
