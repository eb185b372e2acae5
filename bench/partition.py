"""Partitions that heal: what clients see, clusterip beside keepalived VRRP (default timers).

    python -m bench.partition [--partitions 10] [--out bench/out/partition.json]

Each system serves one VIP from 3 nodes to 40 client addresses (long-lived TCP connections,
UDP flows, new connections all along: clusterip.lab.traffic) while one node is cut off for
5 s, then healed; 60 more long-lived connections are opened 1.5 s before the heal (to whoever
serves then) and held across it. The partitions alternate between two kinds:

- cut    the node's switch port down: neither peers nor clients reach it;
- split  only the heartbeats (VRRP adverts) between it and the others dropped in the switch:
         clients still reach every node.

clusterip cuts node 3 (clusterip.lab.faults); VRRP cuts the master (n1, priority 150; n2 and
n3 back it up, advert_int 1 s, preemption on, as bench.vrrp sets it up), its only node that
serves. Per partition: the time from the heal until every client's UDP flow was answered
exactly once again (and from then on), datagrams answered twice, long-lived connections
broken on the nodes the partition did not touch (clusterip: 1 and 2; VRRP: the backups, which
hold the connections opened while the master was away, reset when it takes the VIP back),
new connections failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import vrrp
from bench.labrun import bench_lab
from clusterip.lab.faults import SCENARIOS, FaultLab, FaultOutcome, Scenario
from clusterip.lab.net import Lab
from clusterip.lab.traffic import Traffic

KINDS = {"cut": "cut-1|2", "split": "split-1|2"}
DURING = 60  # long-lived connections opened late in the partition
HELD = 60
UDP = 45
SECONDS = 5.0
VRRP_PORT = "vrrp"  # nft's name for IP protocol 112


def _row(out: FaultOutcome) -> dict[str, Any]:
    s = out.summary()
    heal = s["heal_gap_max_s"]
    return {
        "kind": out.scenario.name,
        # None: some client was not answered exactly once by the end of the run.
        "heal_to_all_answered_s": heal if heal != float("inf") else None,
        "udp_doubles": s["udp"]["doubles"],
        "udp_lost_in_fault": s["udp"]["missing_in_fault"],
        "longest_outage_s": s["udp"]["longest_outage_s"],
        "untouched_broken": s["untouched_broken"],
        "new_failed": s["new"]["failed"],
        "held": s["held"],
    }


def clusterip_runs(n: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="clusterip-partition-") as tmp,
        bench_lab(4, 40, log) as lab,
    ):
        f = FaultLab(lab, Path(tmp))
        try:
            for i in range(n):
                kind = list(KINDS)[i % len(KINDS)]
                row = _row(f.run(SCENARIOS[KINDS[kind]], during=DURING))
                rows.append({**row, "kind": kind})
                log(f"clusterip partition {i + 1}/{n} ({kind}): {_line(row)}")
        finally:
            f.heal_switch()
            f.agents.reset()
    return rows


def _switch(lab: Lab, argv: list[str], script: str | None = None) -> None:
    done = lab.run(lab.topo.switch_ns, argv, timeout=10, input=script)
    if done.returncode != 0:
        raise RuntimeError(f"switch: {' '.join(argv)}: {done.stderr.strip()}")


def _split_adverts(lab: Lab, on: bool) -> None:
    """VRRP adverts between n1 and the others dropped in the switch (or no more)."""
    table = "bench_vrrp_split"
    script = f"add table bridge {table}\ndelete table bridge {table}\n"
    if on:
        rules = "".join(
            f'\t\tiifname "{a}" oifname "{b}" ip protocol {VRRP_PORT} drop\n'
            for a, b in (("n1", "n2"), ("n1", "n3"), ("n2", "n1"), ("n3", "n1"))
        )
        script += (
            f"table bridge {table} {{\n\tchain forward {{\n"
            f"\t\ttype filter hook forward priority 0; policy accept;\n{rules}\t}}\n}}\n"
        )
    _switch(lab, ["nft", "-f", "-"], script)


def vrrp_once(lab: Lab, kind: str) -> FaultOutcome:
    """One partition of the VRRP master, under the same clients."""
    addrs = list(lab.topo.client_addrs())
    traffic = Traffic(lab, vip=vrrp.VRRP_VIP)
    marks: dict[str, float] = {}
    try:
        traffic.hold("before", [addrs[i % len(addrs)] for i in range(HELD)], http=False)
        traffic.flows([addrs[i % len(addrs)] for i in range(UDP)])
        traffic.connect(addrs)
        time.sleep(1.5)
        marks["fault"] = time.time()
        if kind == "cut":
            _switch(lab, ["ip", "link", "set", "n1", "down"])
        else:
            _split_adverts(lab, True)
        time.sleep(SECONDS - 1.5)
        traffic.hold("during", [addrs[i % len(addrs)] for i in range(DURING)], http=False)
        time.sleep(max(0.0, marks["fault"] + SECONDS - time.time()))
        marks["heal"] = time.time()
        if kind == "cut":
            _switch(lab, ["ip", "link", "set", "n1", "up"])
        else:
            _split_adverts(lab, False)
        vrrp.wait_holder(lab, 1, timeout=20)
        marks["settled"] = time.time()
        time.sleep(2.5)
        seen = traffic.finish()
    except BaseException:
        traffic.kill()
        raise
    sc = Scenario(f"vrrp-{kind}", 3, (2, 3))
    return FaultOutcome(sc, marks, seen, {}, {})


def vrrp_runs(n: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="clusterip-vrrp-") as workdir,
        bench_lab(3, 40, log) as lab,
    ):
        lab.start_servers()
        for k in lab.topo.node_indexes:
            vrrp.start(lab, k, workdir)
        vrrp.wait_holder(lab, 1, timeout=20)
        for i in range(n):
            kind = list(KINDS)[i % len(KINDS)]
            try:
                row = {**_row(vrrp_once(lab, kind)), "kind": kind}
            except RuntimeError as exc:  # the clients could not even connect: counted, not fatal
                row = unreachable(kind, str(exc))
            rows.append(row)
            log(f"VRRP partition {i + 1}/{n} ({kind}): {_line(row)}")
            time.sleep(1.0)
            if row.get("error"):
                time.sleep(5.0)  # a little longer for VRRP to settle before the next one
    return rows


def unreachable(kind: str, error: str) -> dict[str, Any]:
    """A partition whose clients could not connect to the VIP before it even began."""
    return {"kind": kind, "heal_to_all_answered_s": None, "udp_doubles": 0,
            "udp_lost_in_fault": 0, "longest_outage_s": 0.0, "untouched_broken": 0,
            "new_failed": 0, "held": {}, "error": error[:300]}  # fmt: skip


def _seconds(x: float | None) -> str:
    return "never (in the run)" if x is None else f"{x:.3f} s"


def _line(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"VIP unreachable before the partition: {r['error']}"
    return (
        f"all answered once {_seconds(r['heal_to_all_answered_s'])} after the heal, "
        f"{r['udp_doubles']} UDP doubles, {r['untouched_broken']} broken on untouched nodes, "
        f"{r['new_failed']} new connections failed"
    )


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    heal = [r["heal_to_all_answered_s"] for r in rows]
    known = [h for h in heal if h is not None]
    never = len(heal) - len(known)
    return {
        "partitions": len(rows),
        "heal_p50_s": round(statistics.median(known), 3) if known else None,
        "heal_max_s": round(max(known), 3) if known and not never else None,
        "heal_never": never,  # partitions after which some client was never answered once
        "unreachable": sum(1 for r in rows if r.get("error")),  # clients could not connect
        "udp_doubles": sum(r["udp_doubles"] for r in rows),
        "untouched_broken": sum(r["untouched_broken"] for r in rows),
        "new_failed": sum(r["new_failed"] for r in rows),
        "longest_outage_s": max((r["longest_outage_s"] for r in rows), default=None),
    }


def _heal(agg: dict[str, Any]) -> str:
    if agg["heal_never"]:
        text = f"never in {agg['heal_never']} of {agg['partitions']}"
        if agg.get("unreachable"):
            text += f" ({agg['unreachable']} of them: VIP unreachable before the partition)"
        if agg["heal_p50_s"] is not None:
            text += f"; p50 of the others {agg['heal_p50_s']} s"
        return text
    return f"{agg['heal_p50_s']} s / {agg['heal_max_s']} s"


COLUMNS = ["system", "kind", "partitions", "heal → all answered once (p50 / max)",
           "UDP answered twice", "broken on untouched nodes", "new connections failed",
           "longest outage"]  # fmt: skip


def run(n: int, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    systems = {"clusterip": clusterip_runs(n, log), "keepalived VRRP": vrrp_runs(n, log)}
    summary: dict[str, Any] = {}
    rows = []
    for system, runs in systems.items():
        for kind in KINDS:
            agg = _aggregate([r for r in runs if r["kind"] == kind])
            summary.setdefault(system, {})[kind] = agg
            rows.append([
                system, kind, str(agg["partitions"]),
                _heal(agg), str(agg["udp_doubles"]),
                str(agg["untouched_broken"]), str(agg["new_failed"]),
                f"{agg['longest_outage_s']} s",
            ])  # fmt: skip
    result = {
        "summary": summary,
        "runs": systems,
        "columns": COLUMNS,
        "rows": rows,
        "seconds": SECONDS,
        "command": f"python -m bench.partition --partitions {n}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    rows = [result["columns"], *result["rows"]]
    widths = [max(len(str(x)) for x in col) for col in zip(*rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.partition")
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bench/out/partition.json"))
    args = ap.parse_args(argv)
    print(table(run(args.partitions, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
