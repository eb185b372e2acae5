"""The `clusterip` command: CLUSTERIP's vocabulary, nftables underneath.

Thin: parse flags, call Node (static mode), print. Every bad value is one line on stderr and
exit status 2, before anything in the kernel changes.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from clusterip import config as cfgmod
from clusterip.config import ConfigError, VipConfig
from clusterip.hashing import flow_bucket

EXIT_USAGE = 2
EXIT_KERNEL = 1


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"clusterip: error: {message}", err=True)
    sys.exit(code)


def _node() -> Any:
    from clusterip.link import NetlinkLink
    from clusterip.nft import NftFirewall
    from clusterip.node import Node

    return Node(NftFirewall(), NetlinkLink())


def vip_options(func: Any) -> Any:
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
        click.option("--clustermac", metavar="MAC", help="multicast MAC (default: from the VIP)"),
        click.option("--total-nodes", metavar="N", help="number of nodes (buckets), 1..64"),
        click.option("--local-node", multiple=True, metavar="K", help="node number(s) this is"),
        click.option("--seed", metavar="HEX", help="hash seed (default: from the VIP)"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def configs_from(
    params: dict[str, Any], *, need_local: bool = True, known_extra: Sequence[str] = ()
) -> list[VipConfig]:
    flags = {k: v for k, v in params.items() if k != "config_file" and v not in (None, ())}
    if params.get("config_file"):
        if flags:
            _fail(f"give either -c FILE or VIP flags, not both (got --{next(iter(flags))})")
        configs = cfgmod.load_toml(params["config_file"], known_extra=known_extra)
    else:
        for key in ("vip", "interface", "total_nodes"):
            if not params.get(key):
                _fail(f"missing --{key.replace('_', '-')} (or give -c FILE)")
        configs = [
            cfgmod.build(
                vip=params["vip"],
                interface=params["interface"],
                total_nodes=params["total_nodes"],
                local_nodes=params.get("local_node") or (),
                protocol=params.get("protocol") or cfgmod.DEFAULT_PROTOCOL,
                dports=params.get("dport") or (),
                hashmode=params.get("hashmode") or cfgmod.DEFAULT_HASHMODE,
                clustermac=params.get("clustermac"),
                seed=params.get("seed"),
            )
        ]
    if need_local:
        for cfg in configs:
            if not cfg.local_nodes:
                _fail(f"VIP {cfg.vip}: no --local-node given (expected 1 to {cfg.total_nodes})")
    return configs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clusterip")
def cli() -> None:
    """clusterip: load-balancer-less server clusters on Linux (CLUSTERIP on nftables)."""


@cli.command()
@vip_options
def up(**params: Any) -> None:
    """Answer for a VIP as node K of N (iptables ... -j CLUSTERIP --new ...)."""
    configs = configs_from(params)
    node = _node()
    for cfg in configs:
        node.link.check_interface(cfg.interface)
    for cfg in configs:
        click.echo(node.up(cfg))


@cli.command()
@click.option("--vip", metavar="ADDR", help="the VIP to take down (default: all static VIPs)")
@click.option("-c", "--config", "config_file", metavar="FILE", help="take down the file's VIPs")
def down(vip: str | None, config_file: str | None) -> None:
    """Remove what `up` added: rules, VIP address, multicast MAC. Nothing else."""
    node = _node()
    if vip and config_file:
        _fail("give either --vip or -c FILE, not both")
    if vip:
        vips = [cfgmod.parse_vip(vip)[0]]
    elif config_file:
        vips = [c.vip for c in cfgmod.load_toml(config_file)]
    else:
        vips = [s.config.vip for s in node.states() if s.mode == "static"]
        if not vips:
            click.echo("no VIP is up here: nothing to do")
    for addr in vips:
        click.echo(node.down(addr))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Per VIP: interface, MAC, hashmode, nodes this node answers for, counters."""
    from clusterip.flows import SocketFlows
    from clusterip.reactor.control import NoAgent, request

    try:
        agent_doc: dict[str, Any] | None = request("status")
    except NoAgent:
        agent_doc = None
    states = _node().states()
    docs = list(agent_doc["vips"]) if agent_doc else []
    for st in states:
        if st.mode == "agent":
            continue  # the agent's own report above is richer
        doc = st.to_json()
        flows = SocketFlows(udp=False).per_bucket(st.config, st.ownership.modulus)
        doc["flows"] = {str(b): n for b, n in sorted(flows.items())}
        docs.append(doc)
    if as_json:
        out: dict[str, Any] = {"vips": docs}
        if agent_doc:
            out["agent"] = agent_doc["agent"]
        click.echo(json.dumps(out, indent=2))
        return
    if not docs:
        click.echo("no VIP is up here")
    if agent_doc:
        _print_agent(agent_doc)
    for d in docs:
        if d["mode"] == "agent":
            continue
        ports = ",".join(str(p) for p in d["dports"]) or "any"
        click.echo(
            f"{d['vip']} on {d['interface']}  mac {d['clustermac']}  {d['hashmode']}  "
            f"{d['protocol']} port {ports}  ({d['mode']})"
        )
        owned = ",".join(str(b) for b in d["owned"]) or "none"
        line = f"  node(s) {owned} of {d['total_nodes']}"
        if d["draining"]:
            line += f"; keeping established flows of {','.join(map(str, d['draining']))}"
        if d.get("guarded"):
            line += f"; leaving the previous owner's flows of {','.join(map(str, d['guarded']))}"
        click.echo(line)
        if d["flows"]:
            click.echo(
                "  live TCP flows per node number: "
                + "  ".join(f"{b}: {n}" for b, n in d["flows"].items())
            )
        counters = d["counters"]
        click.echo(
            "  packets: " + "  ".join(f"{name} {c['packets']}" for name, c in counters.items())
        )


