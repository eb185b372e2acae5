"""Connections broken per rebalance: clusterip's flow-keeping moves vs the naive move.

    python -m bench.rebalance [--conns 150] [--out bench/out/rebalance.json]

Long-lived TCP connections (each sends a line every 200 ms and checks every echo) spread over
the nodes; then ownership moves, once the naive way and once clusterip's way, in the same run:
- static bucket move (CLUSTERIP's `echo -3` on node 3, `echo +3` on node 1): naive =
  `release 3 --now` (the old owner forgets its flows, as the /proc interface did); clusterip =
  `release 3` (the old owner keeps its established flows, the new owner takes new ones);
- a fourth node joins a cluster of agents: naive = agents with `--drain-timeout 0` (a bucket
  that moves is dropped at once by its old owner); clusterip = the default drain.
A connection counts as broken when an echo is missing, wrong, late by 10 periods, or reset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.labrun import bench_lab
from clusterip.lab.agents import Agents, write_key
from clusterip.lab.conns import finish_conns, start_conns
from clusterip.lab.net import Lab

PERIOD = 0.2


def _cip(lab: Lab, k: int, *args: str) -> None:
    done = lab.run(lab.topo.node_ns(k), [sys.executable, "-m", "clusterip", *args], timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"clusterip {' '.join(args)} on n{k}: {done.stderr.strip()}")


def _broken(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r["broken"])


def static_move(conns: int, keep: bool, log: Callable[[str], None]) -> dict[str, Any]:
    with bench_lab(3, 60, log) as lab:
        lab.start_servers()
        for k in lab.topo.node_indexes:
            _cip(lab, k, "up", "--vip", lab.topo.vip, "--interface", "eth0",
                 "--total-nodes", "3", "--local-node", str(k))  # fmt: skip
        proc = start_conns(lab, conns, period=PERIOD, duration=8.0)
        time.sleep(2.0)
        _cip(lab, 3, "release", "3", "--vip", lab.topo.vip, *(() if keep else ("--now",)))
        _cip(lab, 1, "take", "3", "--vip", lab.topo.vip)
        records = finish_conns(proc)
    moved = sum(1 for r in records if r["node"] == "n3")
    return {"connections": len(records), "in_moved_bucket": moved, "broken": _broken(records)}


def agent_join(conns: int, drain: bool, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterip-rebalance-") as tmp:
        keyfile = Path(tmp) / "cluster.key"
        write_key(keyfile)
        with bench_lab(4, 60, log) as lab:
            lab.start_servers()
            extra = () if drain else ("--drain-timeout", "0")
            agents = Agents(lab, keyfile, *extra)
            try:
                for k in (1, 2, 3):
                    agents.start(k)
                agents.wait_converged([1, 2, 3])
                proc = start_conns(lab, conns, period=PERIOD, duration=10.0)
                time.sleep(2.0)
                agents.start(4)
                agents.wait_converged([1, 2, 3, 4])
                records = finish_conns(proc)
            finally:
                agents.stop_all()
    return {"connections": len(records), "broken": _broken(records)}


def run(conns: int, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    result = {
        "connections": conns,
        "period_s": PERIOD,
        "static_move": {
            "naive": static_move(conns, keep=False, log=log),
            "clusterip": static_move(conns, keep=True, log=log),
        },
        "agent_join": {
            "naive": agent_join(conns, drain=False, log=log),
            "clusterip": agent_join(conns, drain=True, log=log),
        },
        "command": f"python -m bench.rebalance --conns {conns}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.rebalance")
    ap.add_argument("--conns", type=int, default=150)
    ap.add_argument("--out", type=Path, default=Path("bench/out/rebalance.json"))
    args = ap.parse_args(argv)
    r = run(args.conns, args.out)
    for case in ("static_move", "agent_join"):
        naive, ours = r[case]["naive"], r[case]["clusterip"]
        print(
            f"{case}: broken connections naive {naive['broken']}/{naive['connections']}, "
            f"clusterip {ours['broken']}/{ours['connections']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
