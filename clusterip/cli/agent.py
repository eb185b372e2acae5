"""`clusterip agent`, `drain`, `resume`, `weight`: the agent and its control socket."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from clusterip.cli.options import cluster_options, configs_from
from clusterip.config import ConfigError, VipConfig
from clusterip.core.defaults import SETTINGS
from clusterip.reactor.control import NoAgent, request
from clusterip.reactor.settings import (
    SETTING_KEYS,
    AgentSettings,
    build_settings,
    settings_from_toml,
)


def setting_options(func: Any) -> Any:
    """One flag per agent setting, from clusterip.core.defaults (the `[agent]` keys)."""
    for setting in reversed(SETTINGS):
        name = "peers" if setting.key == "peers" else setting.key
        flag = "--peer" if setting.key == "peers" else setting.flag
        default = "" if setting.default in (None, ()) else f" (default {setting.default})"
        if isinstance(setting.default, bool):
            func = click.option(flag, name, is_flag=True, default=None, help=setting.help)(func)
            continue
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
    from clusterip.reactor.carrier import CarrierWatch
    from clusterip.reactor.keyfile import read_key
    from clusterip.xdp.agentside import AgentXdp

    def load() -> tuple[list[VipConfig], AgentSettings]:
        configs = configs_from(params, known_extra=("agent",), agent=True)
        flags = {k: params.get(k) for k in SETTING_KEYS}
        if params.get("config_file"):
            settings = settings_from_toml(params["config_file"], flags)
        else:
            settings = build_settings(**{k: v for k, v in flags.items() if v not in (None, ())})
        interfaces = {c.interface for c in configs}
        if len(interfaces) > 1:
            raise ConfigError(
                f"one agent serves one interface, got {', '.join(sorted(interfaces))}"
            )
        return configs, settings

    configs, settings = load()
    key = read_key(settings.key_file, allow_readable=settings.allow_readable_key)
    from clusterip.addrcheck import warn_addresses

    for cfg in configs:
        warn_addresses(cfg)
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
        ahead_firewall=NftFirewall(),
        link=NetlinkLink(),
        flows=SocketFlows(),
        loop_flows=SocketFlows(),
        carrier=CarrierWatch(configs[0].interface),
        reload=load if params.get("config_file") else None,
        xdp=AgentXdp(configs[0].interface, settings.xdp),
    )
    sys.exit(node.run())


def _ask(request_line: str) -> dict[str, Any]:
    try:
        reply = request(request_line)
    except NoAgent as exc:
        raise ConfigError(str(exc)) from None
    if "error" in reply:
        raise ConfigError(reply["error"])
    return reply


@click.command()
@click.option("--timeout", metavar="S", help="then leave even with flows left (default: agent's)")
def drain(timeout: str | None) -> None:
    """Take no new connections, keep established ones, then leave (NLB's drainstop)."""
    _ask("drain" + (f" {timeout}" if timeout else ""))
    click.echo("draining: no new connections here; established ones stay until they end")


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="also when cut off from the majority: the members it cannot reach are gone for good",
)
def resume(force: bool) -> None:
    """Undo `drain`: take this node's share again."""
    _ask("resume --force" if force else "resume")
    click.echo("resumed")


@click.command()
@click.option(
    "--leave", is_flag=True, help="leave the cluster at once instead of handing over to a successor"
)
def stop(leave: bool) -> None:
    """Stop this namespace's agent (as SIGTERM: its node serves on for a successor, see
    `restart_grace`), or with --leave hand its buckets to the others at once."""
    reply = _ask("stop --leave" if leave else "stop")
    click.echo(f"stopping: {reply['stopping']}")


@click.command()
@click.argument("weight", metavar="W")
def weight(weight: str) -> None:
    """Change this node's share at runtime (0 = none); established flows stay where they are."""
    reply = _ask(f"weight {weight}")
    click.echo(f"weight {reply['weight']}")
