"""Read back what the kernel holds: the clusterip tables' JSON to configs, ownership, counters.

The kernel is the one source of truth; there is no state file to drift from it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from clusterip.config import HASHMODES, Address, VipConfig
from clusterip.core.ownership import Ownership
from clusterip.macmode import DEFAULT_MAC_MODE
from clusterip.render import COMMENT_MAGIC, LEGACY_GUARD_PREFIX, OLD_MAGIC, TABLE_PREFIX


class StateError(RuntimeError):
    """A clusterip table that this version cannot read (foreign or damaged)."""


@dataclass(frozen=True)
class Lease:
    """What a suspended agent left for its successor (the `lease` element and its comment)."""

    node_id: int
    incarnation: int
    until: float  # wall clock (time.time()) at which the kernel drops the lease
    left: float  # seconds the kernel still gives it, when read

    def note(self) -> str:
        return f"node={self.node_id} inc={self.incarnation} until={self.until:.3f}"

    @classmethod
    def parse(cls, text: str, left: float) -> Lease | None:
        fields = dict(p.partition("=")[::2] for p in text.split())
        try:
            node, inc, until = int(fields["node"]), int(fields["inc"]), float(fields["until"])
        except (KeyError, ValueError):
            return None
        return cls(node, inc, until, left)


@dataclass(frozen=True)
class VipState:
    config: VipConfig
    ownership: Ownership
    mode: str
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    comment_fields: dict[str, str] = field(default_factory=dict)
    live: bool = False  # an agent's owner table exists: that agent is running
    lease: Lease | None = None  # a suspended agent's node serves until then
    current: bool = True  # written by this version's rules (else: clusterip/1)

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "vip": str(cfg.vip),
            "interface": cfg.interface,
            "clustermac": cfg.clustermac,
            "mac_mode": cfg.mac_mode,
            "group": str(cfg.mac_plan.group) if cfg.mac_plan.group is not None else None,
            "hashmode": cfg.hashmode,
            "protocol": cfg.protocol,
            "dports": list(cfg.dports),
            "seed": f"0x{cfg.seed:08x}",
            "mode": self.mode,
            "total_nodes": self.ownership.modulus,
            "owned": sorted(self.ownership.owned),
            "draining": sorted(self.ownership.draining),
            "guarded": sorted(self.ownership.guarded),
            "orphaned": sorted(self.ownership.orphaned),
            "counters": self.counters,
            "lease": asdict(self.lease) if self.lease else None,
        }


def mac_shared(states: Iterable[VipState], cfg: VipConfig) -> bool:
    """Another VIP on cfg's interface uses cfg's cluster MAC (it stays on the interface)."""
    return any(
        s.config.vip != cfg.vip
        and s.config.interface == cfg.interface
        and s.config.clustermac == cfg.clustermac
        and s.config.mac_mode == cfg.mac_mode
        for s in states
    )


def parse_comment(text: str) -> dict[str, str]:
    parts = text.split()
    if not parts or parts[0] not in (COMMENT_MAGIC, *OLD_MAGIC):
        raise StateError(f"table comment {text!r} is not a clusterip comment")
    out: dict[str, str] = {"version": parts[0]}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        out[key] = value
    return out


def parse_guards(objects: list[dict[str, Any]]) -> dict[Address, dict[str, str]]:
    """clusterip/1 agents' guard tables (left by killed agents): VIP -> their comment's fields."""
    out: dict[Address, dict[str, str]] = {}
    for obj in objects:
        rule = obj.get("rule")
        if not rule or not rule.get("table", "").startswith(LEGACY_GUARD_PREFIX):
            continue
        if rule.get("chain") == "ingress" and "comment" in rule:
            prefix = len(LEGACY_GUARD_PREFIX)
            vip = ipaddress.IPv4Address(rule["table"][prefix:].replace("_", "."))
            out[vip] = parse_comment(rule["comment"])
    return out


def _vip_of(name: str) -> Address:
    """The VIP of a table name (clusterip.render.vip_table): IPv4 has exactly three _ and
    digits, which no IPv6 address written with : can be."""
    text = name[len(TABLE_PREFIX) :]
    try:
        return ipaddress.IPv4Address(text.replace("_", "."))
    except ValueError:
        return ipaddress.IPv6Address(text.replace("_", ":"))


def _map_entries(body: dict[str, Any]) -> list[tuple[int, str]]:
    """(bucket, verdict or jump target) pairs of a verdict map's JSON."""
    out: list[tuple[int, str]] = []
    for key, verdict in body.get("elem", []) or []:
        if isinstance(key, dict):  # {"elem": {"val": K, ...}} when elements carry extras
            key = key.get("elem", {}).get("val", key)
        target = verdict["jump"]["target"] if "jump" in verdict else next(iter(verdict))
        out.append((int(key), target))
    return out