def _print_agent(doc: dict[str, Any]) -> None:
    a = doc["agent"]
    click.echo(
        f"agent: node {a['node_id']}, weight {a['weight']}, up {a['uptime_s']} s, heartbeat "
        f"{a['interval_ms']} ms, dead after {a['detection_ms']} ms"
        + (", DRAINING" if a["draining"] else "")
    )
    for v in doc["vips"]:
        click.echo(
            f"{v['vip']} on {v['interface']}  mac {v['clustermac']}  {v['hashmode']}  "
            f"{v['buckets']} buckets  state {v['state']} ({v['reason']})"
        )
        click.echo(
            f"  this node: {v['owned_count']} buckets, {len(v['draining'])} draining, "
            f"last change applied in {v['last_apply_ms']} ms"
        )
        click.echo("  members:  id  address          state     weight  buckets  last heard")
        for m in v["members"]:
            click.echo(
                f"           {m['id']:>3}  {m['address']:<15}  {m['state']:<8}  {m['weight']:>6}"
                f"  {m['buckets']:>7}  {m['last_heard_ms']} ms ago"
                + ("" if m["counted"] else "  (not counted)")
            )
        for r in v["refused"]:
            click.echo(
                f"  REFUSED {r['address']} (node {r['node_id']}): {r['cause']}, {r['detail']} "
                f"x{r['count']}"
            )


def _bucket_arg(value: str) -> int:
    try:
        return int(value.lstrip("+-"))
    except ValueError:
        _fail(f"bad node number {value!r}: expected a number such as 3 (or +3 / -3)")


@cli.command()
@click.argument("bucket", metavar="N")
@click.option("--vip", required=True, metavar="ADDR")
def take(bucket: str, vip: str) -> None:
    """Also answer as node N (CLUSTERIP's `echo +N > /proc/net/ipt_CLUSTERIP/VIP`)."""
    addr = cfgmod.parse_vip(vip)[0]
    click.echo(_node().take(addr, _bucket_arg(bucket)))


@cli.command()
@click.argument("bucket", metavar="N")
@click.option("--vip", required=True, metavar="ADDR")
@click.option(
    "--now", is_flag=True, help="also drop node N's established flows here (CLUSTERIP's -N)"
)
def release(bucket: str, vip: str, now: bool) -> None:
    """Stop answering as node N (`echo -N`); established TCP flows stay unless --now."""
    addr = cfgmod.parse_vip(vip)[0]
    click.echo(_node().release(addr, _bucket_arg(bucket), keep_flows=not now))


@cli.command()
@vip_options
@click.option("--src", required=True, metavar="IP", help="client address")
@click.option("--sport", metavar="P", help="client port")
@click.option("--json", "as_json", is_flag=True)
def which(src: str, sport: str | None, as_json: bool, **params: Any) -> None:
    """The node number that answers a flow, computed as the kernel computes it."""
    given = {k: v for k, v in params.items() if v not in (None, ())}
    dports = given.pop("dport", ())
    if set(given) - {"vip"}:
        cfg = configs_from(params, need_local=False)[0]
    else:
        if "vip" not in given:
            _fail("missing --vip")
        addr = cfgmod.parse_vip(given["vip"])[0]
        cfg = _node().require(addr).config
    sport_n = cfgmod.parse_port(sport, "source port") if sport else None
    if len(dports) > 1 or "," in "".join(dports):
        _fail(f"which takes one --dport, got {','.join(dports)!r}")
    dport_n = cfgmod.parse_port(dports[0], "destination port") if dports else None
    if cfg.uses_ports and sport_n is None:
        _fail(f"hashmode {cfg.hashmode} needs --sport")
    if cfg.hashmode == "sourceip-sourceport-destport" and dport_n is None:
        _fail(f"hashmode {cfg.hashmode} needs --dport")
    n = flow_bucket(
        cfg.hashmode,
        cfg.seed,
        cfg.total_nodes,
        cfgmod.parse_ip(src, "source address"),
        sport_n,
        dport_n,
    )
    if as_json:
        click.echo(json.dumps({"vip": str(cfg.vip), "bucket": n}))
    else:
        click.echo(n)


@cli.command("import-iptables")
@click.argument("lines", nargs=-1, required=True, metavar="'LINE' ['LINE' ...]")
def import_iptables(lines: tuple[str, ...]) -> None:
    """Legacy `iptables ... -j CLUSTERIP ...` lines to a TOML config for `up -c`."""
    from clusterip.importer import import_lines, render_toml

    click.echo(render_toml(import_lines(list(lines))), nl=False)


def _register_optional() -> None:
    try:
        from clusterip.lab.cli import lab
    except ImportError:
        return
    cli.add_command(lab)
    from clusterip.reactor.cli import agent, drain, resume, weight

    for command in (agent, drain, resume, weight):
        cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    from clusterip.nft import FirewallError

    _register_optional()
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except ConfigError as exc:
        _fail(str(exc))
    except click.exceptions.UsageError as exc:
        _fail(exc.format_message())
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except FirewallError as exc:
        _fail(f"the kernel refused the change (nothing was changed): {exc}", EXIT_KERNEL)
    except PermissionError as exc:
        _fail(f"permission denied ({exc}): run as root", EXIT_KERNEL)
    except ipaddress.AddressValueError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"system call failed: {exc}", EXIT_KERNEL)
