"""Cluster VIP configuration: the data every node must agree on, its validation and TOML form.

Pure: no I/O except `load_toml`, which reads the file it is given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from clusterip import macmode
from clusterip.macmode import DEFAULT_MAC_MODE, MAC_MODES

HASHMODES = ("sourceip", "sourceip-sourceport", "sourceip-sourceport-destport")
PROTOCOLS = ("tcp", "udp", "sctp", "all")
DEFAULT_HASHMODE = "sourceip-sourceport"
DEFAULT_PROTOCOL = "all"
MAX_NODES = 64
IFNAMSIZ = 15
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# The default cluster MAC's first two bytes (multicast mode): multicast and locally
# administered (0x03), then 0xbf for an IPv4 VIP (Microsoft NLB's multicast mode) and 0xb6 for
# an IPv6 VIP. Neither is in a range that IGMP or MLD snooping constrains (01:00:5e, 33:33), so
# switches flood it to every port, and an IPv4 and an IPv6 VIP never get the same default.
# The other MAC modes: clusterip.macmode.
MAC_PREFIX = macmode.MULTICAST_PREFIX


class ConfigError(ValueError):
    """Bad input: the message names the bad value and what is allowed."""


@dataclass(frozen=True)
class VipConfig:
    """One virtual IP served by the cluster, as every node must see it.

    `local_nodes` is this node's own part (static mode); everything else must be identical on
    every node.
    """

    vip: Address
    interface: str
    total_nodes: int
    local_nodes: tuple[int, ...] = ()
    protocol: str = DEFAULT_PROTOCOL
    dports: tuple[int, ...] = ()
    hashmode: str = DEFAULT_HASHMODE
    clustermac: str = ""
    seed: int = 0
    prefixlen: int = 32
    mac_mode: str = DEFAULT_MAC_MODE
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def version(self) -> int:
        """4 or 6: the VIP's address family."""
        return self.vip.version

    @property
    def uses_ports(self) -> bool:
        return self.hashmode != "sourceip"

    @property
    def mac_plan(self) -> macmode.MacPlan:
        """What the interface holds for the cluster MAC in this MAC mode (clusterip.macmode)."""
        return macmode.plan(self.mac_mode, self.clustermac, self.vip)

    def cluster_fields(self) -> dict[str, Any]:
        """The fields every node must agree on (for fingerprints and comparison). `mac_mode`
        only when it is not the default, so that the fingerprint of a multicast-mode cluster
        is what it was before MAC modes existed (a rolling upgrade keeps its members)."""
        fields: dict[str, Any] = {
            "vip": str(self.vip),
            "protocol": self.protocol,
            "dports": list(self.dports),
            "hashmode": self.hashmode,
            "clustermac": self.clustermac,
            "seed": self.seed,
            "total_nodes": self.total_nodes,
        }
        if self.mac_mode != DEFAULT_MAC_MODE:
            fields["mac_mode"] = self.mac_mode
        return fields

    def to_toml_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "vip": (
                str(self.vip)
                if self.prefixlen == self.vip.max_prefixlen
                else f"{self.vip}/{self.prefixlen}"
            ),
            "interface": self.interface,
            "protocol": self.protocol,
            "hashmode": self.hashmode,
            "clustermac": self.clustermac,
            "total_nodes": self.total_nodes,
            "local_node": list(self.local_nodes),
            "seed": f"{self.seed:08x}",
        }
        if self.mac_mode != DEFAULT_MAC_MODE:
            d["mac_mode"] = self.mac_mode
        if self.dports:
            d["dport"] = list(self.dports)
        return d


def derive_mac(vip: Address, mac_mode: str = DEFAULT_MAC_MODE) -> str:
    """Cluster MAC from the VIP. Multicast mode: 03:bf + the four bytes of an IPv4 VIP, as
    Microsoft NLB's multicast mode does; 03:b6 + the last four bytes of an IPv6 VIP (as 33:33
    multicast MACs take an IPv6 group's last four bytes).

    0x03 = multicast bit + locally-administered bit, so it can never clash with a vendor MAC,
    nor with the 01:00:5e (IPv4) and 33:33 (IPv6) multicast ranges that IGMP and MLD snooping
    switches forward only to the ports that joined a group: a VIP's frames would reach no node.
    The igmp and unicast modes: clusterip.macmode.
    """
    return macmode.default_mac(vip, mac_mode)


def parse_mac_mode(text: str) -> str:
    mode = str(text).strip().lower()
    if mode not in MAC_MODES:
        raise ConfigError(f"bad MAC mode {text!r}: allowed are {', '.join(MAC_MODES)}")
    return mode


def derive_seed(vip: Address) -> int:
    """A 32-bit hash seed from the VIP: identical on every node, different per VIP."""
    return int.from_bytes(hashlib.sha256(b"clusterip-seed\0" + vip.packed).digest()[:4], "big")


