"""`clusterip lab ...`: build, use and remove a one-machine cluster lab (needs root)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from clusterip.config import ConfigError
from clusterip.lab.net import Lab, LabError, NoSuchLab
from clusterip.lab.probe import PROTOS, ProbeResult
from clusterip.lab.topo import MAX_CLIENTS, MAX_NODES, LabTopo, check_name

DEFAULT_NAME = "cip"
_F = TypeVar("_F", bound=Callable[..., Any])


def _name_option(fn: _F) -> _F:
    return click.option(
        "--name",
        default=DEFAULT_NAME,
        show_default=True,
        help="Lab name (1-8 of a-z0-9); namespaces are NAME-sw, NAME-n1.., NAME-c.",
    )(fn)


def _check_name(name: str) -> str:
    try:
        return check_name(name)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _load(name: str) -> Lab:
    try:
        return Lab.load(_check_name(name))
    except NoSuchLab:
        raise click.ClickException(
            f"no lab {name!r}: start one with `clusterip lab up --name {name}`"
        ) from None
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


def _fail(exc: Exception) -> NoReturn:
    if isinstance(exc, PermissionError):
        raise click.ClickException(f"{exc}: the lab needs root (network namespaces)") from None
    raise click.ClickException(str(exc)) from None


@click.group("lab")
def lab() -> None:
    """A cluster in network namespaces on this machine: nodes, a switch and a client."""


@lab.command("up")
@click.option("--nodes", type=int, required=True, help=f"Number of nodes (1-{MAX_NODES}).")
@click.option(
    "--clients",
    type=int,
    default=50,
    show_default=True,
    help=f"Client addresses (1-{MAX_CLIENTS}).",
)
@_name_option
@click.option("--no-servers", is_flag=True, help="Do not start the HTTP/UDP/echo node servers.")
def up(nodes: int, clients: int, name: str, no_servers: bool) -> None:
    """Build the lab and start the node servers."""
    try:
        topo = LabTopo(name=name, nodes=nodes, clients=clients)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        built = Lab.build(topo, servers=not no_servers)
    except (LabError, OSError) as exc:
        _fail(exc)
    t = built.topo
    click.echo(f"lab {t.name} up (state: {built.state_path})")
    click.echo(f"  switch  {t.switch_ns}: bridge {t.bridge}")
    for k in t.node_indexes:
        click.echo(f"  {t.node_name(k):<7} {t.node_ns(k)}: {t.interface} {t.node_addr(k)}/16")
    click.echo(
        f"  client  {t.client_ns}: {t.interface} {t.gateway}/16 + {t.clients} addresses "
        f"{t.client_range()}"
    )
    click.echo(f"  VIP     {t.vip} (not configured: that is the datapath's job)")
    if not no_servers:
        click.echo("  servers: HTTP :80, UDP :5300, TCP echo :7 on every node")


@lab.command("down")
@_name_option
def down(name: str) -> None:
    """Remove everything the lab's state file records."""
    try:
        found = Lab.load(_check_name(name))
    except NoSuchLab:
        click.echo(f"no lab {name}")
        return
    except LabError as exc:
        _fail(exc)
    try:
        found.teardown()
    except (LabError, OSError) as exc:
        _fail(exc)
    click.echo(f"lab {name} down")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@_name_option
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, host: str, argv: Sequence[str]) -> None:
    """Run ARGV in HOST's namespace (n1..nN, client, switch): lab exec n1 -- ip addr."""
    found = _load(name)
    try:
        ns = found.ns(host)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        code = found.call(ns, list(argv))
    except FileNotFoundError:
        raise click.ClickException(f"command not found: {argv[0]}") from None
    sys.exit(code if code >= 0 else 128 - code)


@lab.command("probe")
@_name_option
@click.option("--vip", help="Target address (default: the lab VIP 198.18.0.100).")
@click.option("--proto", type=click.Choice(PROTOS), default="tcp", show_default=True)
@click.option("--port", type=int, help="Target port (default: 80 for tcp, 5300 for udp).")
@click.option("--sources", help="Source addresses A-B,C,... (default: every client address).")
@click.option("--per-source", type=int, default=1, show_default=True)
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Per request (s).")
@click.option("--concurrency", type=int, default=32, show_default=True)
@click.option("--deadline", type=float, help="Bound on the whole run (s).")
@click.option("--json", "as_json", is_flag=True, help="Print the probe's JSON.")
def probe(
    name: str,
    vip: str | None,
    proto: str,
    port: int | None,
    sources: str | None,
    per_source: int,
    timeout: float,
    concurrency: int,
    deadline: float | None,
    as_json: bool,
) -> None:
    """Request the VIP from many client addresses and show which node answered."""
    found = _load(name)
    try:
        result = found.probe(
            vip=vip,
            proto=proto,
            port=port,
            sources=sources,
            per_source=per_source,
            timeout=timeout,
            concurrency=concurrency,
            deadline=deadline,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except (LabError, OSError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        click.echo(format_table(result))


def format_table(result: ProbeResult) -> str:
    """Requests per node (and per error kind) with their share of all requests."""
    total = len(result.results) or 1
    rows = [(node, n) for node, n in result.by_node.items()]
    rows += [(f"error: {kind}", n) for kind, n in result.error_kinds().items()]
    width = max([len(r[0]) for r in rows] + [4])
    out = [f"{'node':<{width}}  requests  share"]
    out += [f"{label:<{width}}  {n:>8}  {100 * n / total:5.1f}%" for label, n in rows]
    out.append(f"{len(result.results)} requests in {result.elapsed:.2f} s")
    return "\n".join(out)
