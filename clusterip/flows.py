"""Live flows per bucket on this node: its TCP sockets, and the UDP flows its datapath saw.

TCP flows are the kernel's own sockets on the VIP, read through sock_diag netlink
(clusterip.sockdiag: 15 ms for 10,000 sockets). They serve twice: the datapath's snapshot of
this node's flows when buckets start to move (the `mine` set, clusterip.render), and the
agent's count of live flows per draining bucket (a bucket is done when none is left). UDP
flows are the agent's `udp_seen` set, which the datapath refreshes on every packet of an owned
bucket. The bucket of each flow is computed with the same kernel-exact jhash as the datapath.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from clusterip.config import Address, VipConfig
from clusterip.hashing import flow_bucket
from clusterip.nft import NftFirewall
from clusterip.render import table_name
from clusterip.sockdiag import Sock, tcp_sockets

Flow = tuple[str, int, int]  # client address, client port, bucket (1-based)
TcpFlow = tuple[str, int, int]  # client address, client port, VIP port: the `mine` set's key
BucketOf = Callable[[str, int, int], int]


class FlowSource(Protocol):
    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        """Live flows to cfg.vip on this node, counted per bucket 1..modulus."""

    def flows(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        """The live flows to cfg.vip on this node, each with its bucket."""


class SocketTable(Protocol):
    def sockets(self, vip: Address) -> list[Sock]:
        """This node's TCP sockets whose local address is `vip` (no listeners)."""


class SockDiag:
    """The kernel's sockets in the current network namespace (sock_diag netlink)."""

    def sockets(self, vip: Address) -> list[Sock]:
        return tcp_sockets(vip)


class FakeSockets:
    """Canned sockets for tests: VIP -> sockets."""

    def __init__(self, table: dict[str, list[Sock]] | None = None) -> None:
        self.table = dict(table or {})
        self.calls = 0

    def sockets(self, vip: Address) -> list[Sock]:
        self.calls += 1
        return list(self.table.get(str(vip), []))


def snapshot(sockets: Iterable[Sock]) -> list[TcpFlow]:
    """The `mine` set's keys for this node's sockets on the VIP: every live flow it has,
    whatever its bucket (only the buckets that check flows ever look at the set, and a bucket
    that starts to check gets a fresh snapshot; hashing each flow in Python to leave some out
    would cost more than nft spends adding them). TIME_WAIT left out (the kernel does not even
    send them, see clusterip.sockdiag): the flow is over, and there are many."""
    return [(s.raddr, s.rport, s.lport) for s in sockets if not s.over]


def _bucket(cfg: VipConfig, modulus: int, src: str, sport: int, dport: int) -> int:
    addr = ipaddress.ip_address(src)
    return flow_bucket(cfg.hashmode, cfg.seed, modulus, addr, sport, dport)


class SocketFlows:
    """This namespace's TCP sockets and the agent's UDP flow set, with a bucket memo."""

    def __init__(self, *, udp: bool = True, table: SocketTable | None = None) -> None:
        self.udp = udp
        self.table: SocketTable = table if table is not None else SockDiag()
        # (VIP, modulus, VIP port) -> (client address, client port) -> bucket
        self._memo: dict[tuple[str, int, int], dict[tuple[str, int], int]] = {}
        self._nft: NftFirewall | None = None  # its own netlink socket: used by a thread

    def per_bucket(self, cfg: VipConfig, modulus: int) -> dict[int, int]:
        return dict(Counter(b for _s, _p, b in self.flows(cfg, modulus)))

    def flows(self, cfg: VipConfig, modulus: int) -> list[Flow]:
        """Every live flow with its bucket. The agent measures this in its loop when a drain
        begins: a busy UDP service has tens of thousands of flows in `udp_seen`, so the set
        is read as text (half the time of nft's JSON) and each flow is hashed once."""
        if sum(map(len, self._memo.values())) > 200_000:  # flows come and go: forget them
            self._memo.clear()
        vip = str(cfg.vip)
        # Live flows only: a TIME_WAIT socket's flow is over.
        tcp = [s for s in self.table.sockets(cfg.vip) if not s.over]
        out: list[Flow] = []
        for dport in sorted({s.lport for s in tcp}):
            memo = self._memo.setdefault((vip, modulus, dport), {})
            out.extend(
                (s.raddr, s.rport, _memo_bucket(memo, cfg, modulus, s.raddr, s.rport, dport))
                for s in tcp
                if s.lport == dport
            )
        if self.udp and cfg.protocol in ("udp", "all"):
            # The set holds no destination port: in the dport hashmode the port is that of
            # the configured service when there is exactly one (else the flow counts as 0).
            dport = cfg.dports[0] if len(cfg.dports) == 1 else 0
            memo = self._memo.setdefault((vip, modulus, dport), {})
            get = memo.get
            for pair in self._udp(cfg):
                b = get(pair)
                if b is None:
                    b = memo[pair] = _bucket(cfg, modulus, pair[0], pair[1], dport)
                out.append((pair[0], pair[1], b))
        return out

    def _udp(self, cfg: VipConfig) -> list[tuple[str, int]]:
        if self._nft is None:
            self._nft = NftFirewall()
        # Empty when there are no agent tables (static mode), or they are being replaced.
        text = self._nft.list_text(f"set netdev {table_name(cfg)} udp_seen")
        return udp_pairs(text)


def udp_pairs(text: str) -> list[tuple[str, int]]:
    """The (client address, client port) elements of a `udp_seen` set as `nft list` prints it."""
    return [(a, int(p)) for a, p in _PAIR.findall(text)]


# An element of an `ipv4_addr . inet_service` or `ipv6_addr . inet_service` set in nft's text
# ("198.18.1.7 . 40312 timeout 30s expires 29s1ms", "2001:db8::7 . 40312 ..."); nft prints
# ports as numbers unless asked for service names.
_PAIR = re.compile(r"(?<![\w:.])(\d+\.\d+\.\d+\.\d+|[0-9a-fA-F]*:[0-9a-fA-F:.]*) \. (\d+)\b")


def _memo_bucket(
    memo: dict[tuple[str, int], int], cfg: VipConfig, modulus: int, src: str, sport: int, dport: int
) -> int:
    b = memo.get((src, sport))
    if b is None:
        b = memo[(src, sport)] = _bucket(cfg, modulus, src, sport, dport)
    return b


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
