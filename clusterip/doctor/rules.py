"""Other tables of the ruleset that stand in the VIP's way (pure: nft JSON in, findings out).

- a rule outside clusterip's tables that names the VIP and drops or rejects: FAIL;
- a base chain on the VIP's path (netdev ingress on its interface, prerouting or input of its
  family) with policy drop: the VIP's service needs a rule there that accepts it: WARN;
- a flowtable: flows it offloads leave the hooks, the ingress hook included: WARN.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from clusterip.render import TABLE_PREFIX

PATH_HOOKS = {"ingress", "prerouting", "input"}


@dataclass(frozen=True)
class Findings:
    drops: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    offloads: tuple[str, ...] = ()


def _families(version: int) -> set[str]:
    return {"ip", "inet", "netdev"} if version == 4 else {"ip6", "inet", "netdev"}


def _verdict(expr: Any) -> str:
    text = json.dumps(expr)
    return "drop" if '"drop"' in text else "reject" if '"reject"' in text else ""


def scan(objects: Iterable[dict[str, Any]], vip: str, version: int, interface: str) -> Findings:
    drops: list[str] = []
    policies: list[str] = []
    offloads: list[str] = []
    fams = _families(version)
    for obj in objects:
        kind, body = next(iter(obj.items()))
        if not isinstance(body, dict):
            continue
        table = str(body.get("table", body.get("name", "")))
        if kind != "table" and table.startswith(TABLE_PREFIX):
            continue
        family = body.get("family", "")
        where = f"table {family} {table}"
        if kind == "flowtable":
            offloads.append(f"flowtable {body.get('name')} in table {family} {table}")
        elif kind == "chain" and family in fams and body.get("policy") == "drop":
            hook = body.get("hook")
            dev = body.get("dev")
            devs = dev if isinstance(dev, list) else [dev] if dev else []
            if hook in PATH_HOOKS and (family != "netdev" or interface in devs):
                policies.append(f"{where} chain {body.get('name')} ({hook})")
        elif kind == "rule" and family in fams | {"bridge"}:
            expr = body.get("expr", [])
            verdict = _verdict(expr)
            if verdict and vip in json.dumps(expr):
                drops.append(
                    f"{where} chain {body.get('chain')} handle {body.get('handle')}: "
                    f"{verdict}s {vip}"
                )
    return Findings(tuple(drops), tuple(policies), tuple(offloads))
