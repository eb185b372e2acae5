"""Static mode (CLUSTERIP's job): up, down, status, take, release, which, import-iptables.

Thin: parse flags, call Node, print.
"""

from __future__ import annotations

import json
from typing import Any

import click

from clusterip import config as cfgmod
from clusterip.cli.options import configs_from, fail, vip_options
from clusterip.hashing import flow_bucket


def _node() -> Any:
    from clusterip.link import NetlinkLink
    from clusterip.nft import NftFirewall
    from clusterip.node import Node
    from clusterip.xdp.static import StaticXdp

    return Node(NftFirewall(), NetlinkLink(), xdp=StaticXdp())


XDP_HELP = "XDP pre-filter: auto (native XDP where the driver has it), on, off (default auto)"


@click.command()
@vip_options
@click.option("--xdp", "xdp_mode", metavar="auto|on|off", help=XDP_HELP)
def up(xdp_mode: str | None, **params: Any) -> None:
    """Answer for a VIP as node K of N (iptables ... -j CLUSTERIP --new ...)."""
    from clusterip.addrcheck import warn_addresses
    from clusterip.xdp.spec import parse_cli_mode

    configs = configs_from(params, known_extra=("xdp",))
    modes = [parse_cli_mode(xdp_mode or cfg.extra.get("xdp", "auto")) for cfg in configs]
    node = _node()
    for cfg in configs:
        node.link.check_interface(cfg.interface)
    for cfg in configs:
        warn_addresses(cfg)
    for cfg, mode in zip(configs, modes, strict=True):
        line = node.up(cfg, xdp=mode)
        if node.xdp_outcome is not None:
            line += f"; XDP {node.xdp_outcome.text}"
        click.echo(line)


@click.command()
@click.option("--vip", metavar="ADDR", help="the VIP to take down (default: all static VIPs)")
@click.option("-c", "--config", "config_file", metavar="FILE", help="take down the file's VIPs")
def down(vip: str | None, config_file: str | None) -> None:
    """Remove what `up` (or a stopped agent) added: rules, VIP address, multicast MAC."""
    node = _node()
    if vip and config_file:
        fail("give either --vip or -c FILE, not both")
    if vip:
        vips = [cfgmod.parse_vip(vip)[0]]
    elif config_file:
        vips = [c.vip for c in cfgmod.load_toml(config_file)]
    else:
        # Static VIPs, and what stopped agents left (a running agent's VIPs are its own).
        vips = [s.config.vip for s in node.states() if s.mode == "static" or not s.live]
        if not vips:
            click.echo("no VIP is up here: nothing to do")
    for addr in vips:
        click.echo(node.down(addr))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Per VIP: interface, MAC, hashmode, nodes this node answers for, counters."""
    from clusterip.flows import SocketFlows
    from clusterip.reactor.control import NoAgent, request
    from clusterip.xdp.static import split_note

    try:
        agent_doc: dict[str, Any] | None = request("status")
    except NoAgent:
        agent_doc = None
    node = _node()
    states = node.states(counters=True)
    docs = list(agent_doc["vips"]) if agent_doc else []
    ours = len(docs)  # the agent's own reports come first; the kernel's tables after them
    for st in states:
        if st.mode == "agent" and st.live:
            continue  # a running agent: its own report above is richer
        doc = st.to_json()
        flows = SocketFlows(udp=False).per_bucket(st.config, st.ownership.modulus)
        doc["flows"] = {str(b): n for b, n in sorted(flows.items())}
        code, doc["counters"] = split_note(doc["counters"])
        if st.mode == "static":
            doc["xdp"] = node.xdp.report(st.config, code)
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
    for d in docs[ours:]:
        ports = ",".join(str(p) for p in d["dports"]) or "any"
        click.echo(
            f"{d['vip']} on {d['interface']}  mac {d['clustermac']} {_mac_mode(d)}  "
            f"{d['hashmode']}  {d['protocol']} port {ports}  ({d['mode']})"
        )
        if d["mode"] == "agent":  # what an agent left behind, no agent running
            lease = d.get("lease")
            if lease:
                click.echo(
                    f"  suspended agent (node {lease['node_id']}): serving as it was for "
                    f"{lease['left']:.0f} s more, for a successor to adopt"
                )
            else:
                click.echo("  left by a stopped agent: every VIP packet is dropped here;")
                click.echo("  `clusterip down` removes it, a new agent replaces it")
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
        if "xdp" in d:
            _print_xdp(d["xdp"]["describe"], d["xdp"]["counters"])


def _mac_mode(doc: dict[str, Any]) -> str:
    """`(multicast)`, `(igmp, group 239.255.0.100)`, `(unicast)`: the VIP's MAC mode."""
    mode = doc.get("mac_mode", "multicast")
    return f"({mode}, group {doc['group']})" if doc.get("group") else f"({mode})"


def _print_xdp(line: str, counters: dict[str, int] | None) -> None:
    """The pre-filter's line of `status`: how it runs (or why not) and what it did."""
    click.echo(f"  XDP pre-filter: {line}")
    if counters:
        click.echo(
            f"  XDP packets: dropped {counters['dropped']}  fast path {counters['owned']}  "
            f"passed to nft {counters['passed']}  forged source {counters.get('forged', 0)}"
        )


