"""`clusterip agent`, `drain`, `resume`, `weight`: the agent and its control socket."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from clusterip.cli.options import cluster_options, configs_from
from clusterip.config import ConfigError
from clusterip.core.defaults import SETTINGS
from clusterip.reactor.control import NoAgent, request
from clusterip.reactor.settings import SETTING_KEYS, build_settings, settings_from_toml


def setting_options(func: Any) -> Any:
    """One flag per agent setting, from clusterip.core.defaults (the `[agent]` keys)."""
    for setting in reversed(SETTINGS):
        name = "peers" if setting.key == "peers" else setting.key
        flag = "--peer" if setting.key == "peers" else setting.flag
        default = "" if setting.default in (None, ()) else f" (default {setting.default})"
        func = click.option(
            flag,
            name,
            multiple=setting.key == "peers",
            metavar=setting.key.split("_")[-1].upper(),
            help=setting.help + default,
        )(func)
    return func


@click.command()
@cluster_options
@setting_options
@click.option("-v", "--verbose", is_flag=True)
def agent(verbose: bool, **params: Any) -> None:
    """Run the membership agent in the foreground: automatic failover, no person in the loop."""
    from clusterip.flows import SocketFlows
    from clusterip.link import NetlinkLink
    from clusterip.nft import NftFirewall
    from clusterip.reactor.agent import Agent
    from clusterip.reactor.keyfile import read_key

    configs = configs_from(params, known_extra=("agent",), agent=True)
    flags = {k: params.get(k) for k in SETTING_KEYS}
    if params.get("config_file"):
        settings = settings_from_toml(params["config_file"], flags)
    else:
        settings = build_settings(**{k: v for k, v in flags.items() if v not in (None, ())})
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
