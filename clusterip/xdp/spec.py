"""What the XDP pre-filter is told: per-VIP configuration and per-bucket verdicts (pure).

The layout of `Conf` is the program's `struct xdp_conf` (bpf/clusterip_xdp.c): its read-only
data, written once before the program is loaded. `Buckets` is what the control plane wants
per bucket; `steps` orders the map writes so that a packet never meets a state that drops
what either the old or the new state would pass.
"""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from clusterip.config import HASHMODES, PROTOCOLS, ConfigError, VipConfig, parse_mac
from clusterip.core.ownership import Ownership

MAX_VIPS = 8
MAX_BUCKETS = 16384  # per VIP: clusterip.agent.assign.MAX_BUCKETS
DPORT_BYTES = 8192
PROG_NAME = "clusterip_xdp"
MAP_BUCKETS, MAP_MODULUS, MAP_COUNTERS = "buckets", "modulus", "counters"
COUNTERS = ("dropped", "passed", "owned", "forged")  # forged: multicast source, dropped
N_COUNTERS = 4  # slots per VIP in the counters map
PROTO_BITS = {"tcp": 1, "udp": 2, "sctp": 4}
MODES = ("auto", "on", "native", "generic")

PASS, DROP, OWNED = 0, 1, 2  # bucket values; the map starts at 0 = PASS
VERDICT_NAMES = {PASS: "pass", DROP: "drop", OWNED: "owned"}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class XdpError(Exception):
    """The kernel or the driver cannot do what was asked; str() is one line saying why."""


