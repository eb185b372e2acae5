"""Live flows per bucket, from this node's conntrack table (pyroute2's netlink conntrack).

A draining bucket is done when this node has no live TCP flow in it: the bucket of each entry
is computed with the same kernel-exact jhash as the datapath uses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from typing import Protocol

from clusterip.config import VipConfig
from clusterip.hashing import flow_bucket

# conntrack's TCP states (include/uapi/linux/netfilter/nf_conntrack_tcp.h) that are over.
_TCP_DONE = {"TIME_WAIT", "CLOSE", "NONE"}


class FlowSource(Protocol):
    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        """Live TCP flows to cfg.vip on this node, counted per bucket 1..modulus."""


class ConntrackFlows:
    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        counts: Counter[int] = Counter()
        want = NFCTAttrTuple(proto=socket.IPPROTO_TCP, daddr=str(cfg.vip))
        with Conntrack() as ct:
            for entry in ct.dump_entries(tuple_orig=want):
                if entry.protoinfo is not None and entry.protoinfo.state_name() in _TCP_DONE:
                    continue
                t = entry.tuple_orig
                counts[
                    flow_bucket(
                        cfg.hashmode,
                        cfg.seed,
                        modulus,
                        ipaddress.IPv4Address(t.saddr),
                        t.sport,
                        t.dport,
                    )
                ] += 1
        return dict(counts)


class FakeFlows:
    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts = dict(counts or {})

    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        return dict(self.counts)