def parse_vip(text: str) -> tuple[Address, int]:
    raw = str(text).strip()
    try:
        iface = ipaddress.ip_interface(raw)
    except ValueError:
        raise ConfigError(
            f"bad VIP {raw!r}: expected an IPv4 or IPv6 address such as 192.0.2.10 or "
            "2001:db8::10 (optionally /prefix)"
        ) from None
    addr = iface.ip
    if isinstance(addr, ipaddress.IPv6Address):
        _check_vip6(raw, addr)
    elif (
        addr.is_multicast
        or addr.is_unspecified
        or addr.is_loopback
        or addr == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ConfigError(f"bad VIP {raw!r}: must be a unicast address")
    return addr, iface.network.prefixlen


def _check_vip6(raw: str, addr: ipaddress.IPv6Address) -> None:
    """An IPv6 VIP is a global or unique-local unicast address that neighbours can reach."""
    if addr.is_multicast:
        raise ConfigError(f"bad VIP {raw!r}: a multicast address (ff00::/8); must be unicast")
    if addr.is_link_local:
        raise ConfigError(
            f"bad VIP {raw!r}: a link-local address (fe80::/10) is per interface; use a global "
            "or unique-local (fc00::/7) address"
        )
    if addr.is_unspecified or addr.is_loopback:
        raise ConfigError(f"bad VIP {raw!r}: must be a unicast address")
    if addr.ipv4_mapped is not None:
        raise ConfigError(
            f"bad VIP {raw!r}: an IPv4-mapped address; write it as {addr.ipv4_mapped}"
        )


def parse_ip(text: str, what: str, version: int | None = None) -> Address:
    """An address (of the given family, if any): for `which --src` and the like."""
    raw = str(text).strip()
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        example = {4: "an IPv4 address such as 192.0.2.7", 6: "an IPv6 address such as 2001:db8::7"}
        expected = example.get(version or 0, "an address such as 192.0.2.7 or 2001:db8::7")
        raise ConfigError(f"bad {what} {text!r}: expected {expected}") from None
    if version is not None and addr.version != version:
        raise ConfigError(
            f"bad {what} {text!r}: an IPv{addr.version} address, but the VIP is IPv{version} "
            "(a flow has one address family)"
        )
    return addr


def parse_mac(text: str, mac_mode: str = DEFAULT_MAC_MODE, version: int = 4) -> str:
    """A cluster MAC, checked for the MAC mode (and the VIP's family, for igmp's groups)."""
    raw = str(text).strip()
    if not _MAC_RE.match(raw):
        raise ConfigError(
            f"bad cluster MAC {raw!r}: expected six hex bytes such as 03:bf:c0:00:02:0a"
        )
    mac = raw.lower().replace("-", ":")
    problem = macmode.mac_problem(mac, mac_mode, version)
    if problem:
        raise ConfigError(f"bad cluster MAC {raw!r}: {problem}")
    return mac


def parse_seed(text: str | int) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip()
        digits = raw[2:] if raw.lower().startswith("0x") else raw
        if not digits or not re.fullmatch(r"[0-9a-fA-F]{1,8}", digits):
            raise ConfigError(f"bad seed {raw!r}: expected 1 to 8 hex digits, e.g. 0x1a2b3c4d")
        value = int(digits, 16)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ConfigError(f"bad seed {text!r}: must fit in 32 bits (0 to 0xffffffff)")
    return value


def parse_hashmode(text: str) -> str:
    mode = str(text).strip()
    if mode not in HASHMODES:
        raise ConfigError(f"bad hashmode {mode!r}: allowed are {', '.join(HASHMODES)}")
    return mode


def parse_protocol(text: str) -> str:
    proto = str(text).strip().lower()
    if proto not in PROTOCOLS:
        raise ConfigError(f"bad protocol {text!r}: allowed are {', '.join(PROTOCOLS)}")
    return proto


def parse_port(value: str | int, what: str = "port") -> int:
    try:
        port = int(str(value).strip(), 10)
    except ValueError:
        raise ConfigError(f"bad {what} {str(value)!r}: expected a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"bad {what} {str(value)!r}: expected a number from 1 to 65535")
    return port


def parse_dports(values: Iterable[str | int]) -> tuple[int, ...]:
    ports: set[int] = set()
    for value in values:
        for part in str(value).split(","):
            if part.strip():
                ports.add(parse_port(part, "destination port"))
    return tuple(sorted(ports))


def parse_interface(text: str) -> str:
    name = str(text).strip()
    if not _IFNAME_RE.match(name):
        raise ConfigError(
            f"bad interface name {text!r}: 1 to {IFNAMSIZ} characters of letters, digits, _.:@-"
        )
    return name


def parse_total_nodes(value: str | int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"bad total nodes {str(value)!r}: expected a number from 1 to {MAX_NODES}"
        ) from None
    if not 1 <= n <= MAX_NODES:
        raise ConfigError(
            f"bad total nodes {str(value)!r}: expected a number from 1 to {MAX_NODES}"
        )
    return n


def parse_node(value: str | int, total: int) -> int:
    try:
        k = int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"bad local node {str(value)!r}: expected a number from 1 to {total}"
        ) from None
    if not 1 <= k <= total:
        raise ConfigError(f"bad local node {str(value)!r}: expected a number from 1 to {total}")
    return k


def build(
    *,
    vip: str,
    interface: str,
    total_nodes: str | int,
    local_nodes: Iterable[str | int] = (),
    protocol: str = DEFAULT_PROTOCOL,
    dports: Iterable[str | int] = (),
    hashmode: str = DEFAULT_HASHMODE,
    clustermac: str | None = None,
    seed: str | int | None = None,
    mac_mode: str | None = None,
) -> VipConfig:
    """Validate raw values (from flags or TOML) into a VipConfig; raises ConfigError."""
    addr, prefixlen = parse_vip(vip)
    iface = parse_interface(interface)
    total = parse_total_nodes(total_nodes)
    nodes = tuple(sorted({parse_node(k, total) for k in local_nodes}))
    proto = parse_protocol(protocol)
    ports = parse_dports(dports)
    if ports and proto == "all":
        # Ports only exist for protocols that have them; "all" + ports means tcp, udp and sctp.
        pass
    mode = parse_hashmode(hashmode)
    mmode = parse_mac_mode(mac_mode) if mac_mode else DEFAULT_MAC_MODE
    mac = parse_mac(clustermac, mmode, addr.version) if clustermac else derive_mac(addr, mmode)
    seed_value = parse_seed(seed) if seed is not None and seed != "" else derive_seed(addr)
    return VipConfig(
        vip=addr,
        interface=iface,
        total_nodes=total,
        local_nodes=nodes,
        protocol=proto,
        dports=ports,
        hashmode=mode,
        clustermac=mac,
        seed=seed_value,
        prefixlen=prefixlen,
        mac_mode=mmode,
    )


_TOML_KEYS = {
    "vip",
    "interface",
    "total_nodes",
    "local_node",
    "local_nodes",
    "protocol",
    "dport",
    "dports",
    "hashmode",
    "clustermac",
    "seed",
    "mac_mode",
}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def from_mapping(
    data: Mapping[str, Any], *, known_extra: Iterable[str] = (), agent: bool = False
) -> VipConfig:
    """One `[[vip]]` table of a TOML file (keys as the long flags, with _ for -).

    For the agent (`agent=True`) `total_nodes` is not needed: it has buckets instead of nodes.
    """
    allowed = _TOML_KEYS | set(known_extra)
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in config: allowed are {', '.join(sorted(allowed))}"
            )
    for key in ("vip", "interface") if agent else ("vip", "interface", "total_nodes"):
        if key not in data:
            raise ConfigError(f"missing key {key!r} in config entry {dict(data)!r}")
    cfg = build(
        vip=data["vip"],
        interface=data["interface"],
        total_nodes=data.get("total_nodes", 1),
        local_nodes=_as_list(data.get("local_node")) + _as_list(data.get("local_nodes")),
        protocol=data.get("protocol", DEFAULT_PROTOCOL),
        dports=_as_list(data.get("dport")) + _as_list(data.get("dports")),
        hashmode=data.get("hashmode", DEFAULT_HASHMODE),
        clustermac=data.get("clustermac"),
        seed=data.get("seed"),
        mac_mode=data.get("mac_mode"),
    )
    extra = {k: v for k, v in data.items() if k not in _TOML_KEYS}
    return replace(cfg, extra=extra)


