"""`clusterip doctor`: checks, each OK / WARN / FAIL with its fix (clusterip.doctor).

Thin: collect the facts, run the pure checks, print, exit 0 (all OK), 1 (WARN), 2 (FAIL).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from clusterip import config as cfgmod
from clusterip.cli.options import fail


@click.command()
@click.option("--vip", metavar="ADDR", help="check this VIP (default: every VIP up here)")
@click.option("--client", is_flag=True, help="check from a client of the VIP (any host)")
@click.option("--interface", "-i", metavar="IFACE", help="--client: the interface to the VIP")
@click.option("--port", default="80", metavar="P", help="--client: a port the service listens on")
@click.option("--total-nodes", metavar="N", help="--client: also compare with `which` (static)")
@click.option("--seed", metavar="HEX", help="--client: the cluster's seed (default: from VIP)")
@click.option("--hashmode", metavar="MODE", help="--client: the cluster's hashmode")
@click.option("--window", default="1.0", metavar="S", help="seconds to watch counters")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor(
    vip: str | None,
    client: bool,
    interface: str | None,
    port: str,
    total_nodes: str | None,
    seed: str | None,
    hashmode: str | None,
    window: str,
    as_json: bool,
) -> None:
    """Why clients get no answer: kernel, this node, the segment, the agent's peers."""
    from clusterip.doctor.checks import Check, exit_code

    try:
        seconds = float(window)
    except ValueError:
        fail(f"bad --window {window!r}: expected seconds, e.g. 1.0")
    if not 0.1 <= seconds <= 60:
        fail(f"bad --window {window!r}: expected 0.1 to 60 seconds")
    checks: list[Check]
    if client:
        if not vip:
            fail("--client needs --vip (the VIP this host cannot reach)")
        addr = cfgmod.parse_vip(vip)[0]
        checks = _client(addr, interface, cfgmod.parse_port(port), total_nodes, seed, hashmode)
    else:
        checks = _node(cfgmod.parse_vip(vip)[0] if vip else None, seconds)
    if as_json:
        doc: dict[str, Any] = {"checks": [c.to_json() for c in checks], "exit": exit_code(checks)}
        click.echo(json.dumps(doc, indent=2))
    else:
        for c in checks:
            click.echo(c.line())
    sys.exit(exit_code(checks))


def _node(vip: cfgmod.Address | None, window: float) -> list[Any]:
    from clusterip.doctor import checks as chk
    from clusterip.doctor import collect
    from clusterip.nft import NftFirewall
    from clusterip.state import parse_tables

    out = chk.kernel_checks(collect.kernel())
    states = parse_tables(NftFirewall().ruleset(counters=False))
    docs = {d["vip"]: d for d in collect.agent_docs()}
    chosen = [s for s in states if vip is None or s.config.vip == vip]
    if vip is not None and not chosen:
        up = ", ".join(str(s.config.vip) for s in states) or "none"
        out.append(chk.Check(chk.FAIL, f"{vip}", f"not up on this node (up here: {up})",
                             "clusterip up (or the agent) with this VIP"))  # fmt: skip
    if vip is None and not chosen:
        out.append(chk.Check(chk.WARN, "vips", "no VIP is up here", "clusterip up, or --client"))
    for st in chosen:
        cfg = st.config
        facts = collect.node(st, cfg, window)
        out.extend(chk.node_checks(facts))
        out.extend(
            chk.segment_checks(str(cfg.vip), cfg.clustermac, facts.answers, probed=facts.probed)
        )
        doc = docs.get(str(cfg.vip))
        if doc is not None:
            out.extend(chk.agent_checks(doc))
    return out


def _route_interface(vip: cfgmod.Address) -> str:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        routes = ipr.route("get", dst=str(vip))
        oif = routes[0].get_attr("RTA_OIF") if routes else None
        if oif is None:
            fail(f"no route to {vip} from this host: give -i IFACE")
        return str(ipr.get_links(oif)[0].get_attr("IFLA_IFNAME"))


def _client(
    vip: cfgmod.Address,
    interface: str | None,
    port: int,
    total_nodes: str | None,
    seed: str | None,
    hashmode: str | None,
) -> list[Any]:
    from dataclasses import replace

    from clusterip.doctor import collect
    from clusterip.doctor.clientchecks import client_checks
    from clusterip.hashing import flow_bucket

    ifname = cfgmod.parse_interface(interface) if interface else _route_interface(vip)
    facts = collect.client(vip, ifname, port)
    if total_nodes:  # which bucket each test flow is in, as `which` computes it
        cfg = cfgmod.build(vip=str(vip), interface=ifname, total_nodes=total_nodes,
                           hashmode=hashmode or cfgmod.DEFAULT_HASHMODE, seed=seed)  # fmt: skip
        src = collect.own_address(ifname, vip.version)
        if src is not None:
            predicted = {
                p: flow_bucket(cfg.hashmode, cfg.seed, cfg.total_nodes, src, p, port)
                for p, _macs in facts.flows
            }
            facts = replace(facts, predicted=predicted)
    return client_checks(facts)
