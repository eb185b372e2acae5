"""Part one of `make demo`: a 3-node static cluster in the lab, CLUSTERIP style, torn down.

1. a lab: switch, 3 server namespaces with a tiny HTTP server each, a client with 50 addresses;
2. `clusterip up` on every node (node K of 3);
3. requests from every client address, and a table of which node answered how many;
4. node 3 leaves and node 1 takes its share (CLUSTERIP's `echo +3`), the table again;
5. teardown, removing exactly what was created.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from clusterip.lab.net import Lab
from clusterip.lab.probe import ProbeResult
from clusterip.lab.topo import LabTopo

NODES = 3
CLIENTS = 50
PER_CLIENT = 4


def _cip(lab: Lab, k: int, console: Console, *args: str) -> None:
    argv = [sys.executable, "-m", "clusterip", *args]
    console.print(f"[dim]n{k}$[/dim] clusterip {' '.join(args)}")
    done = lab.run(lab.topo.node_ns(k), argv, timeout=30)
    out = (done.stdout + done.stderr).strip()
    if out:
        console.print(f"   {out}")
    if done.returncode != 0:
        raise RuntimeError(f"clusterip {' '.join(args)} failed on n{k}: {out}")


def _table(title: str, res: ProbeResult, lab: Lab) -> Table:
    table = Table(title=title)
    table.add_column("node")
    table.add_column("requests", justify="right")
    table.add_column("share", justify="right")
    table.add_column("client addresses", justify="right")
    total = len(res.results)
    by_src: dict[str, set[str]] = {}
    for r in res.results:
        if r.node:
            by_src.setdefault(r.node, set()).add(r.src)
    for k in lab.topo.node_indexes:
        name = lab.topo.node_name(k)
        n = res.by_node.get(name, 0)
        table.add_row(name, str(n), f"{100 * n / total:.0f}%", str(len(by_src.get(name, ()))))
    table.add_row("errors", str(res.errors), f"{100 * res.errors / total:.0f}%", "")
    return table


def run(argv: Sequence[str] = ()) -> int:
    console = Console()
    started = time.monotonic()
    topo = LabTopo(f"demo{secrets.token_hex(2)}", NODES, CLIENTS)
    console.rule("clusterip demo: a VIP served by 3 nodes, no load balancer")
    console.print(
        f"lab [bold]{topo.name}[/bold]: switch {topo.switch_ns}, nodes "
        f"{', '.join(topo.node_ns(k) for k in topo.node_indexes)}, client {topo.client_ns} "
        f"with {CLIENTS} addresses; VIP {topo.vip}"
    )
    with Lab.build(topo) as lab:
        vip = topo.vip
        for k in topo.node_indexes:
            _cip(lab, k, console, "up", "--vip", vip, "--interface", topo.interface,
                 "--total-nodes", str(NODES), "--local-node", str(k))  # fmt: skip
        res = lab.probe(proto="tcp", port=80, per_source=PER_CLIENT)
        console.print(_table(f"{len(res.results)} HTTP requests to {vip}", res, lab))
        mac = lab.neighbour("client", vip)
        console.print(f"the client's ARP entry for {vip}: [bold]{mac}[/bold] (the cluster MAC)")
        console.rule("node 3 leaves; node 1 takes its share (CLUSTERIP: echo +3 > /proc/...)")
        _cip(lab, 3, console, "release", "3", "--now", "--vip", vip)
        _cip(lab, 1, console, "take", "3", "--vip", vip)
        _cip(lab, 1, console, "status")
        res2 = lab.probe(proto="tcp", port=80, per_source=PER_CLIENT)
        console.print(_table(f"{len(res2.results)} HTTP requests after the move", res2, lab))
        console.print(
            "[dim]CLUSTERIP stopped there: the survivor carries twice its load until a person "
            "moves it back. The agent (clusterip agent) does this by itself and spreads a dead "
            "node's share over every survivor.[/dim]"
        )
        failed = res.errors + res2.errors
    console.rule(f"torn down: lab {topo.name} removed ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