def load_toml(
    path: str, *, known_extra: Iterable[str] = (), agent: bool = False
) -> list[VipConfig]:
    """Read a config file: `[[vip]]` tables (or one top-level table); raises ConfigError."""
    return parse_document(read_toml(path), source=path, known_extra=known_extra, agent=agent)


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it cannot be read or parsed."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"bad config file {path!r}: {exc}") from None


def parse_document(
    data: Mapping[str, Any],
    *,
    source: str = "config",
    known_extra: Iterable[str] = (),
    agent: bool = False,
) -> list[VipConfig]:
    if "vip" in data and isinstance(data["vip"], list):
        entries = data["vip"]
    elif "vip" in data:
        entries = [data]
    else:
        raise ConfigError(f"bad config {source!r}: expected [[vip]] tables")
    configs = [from_mapping(e, known_extra=known_extra, agent=agent) for e in entries]
    seen: set[Address] = set()
    for cfg in configs:
        if cfg.vip in seen:
            raise ConfigError(f"bad config {source!r}: VIP {cfg.vip} appears twice")
        seen.add(cfg.vip)
    return configs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def dump_toml(configs: Iterable[VipConfig]) -> str:
    """The TOML text that `load_toml` reads back into the same configs."""
    out: list[str] = []
    for cfg in configs:
        out.append("[[vip]]")
        for key, value in cfg.to_toml_dict().items():
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)
