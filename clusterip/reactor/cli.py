"""`clusterip agent`, `drain`, `resume`: the agent's command line."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from typing import Any

import click

from clusterip import config as cfgmod
from clusterip.config import ConfigError, VipConfig
from clusterip.reactor.control import NoAgent, request
from clusterip.reactor.settings import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_INTERVAL_MS,
    DEFAULT_TOLERANCE,
    SETTING_KEYS,
    build_settings,
    settings_from_toml,
)


def _agent_configs(params: dict[str, Any]) -> list[VipConfig]:
    if params.get("config_file"):
        flags = ("vip", "interface", "protocol", "dport", "hashmode", "clustermac", "seed")
        given = [f for f in flags if params.get(f) not in (None, ())]
        if given:
            raise ConfigError(f"give either -c FILE or VIP flags, not both (got --{given[0]})")
        return cfgmod.load_toml(params["config_file"], known_extra=("agent",), agent=True)
    for key in ("vip", "interface"):
        if not params.get(key):
            raise ConfigError(f"missing --{key} (or give -c FILE)")
    cfg = cfgmod.build(
        vip=params["vip"],
        interface=params["interface"],
        total_nodes=1,  # agent mode: B buckets, not N nodes
        protocol=params.get("protocol") or cfgmod.DEFAULT_PROTOCOL,
        dports=params.get("dport") or (),
        hashmode=params.get("hashmode") or cfgmod.DEFAULT_HASHMODE,
        clustermac=params.get("clustermac"),
        seed=params.get("seed"),
    )
    return [cfg]


@click.command()
@click.option("-c", "--config", "config_file", metavar="FILE", help="TOML: [[vip]] + [agent]")
@click.option("--vip", metavar="ADDR")
@click.option("--interface", "-i", metavar="IFACE")
@click.option("--protocol", "-p", metavar="tcp|udp|sctp|all")
@click.option("--dport", multiple=True, metavar="P[,P...]")
@click.option("--hashmode", metavar="MODE")
@click.option("--clustermac", metavar="MAC")
@click.option("--seed", metavar="HEX")
@click.option("--node-id", metavar="K", help="this node's id, unique in the cluster (1..255)")
@click.option("--key-file", metavar="PATH", help="shared secret, at least 16 bytes")
@click.option("--weight", metavar="W", help="share relative to the others (default 1)")
@click.option("--buckets", metavar="B", help="buckets per VIP (default 4096)")
@click.option(
    "--interval-ms", metavar="MS", help=f"heartbeat interval (default {DEFAULT_INTERVAL_MS})"
)
@click.option(
    "--tolerance", metavar="N", help=f"missed heartbeats = dead (default {DEFAULT_TOLERANCE})"
)
@click.option("--peer", "peers", multiple=True, metavar="ADDR", help="unicast peers, no multicast")
@click.option("--group", metavar="ADDR", help="heartbeat multicast group")
@click.option("--port", metavar="P", help="heartbeat UDP port")
@click.option("--notify", metavar="CMD", help="run CMD EVENT VIP OWNED BUCKETS on every change")
@click.option("--drain-timeout", metavar="S", help=f"default {DEFAULT_DRAIN_TIMEOUT:.0f}")
@click.option("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics there")
@click.option("--realtime", metavar="PRIO", help="SCHED_RR priority, 0 = off (default 10)")
@click.option("-v", "--verbose", is_flag=True)
def agent(verbose: bool, **params: Any) -> None:
    """Run the membership agent in the foreground: automatic failover, no person in the loop."""
    from clusterip.flows import SocketFlows
    from clusterip.link import NetlinkLink
    from clusterip.nft import NftFirewall
    from clusterip.reactor.agent import Agent
    from clusterip.reactor.keyfile import read_key

    configs = _agent_configs(params)
    flags = {k: params.get(k) for k in SETTING_KEYS}
    if params.get("config_file"):
        settings = settings_from_toml(params["config_file"], flags)
    else:
        settings = build_settings(**{k: v for k, v in flags.items() if v not in (None, ())})
    configs = [replace(c, total_nodes=settings.buckets) for c in configs]
    interfaces = {c.interface for c in configs}
    if len(interfaces) > 1:
        raise ConfigError(f"one agent serves one interface, got {', '.join(sorted(interfaces))}")
    key = read_key(settings.key_file)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s clusterip-agent[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if verbose:  # ours only: pyroute2's debug output would cost the heartbeat loop dearly
        logging.getLogger("clusterip").setLevel(logging.DEBUG)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    node = Agent(
        configs,
        settings,
        key,
        firewall=NftFirewall(),
        link=NetlinkLink(),
        flows=SocketFlows(),
    )
    sys.exit(node.run())


@click.command()
@click.option("--timeout", metavar="S", help="then leave even with flows left (default: agent's)")
def drain(timeout: str | None) -> None:
    """Take no new connections, keep established ones, then leave (NLB's drainstop)."""
    try:
        reply = request("drain" + (f" {timeout}" if timeout else ""))
    except NoAgent as exc:
        raise ConfigError(str(exc)) from None
    click.echo("draining: no new connections here; established ones stay until they end")
    if "error" in reply:
        raise ConfigError(reply["error"])


@click.command()
def resume() -> None:
    """Undo `drain`: take this node's share again."""
    try:
        reply = request("resume")
    except NoAgent as exc:
        raise ConfigError(str(exc)) from None
    if "error" in reply:
        raise ConfigError(reply["error"])
    click.echo("resumed")


@click.command()
@click.argument("weight", metavar="W")
def weight(weight: str) -> None:
    """Change this node's share at runtime (0 = none); established flows stay where they are."""
    try:
        reply = request(f"weight {weight}")
    except NoAgent as exc:
        raise ConfigError(str(exc)) from None
    if "error" in reply:
        raise ConfigError(reply["error"])
    click.echo(f"weight {reply['weight']}")
