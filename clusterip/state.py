"""Read back what the kernel holds: the clusterip tables' JSON to configs, ownership, counters.

The kernel is the one source of truth; there is no state file to drift from it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import HASHMODES, VipConfig
from clusterip.core.ownership import Ownership
from clusterip.render import COMMENT_MAGIC, GUARD_PREFIX, TABLE_PREFIX


class StateError(RuntimeError):
    """A clusterip table that this version cannot read (foreign or damaged)."""


@dataclass(frozen=True)
class VipState:
    config: VipConfig
    ownership: Ownership
    mode: str
    owner_flag: bool
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    comment_fields: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "vip": str(cfg.vip),
            "interface": cfg.interface,
            "clustermac": cfg.clustermac,
            "hashmode": cfg.hashmode,
            "protocol": cfg.protocol,
            "dports": list(cfg.dports),
            "seed": f"0x{cfg.seed:08x}",
            "mode": self.mode,
            "total_nodes": self.ownership.modulus,
            "owned": sorted(self.ownership.owned),
            "draining": sorted(self.ownership.draining),
            "guarded": sorted(self.ownership.guarded),
            "counters": self.counters,
        }


def parse_comment(text: str) -> dict[str, str]:
    parts = text.split()
    if not parts or parts[0] != COMMENT_MAGIC:
        raise StateError(f"table comment {text!r} is not a clusterip comment")
    out: dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        out[key] = value
    return out


def parse_guards(objects: list[dict[str, Any]]) -> dict[ipaddress.IPv4Address, dict[str, str]]:
    """Guard tables (left by agents, also dead ones): VIP -> the fields of their comment."""
    out: dict[ipaddress.IPv4Address, dict[str, str]] = {}
    for obj in objects:
        rule = obj.get("rule")
        if not rule or not rule.get("table", "").startswith(GUARD_PREFIX):
            continue
        if rule.get("chain") == "ingress" and "comment" in rule:
            vip = ipaddress.IPv4Address(rule["table"][len(GUARD_PREFIX) :].replace("_", "."))
            out[vip] = parse_comment(rule["comment"])
    return out


def _vip_of(name: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(name[len(TABLE_PREFIX) :].replace("_", "."))


def _map_entries(body: dict[str, Any]) -> list[tuple[int, str]]:
    """(bucket, verdict or jump target) pairs of a verdict map's JSON."""
    out: list[tuple[int, str]] = []
    for key, verdict in body.get("elem", []) or []:
        if isinstance(key, dict):  # {"elem": {"val": K, ...}} when elements carry extras
            key = key.get("elem", {}).get("val", key)
        target = verdict["jump"]["target"] if "jump" in verdict else next(iter(verdict))
        out.append((int(key), target))
    return out


def parse_tables(objects: list[dict[str, Any]]) -> list[VipState]:
    """VipStates from the nft JSON objects of the clusterip tables (as Firewall.ruleset())."""
    tables: dict[str, dict[str, Any]] = {}
    for obj in objects:
        kind, body = next(iter(obj.items()))
        name = body["name"] if kind == "table" else body.get("table", "")
        if not name.startswith(TABLE_PREFIX) or name.startswith(GUARD_PREFIX):
            continue
        t = tables.setdefault(
            name, {"meta": {}, "rules": [], "counters": {}, "dports": [], "maps": {}}
        )
        if kind == "table" and body["family"] == "netdev":
            t["meta"] = body
        elif kind == "rule":
            t["rules"].append(body)
            if body.get("chain") == "ingress" and "comment" in body:
                t["comment"] = body["comment"]
        elif kind == "counter":
            t["counters"][body["name"]] = {"packets": body["packets"], "bytes": body["bytes"]}
        elif kind == "set" and body.get("name") == "dports":
            t["dports"] = [int(e) for e in body.get("elem", [])]
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
        )
        states.append(
            VipState(
                config=cfg,
                ownership=Ownership.of(modulus, owned, draining, orphaned, guarded),
                mode=fields.get("mode", "static"),
                owner_flag=fields.get("mode") == "agent",
                counters=t["counters"],
                comment_fields=fields,
            )
        )
    return states
