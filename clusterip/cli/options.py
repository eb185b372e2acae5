"""What the commands share: the VIP flags (defined once), reading configs, failing cleanly.

Every bad value ends as one line on stderr and exit status 2, before anything changes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from clusterip import config as cfgmod
from clusterip.config import VipConfig

EXIT_USAGE = 2
EXIT_KERNEL = 1


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"clusterip: error: {message}", err=True)
    sys.exit(code)


def _node() -> Any:
    from clusterip.link import NetlinkLink
    from clusterip.nft import NftFirewall
    from clusterip.node import Node

    return Node(NftFirewall(), NetlinkLink())


def vip_options(func: Any) -> Any:
    """The VIP flags of `up` and `which`: the cluster flags plus CLUSTERIP's node flags."""
    return cluster_options(node_options(func))


def node_options(func: Any) -> Any:
    """--total-nodes and --local-node: static mode only (agents assign buckets themselves)."""
    opts = [
        click.option("--total-nodes", metavar="N", help="number of nodes (buckets), 1..64"),
        click.option("--local-node", multiple=True, metavar="K", help="node number(s) this is"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def cluster_options(func: Any) -> Any:
    """The VIP flags shared by `up`, `which` and `agent` (all as strings: we validate)."""
    opts = [
        click.option("-c", "--config", "config_file", metavar="FILE", help="TOML file"),
        click.option("--vip", metavar="ADDR", help="the virtual IP (CLUSTERIP's -d)"),
        click.option("--interface", "-i", metavar="IFACE", help="cluster interface"),
        click.option(
            "--protocol", "-p", metavar="tcp|udp|sctp|all", default=None, help="default: all"
        ),
        click.option("--dport", multiple=True, metavar="P[,P...]", help="destination ports"),
        click.option(
            "--hashmode",
            metavar="MODE",
            default=None,
            help="sourceip | sourceip-sourceport (default) | sourceip-sourceport-destport",
        ),
        click.option(
            "--mac-mode",
            metavar="multicast|igmp|unicast",
            default=None,
            help="how frames reach every node: a flooded multicast MAC (default), an IGMP/MLD "
            "group's MAC every node joins, or a shared unicast MAC",
        ),
        click.option(
            "--clustermac", metavar="MAC", help="cluster MAC (default: from the VIP and MAC mode)"
        ),
        click.option("--seed", metavar="HEX", help="hash seed (default: from the VIP)"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def configs_from(
    params: dict[str, Any],
    *,
    need_local: bool = True,
    known_extra: Sequence[str] = (),
    agent: bool = False,
) -> list[VipConfig]:
    """The VIPs a command works on: from `-c FILE` or from the flags (not both).

    `agent`: the agents assign buckets themselves, so no --total-nodes / --local-node (the
    config's `total_nodes` is then unused: 1).
    """
    cluster_flags = (
        "vip",
        "interface",
        "protocol",
        "dport",
        "hashmode",
        "mac_mode",
        "clustermac",
        "seed",
    )
    names = (*cluster_flags, "total_nodes", "local_node")
    flags = {k: params[k] for k in names if params.get(k) not in (None, ())}
    if params.get("config_file"):
        if flags:
            fail(f"give either -c FILE or VIP flags, not both (got --{next(iter(flags))})")
        return cfgmod.load_toml(params["config_file"], known_extra=known_extra, agent=agent)
    for key in ("vip", "interface") if agent else ("vip", "interface", "total_nodes"):
        if not params.get(key):
            fail(f"missing --{key.replace('_', '-')} (or give -c FILE)")
    cfg = cfgmod.build(
        vip=params["vip"],
        interface=params["interface"],
        total_nodes=1 if agent else params["total_nodes"],
        local_nodes=() if agent else params.get("local_node") or (),
        protocol=params.get("protocol") or cfgmod.DEFAULT_PROTOCOL,
        dports=params.get("dport") or (),
        hashmode=params.get("hashmode") or cfgmod.DEFAULT_HASHMODE,
        clustermac=params.get("clustermac"),
        seed=params.get("seed"),
        mac_mode=params.get("mac_mode"),
    )
    if need_local and not agent and not cfg.local_nodes:
        fail(f"VIP {cfg.vip}: no --local-node given (expected 1 to {cfg.total_nodes})")
    return [cfg]