# --- the program's read-only data -------------------------------------------------------------
class VipCfg(ctypes.Structure):
    _fields_ = (
        ("addr", ctypes.c_uint8 * 16),
        ("seed", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("hashmode", ctypes.c_uint8),
        ("protos", ctypes.c_uint8),
        ("any_dport", ctypes.c_uint8),
        ("owned_protos", ctypes.c_uint8),
        ("cluster_mac", ctypes.c_uint8 * 6),
        ("pad", ctypes.c_uint8),
    )


class Conf(ctypes.Structure):
    _fields_ = (
        ("n_vips", ctypes.c_uint32),
        ("own_mac", ctypes.c_uint8 * 6),
        ("has_v6", ctypes.c_uint8),
        ("meta_bucket", ctypes.c_uint8),
        ("vips", VipCfg * MAX_VIPS),
        ("dports", (ctypes.c_uint8 * DPORT_BYTES) * MAX_VIPS),
    )


@dataclass(frozen=True)
class XdpVip:
    """One VIP as the pre-filter sees it (the fields nft's hash depends on)."""

    vip: Address
    hashmode: str
    seed: int
    protocol: str = "all"
    dports: tuple[int, ...] = ()
    clustermac: str = "03:bf:00:00:00:00"
    owned_protos: tuple[str, ...] = ("tcp",)  # what the OWNED fast path may rewrite

    def __post_init__(self) -> None:
        if not isinstance(self.vip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise ConfigError(f"bad VIP {self.vip!r}: expected an IPv4 or IPv6 address")
        if self.hashmode not in HASHMODES:
            raise ConfigError(f"bad hashmode {self.hashmode!r}: allowed are {', '.join(HASHMODES)}")
        if not 0 <= self.seed <= 0xFFFFFFFF:
            raise ConfigError(f"bad seed {self.seed!r}: must fit in 32 bits (0 to 0xffffffff)")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"bad protocol {self.protocol!r}: allowed are {', '.join(PROTOCOLS)}")
        bad = [p for p in self.dports if not 1 <= p <= 65535]
        if bad:
            raise ConfigError(f"bad destination port {bad[0]}: expected a number from 1 to 65535")
        # Any cluster MAC a MAC mode allows: multicast (multicast, igmp) or unicast (unicast).
        unicast = self.clustermac[:2].lower() in {f"{b:02x}" for b in range(0, 256, 2)}
        parse_mac(self.clustermac, "unicast" if unicast else "multicast")
        for p in self.owned_protos:
            if p not in PROTO_BITS:
                raise ConfigError(f"bad owned protocol {p!r}: allowed are tcp, udp, sctp")

    @classmethod
    def from_config(cls, cfg: VipConfig, *, owned_protos: Iterable[str] = ("tcp",)) -> XdpVip:
        return cls(
            vip=cfg.vip,
            hashmode=cfg.hashmode,
            seed=cfg.seed,
            protocol=cfg.protocol,
            dports=tuple(cfg.dports),
            clustermac=cfg.clustermac,
            owned_protos=tuple(owned_protos),
        )

    def protos_mask(self) -> int:
        if self.protocol == "all":
            return sum(PROTO_BITS.values())
        return PROTO_BITS[self.protocol]


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ConfigError(f"bad MAC {mac!r}: expected six hex bytes such as 02:c1:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(
            f"bad MAC {mac!r}: expected six hex bytes such as 02:c1:00:00:00:01"
        ) from None


def build_conf(vips: Iterable[XdpVip], own_mac: str, *, meta_bucket: bool = False) -> Conf:
    """The program's `conf`, for `vips` on an interface whose own MAC is `own_mac`."""
    vips = list(vips)
    if not 1 <= len(vips) <= MAX_VIPS:
        raise ConfigError(f"bad number of VIPs on one interface {len(vips)}: 1 to {MAX_VIPS}")
    seen = [v.vip for v in vips]
    dup = next((a for a in seen if seen.count(a) > 1), None)
    if dup is not None:
        raise ConfigError(f"VIP {dup} given twice for one interface")
    conf = Conf()
    conf.n_vips = len(vips)
    conf.own_mac[:] = list(mac_bytes(own_mac))
    conf.meta_bucket = int(meta_bucket)
    for i, v in enumerate(vips):
        c = conf.vips[i]
        c.addr[: len(v.vip.packed)] = list(v.vip.packed)
        c.family = v.vip.version
        conf.has_v6 |= int(v.vip.version == 6)
        c.seed = v.seed
        c.hashmode = HASHMODES.index(v.hashmode)
        c.protos = v.protos_mask()
        c.any_dport = int(not v.dports)
        c.owned_protos = sum(PROTO_BITS[p] for p in set(v.owned_protos))
        c.cluster_mac[:] = list(mac_bytes(v.clustermac))
        for port in v.dports:
            conf.dports[i][port >> 3] |= 1 << (port & 7)
    return conf


def parse_conf(raw: bytes) -> tuple[list[XdpVip], str]:
    """Inverse of build_conf (as read back from a loaded program): (VIPs, own MAC)."""
    if len(raw) != ctypes.sizeof(Conf):
        raise XdpError(f"read-only data of {len(raw)} bytes, expected {ctypes.sizeof(Conf)}")
    conf = Conf.from_buffer_copy(raw)
    vips = []
    for i in range(min(conf.n_vips, MAX_VIPS)):
        c = conf.vips[i]
        addr: Address = (
            ipaddress.IPv4Address(bytes(c.addr[:4]))
            if c.family == 4
            else ipaddress.IPv6Address(bytes(c.addr))
        )
        protos = [p for p, bit in PROTO_BITS.items() if c.protos & bit]
        dports: tuple[int, ...] = ()
        if not c.any_dport:
            bits = bytes(conf.dports[i])
            dports = tuple(p for p in range(1, 65536) if bits[p >> 3] >> (p & 7) & 1)
        vips.append(
            XdpVip(
                vip=addr,
                hashmode=HASHMODES[c.hashmode],
                seed=c.seed,
                protocol="all" if len(protos) == len(PROTO_BITS) else protos[0],
                dports=dports,
                clustermac=_fmt_mac(bytes(c.cluster_mac)),
                owned_protos=tuple(p for p, bit in PROTO_BITS.items() if c.owned_protos & bit),
            )
        )
    return vips, _fmt_mac(bytes(conf.own_mac))


def _fmt_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# --- per-bucket verdicts ----------------------------------------------------------------------
@dataclass(frozen=True)
class Buckets:
    """Per bucket 1..modulus: PASS for `passing`, OWNED for `owned`, DROP for the rest.

    modulus 0 means "not set": the program passes every packet of the VIP.
    """

    modulus: int = 0
    passing: frozenset[int] = field(default_factory=frozenset)
    owned: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not 0 <= self.modulus <= MAX_BUCKETS:
            raise ConfigError(f"bad bucket count {self.modulus}: expected 1 to {MAX_BUCKETS}")
        for name, values in (("pass", self.passing), ("owned", self.owned)):
            bad = sorted(b for b in values if not 1 <= b <= self.modulus)
            if bad:
                raise ConfigError(f"bad {name} bucket {bad[0]}: expected 1 to {self.modulus}")
        if self.passing & self.owned:
            raise ConfigError(f"buckets {sorted(self.passing & self.owned)} both pass and owned")

    @classmethod
    def of(cls, modulus: int, passing: Iterable[int] = (), owned: Iterable[int] = ()) -> Buckets:
        owned = frozenset(owned)
        return cls(modulus, frozenset(passing) - owned, owned)

    def verdict(self, bucket: int) -> int:
        if self.modulus == 0 or bucket in self.passing:
            return PASS
        return OWNED if bucket in self.owned else DROP

    def values(self) -> dict[int, int]:
        """The verdict of every bucket that is not PASS."""
        out = dict.fromkeys(self.owned, OWNED)
        if self.modulus:
            out.update(
                (b, DROP)
                for b in range(1, self.modulus + 1)
                if b not in self.passing and b not in self.owned
            )
        return out

    def meet(self, other: Buckets) -> Buckets:
        """A state safe for both: a bucket keeps its verdict where both agree, else PASS.

        Set it before an nft change from `self` to `other`, and `other` after it: a bucket
        moving here passes XDP before nft takes it; one moving away is dropped by XDP only
        after nft has released it. With different moduli nothing is dropped meanwhile.
        """
        if self.modulus != other.modulus:
            return Buckets(other.modulus, frozenset(range(1, other.modulus + 1)))
        mine, theirs = self.values(), other.values()
        keep = {b: v for b, v in mine.items() if theirs.get(b) == v}
        owned = frozenset(b for b, v in keep.items() if v == OWNED)
        dropped = {b for b, v in keep.items() if v == DROP}
        passing = frozenset(range(1, self.modulus + 1)) - owned - dropped
        return Buckets(self.modulus, passing, owned)


Step = tuple[str, int | Mapping[int, int]]  # ("buckets", {bucket: value}) or ("modulus", N)


def steps(old: Buckets, new: Buckets) -> list[Step]:
    """Map writes from `old` to `new`, each bucket through PASS, so no intermediate state drops
    a packet that `old` or `new` passes (nor fast-paths one that either sends through nft)."""
    out: list[Step] = []
    before, after = old.values(), new.values()
    if old.modulus != new.modulus:
        if before:
            out.append(("buckets", dict.fromkeys(before, PASS)))
        out.append(("modulus", new.modulus))
        if after:
            out.append(("buckets", after))
        return out
    changed = sorted(b for b in set(before) | set(after) if before.get(b) != after.get(b))
    opening = {b: PASS for b in changed if b in before}
    closing = {b: after[b] for b in changed if b in after}
    if opening:
        out.append(("buckets", opening))
    if closing:
        out.append(("buckets", closing))
    return out


def buckets_for(own: Ownership, *, owned_fast: bool = False) -> Buckets:
    """The XDP view of an nft ownership: owned and draining buckets pass (nft decides their
    flows); with owned_fast, owned buckets in the steady state (not guarded, not orphaned,
    no kept flows anywhere) are OWNED. Everything else drops."""
    passing = own.owned | own.draining
    fast: frozenset[int] = frozenset()
    if owned_fast and not own.kept:
        fast = own.owned - own.guarded - own.orphaned
    return Buckets.of(own.modulus, passing, fast)


CLI_MODES = ("auto", "on", "off")  # `--xdp` and the config key `xdp`


def parse_cli_mode(value: object) -> str:
    """A `--xdp` / `xdp =` value: auto (native XDP where the driver has it, else nft alone),
    on (native, else generic) or off."""
    mode = str(value).strip().lower() if not isinstance(value, bool) else ("on" if value else "off")
    if mode not in CLI_MODES:
        raise ConfigError(f"bad XDP mode {value!r}: allowed are {', '.join(CLI_MODES)}")
    return mode


def parse_mode(text: str) -> str:
    """A `--xdp` value: auto, on, off, native or generic."""
    mode = str(text).strip().lower()
    if mode not in (*MODES, "off"):
        raise ConfigError(f"bad XDP mode {text!r}: allowed are {', '.join((*MODES, 'off'))}")
    return mode