def set_pairs(objects: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    """(address, port) elements of `ipv4_addr . inet_service` (or ipv6_addr) sets, from nft's
    JSON."""
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


def _lease(body: dict[str, Any]) -> Lease | None:
    for elem in body.get("elem", []) or []:
        if isinstance(elem, dict) and "elem" in elem:
            e = elem["elem"]
            return Lease.parse(str(e.get("comment", "")), float(e.get("expires", 0)))
    return None


def parse_tables(objects: list[dict[str, Any]]) -> list[VipState]:
    """VipStates from the nft JSON objects of the clusterip tables (as Firewall.ruleset())."""
    tables: dict[str, dict[str, Any]] = {}
    for obj in objects:
        kind, body = next(iter(obj.items()))
        name = body["name"] if kind == "table" else body.get("table", "")
        if not name.startswith(TABLE_PREFIX) or name.startswith(LEGACY_GUARD_PREFIX):
            continue
        t = tables.setdefault(
            name,
            {"meta": {}, "rules": [], "counters": {}, "dports": [], "maps": {}, "lease": None},
        )
        if kind == "table" and body["family"] == "netdev":
            t["meta"] = body
        elif kind == "table" and body["family"] == "inet":
            t["live"] = True
        elif kind in ("rule", "chain") and body.get("chain", body.get("name")) == "ingress":
            if "comment" in body and (kind == "chain" or "comment" not in t):
                t["comment"] = body["comment"]  # the chain's, else clusterip/1's rule
        elif kind == "counter":
            t["counters"][body["name"]] = {"packets": body["packets"], "bytes": body["bytes"]}
        elif kind == "set" and body.get("name") == "dports":
            t["dports"] = [int(e) for e in body.get("elem", [])]
        elif kind == "set" and body.get("name") == "lease":
            t["lease"] = _lease(body)
        elif kind == "set" and body.get("name") == "kept":
            t["kept"] = set_pairs([obj])
        elif kind == "map":
            t["maps"][body["name"]] = _map_entries(body)
    states = []
    for name, t in sorted(tables.items()):
        if not t["meta"]:
            continue  # an ip table without its netdev half: half-deleted, ignore
        fields = parse_comment(t.get("comment", ""))
        modulus = int(fields["n"])
        owned: set[int] = set()
        draining: set[int] = set()
        orphaned: set[int] = set()
        guarded: set[int] = set()
        for bucket, target in t["maps"].get("buckets", []):
            (draining if target == "keep" else owned).add(bucket)
            if target == "orphan":
                orphaned.add(bucket)
            elif target == "guard":
                guarded.add(bucket)
        mac = fields["mac"]
        cfg = VipConfig(
            vip=_vip_of(name),
            interface=fields["if"],
            total_nodes=modulus,
            local_nodes=tuple(sorted(owned)),
            protocol=fields["proto"],
            dports=tuple(sorted(t["dports"])),
            hashmode=HASHMODES[int(fields["hash"])],
            clustermac=":".join(mac[i : i + 2] for i in range(0, 12, 2)),
            seed=int(fields["seed"], 16),
            prefixlen=int(fields.get("plen", "32")),
            mac_mode=fields.get("mm", DEFAULT_MAC_MODE),
        )
        states.append(
            VipState(
                config=cfg,
                ownership=replace(
                    Ownership.of(modulus, owned, draining, orphaned, guarded),
                    kept=frozenset(t.get("kept", ())),
                ),
                mode=fields.get("mode", "static"),
                counters=t["counters"],
                comment_fields=fields,
                live=bool(t.get("live")),
                lease=t["lease"],
                current=fields["version"] == COMMENT_MAGIC,
            )
        )
    return states