def _print_agent(doc: dict[str, Any]) -> None:
    a = doc["agent"]
    click.echo(
        f"agent: node {a['node_id']}, weight {a['weight']}, up {a['uptime_s']} s, heartbeat "
        f"{a['interval_ms']} ms, dead after {a['detection_ms']} ms"
        + (", DRAINING (clusterip drain)" if a["draining"] else "")
        + (", weight 0: owns no bucket" if a.get("weight_zero") and not a["draining"] else "")
        + (f"; XDP {a['xdp']}" if a.get("xdp") else "")
    )
    for v in doc["vips"]:
        click.echo(
            f"{v['vip']} on {v['interface']}  mac {v['clustermac']} {_mac_mode(v)}  "
            f"{v['hashmode']}  "
            f"{v['buckets']} buckets  state {v['state']} ({v['reason']})"
        )
        line = f"  this node: {v['owned_count']} buckets, {len(v['draining'])} draining"
        if v.get("guarded"):
            line += f", {len(v['guarded'])} guarded for {v['guard_until']} s more"
        click.echo(line + f"; last change applied in {v['last_apply_ms']} ms")
        counters = v.get("counters") or {}
        if counters:
            click.echo(
                "  packets: " + "  ".join(f"{n} {c['packets']}" for n, c in counters.items())
            )
        if v.get("xdp"):
            _print_xdp(v["xdp"]["describe"], v["xdp"]["counters"])
        click.echo("  members:  id  address          state     weight  buckets  last heard")
        for m in v["members"]:
            where = m["address"] or f"via node {m['via']}"
            click.echo(
                f"           {m['id']:>3}  {where:<15}  {m['state']:<8}  {m['weight']:>6}"
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
        fail(f"bad node number {value!r}: expected a number such as 3 (or +3 / -3)")


@click.command()
@click.argument("bucket", metavar="N")
@click.option("--vip", required=True, metavar="ADDR")
def take(bucket: str, vip: str) -> None:
    """Also answer as node N (CLUSTERIP's `echo +N > /proc/net/ipt_CLUSTERIP/VIP`)."""
    addr = cfgmod.parse_vip(vip)[0]
    click.echo(_node().take(addr, _bucket_arg(bucket)))


@click.command()
@click.argument("bucket", metavar="N")
@click.option("--vip", required=True, metavar="ADDR")
@click.option(
    "--now", is_flag=True, help="also drop node N's established flows here (CLUSTERIP's -N)"
)
def release(bucket: str, vip: str, now: bool) -> None:
    """Stop answering as node N (`echo -N`); established TCP flows stay unless --now."""
    addr = cfgmod.parse_vip(vip)[0]
    click.echo(_node().release(addr, _bucket_arg(bucket), keep_flows=not now))


@click.command()
@vip_options
@click.option("--src", required=True, metavar="IP", help="client address")
@click.option("--sport", metavar="P", help="client port")
@click.option("--json", "as_json", is_flag=True)
def which(src: str, sport: str | None, as_json: bool, **params: Any) -> None:
    """The node number that answers a flow, computed as the kernel computes it."""
    given = {k: v for k, v in params.items() if v not in (None, ())}
    dports = given.pop("dport", ())
    agent: dict[str, Any] | None = None
    if set(given) - {"vip"}:
        cfg = configs_from(params, need_local=False)[0]
    else:
        if "vip" not in given:
            fail("missing --vip")
        addr = cfgmod.parse_vip(given["vip"])[0]
        agent = _agent_vip(str(addr))
        if agent is not None:
            cfg = cfgmod.build(
                vip=str(addr),
                interface=agent["interface"],
                total_nodes=1,
                protocol=agent["protocol"],
                dports=agent["dports"],
                hashmode=agent["hashmode"],
                clustermac=agent["clustermac"],
                seed=agent["seed"],
                mac_mode=agent.get("mac_mode"),
            )
        else:
            cfg = _node().require(addr).config
    sport_n = cfgmod.parse_port(sport, "source port") if sport else None
    if len(dports) > 1 or "," in "".join(dports):
        fail(f"which takes one --dport, got {','.join(dports)!r}")
    dport_n = cfgmod.parse_port(dports[0], "destination port") if dports else None
    if cfg.uses_ports and sport_n is None:
        fail(f"hashmode {cfg.hashmode} needs --sport")
    if cfg.hashmode == "sourceip-sourceport-destport" and dport_n is None:
        fail(f"hashmode {cfg.hashmode} needs --dport")
    n = flow_bucket(
        cfg.hashmode,
        cfg.seed,
        agent["buckets"] if agent is not None else cfg.total_nodes,
        cfgmod.parse_ip(src, "source address", cfg.vip.version),
        sport_n,
        dport_n,
    )
    if agent is None:  # static mode: the bucket is the node number (CLUSTERIP's)
        click.echo(json.dumps({"vip": str(cfg.vip), "bucket": n, "node": n}) if as_json else n)
        return
    from clusterip.core.holdings import owner_of

    view = {int(k): w for k, w in agent["view"].items()}
    node = owner_of(view, agent["buckets"], n) or None
    if as_json:
        click.echo(json.dumps({"vip": str(cfg.vip), "bucket": n, "node": node}))
    else:
        click.echo(f"node {node} (bucket {n} of {agent['buckets']})" if node else f"nobody now "
                   f"(bucket {n} of {agent['buckets']})")  # fmt: skip


def _agent_vip(vip: str) -> dict[str, Any] | None:
    """This namespace's agent's report of `vip`, if an agent runs it."""
    from clusterip.reactor.control import NoAgent, request

    try:
        doc = request("status")
    except NoAgent:
        return None
    return next((v for v in doc.get("vips", []) if v["vip"] == vip), None)


@click.command("import-iptables")
@click.argument("lines", nargs=-1, required=True, metavar="'LINE' ['LINE' ...]")
def import_iptables(lines: tuple[str, ...]) -> None:
    """Legacy `iptables ... -j CLUSTERIP ...` lines to a TOML config for `up -c`."""
    from clusterip.importer import import_lines, render_toml

    click.echo(render_toml(import_lines(list(lines))), nl=False)
