"""Control plane: the time one ownership change takes, as one nft transaction.

* the CLI: `clusterip take N` / `clusterip release N` on a node (a whole process: Python start,
  reading the kernel's state back, one transaction);
* in-process: `NftFirewall().apply(render(...))` alone, for the static set-up (3 buckets) and
  for an agent-sized table (4096 buckets, a third of them owned), timed by `applytime.py`.
The agent's CPU use at idle is measured by a later benchmark (pending).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.setups import cip, run_ok, up_args
from bench.stats import summarize
from clusterip.lab.net import Lab

APPLYTIME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "applytime.py")


def cli_timings(lab: Lab, count: int) -> dict[str, Any]:
    """Alternate `take 2` and `release 2` on node 1 (VIP up as node 1 of 3)."""
    vip = lab.topo.vip
    cip(lab, 1, *up_args(lab, 1))
    take: list[float] = []
    release: list[float] = []
    try:
        for _ in range(count):
            for verb, into in (("take", take), ("release", release)):
                t0 = time.perf_counter()
                cip(lab, 1, verb, "2", "--vip", vip)
                into.append(time.perf_counter() - t0)
    finally:
        cip(lab, 1, "down", "--vip", vip)
    return {
        "take_s": summarize(take).to_dict(),
        "release_s": summarize(release).to_dict(),
        "commands": [f"clusterip take 2 --vip {vip}", f"clusterip release 2 --vip {vip}"],
    }


def apply_timings(lab: Lab, modulus: int, count: int) -> dict[str, Any]:
    argv = [
        sys.executable,
        APPLYTIME,
        "--vip",
        lab.topo.vip,
        "--interface",
        lab.topo.interface,
        "--modulus",
        str(modulus),
        "--count",
        str(count),
    ]
    data = json.loads(run_ok(lab, lab.topo.node_ns(1), argv))
    return {
        "modulus": modulus,
        "owned": data["owned"],
        "apply_s": summarize(data["seconds"]).to_dict(),
        "command": " ".join(["python", "bench/applytime.py", *argv[2:]]),
    }


def measure(lab: Lab, *, count: int, log: Callable[[str], None]) -> dict[str, Any]:
    cli = cli_timings(lab, count)
    log(
        f"  CLI take {cli['take_s']['median'] * 1000:.0f} ms, "
        f"release {cli['release_s']['median'] * 1000:.0f} ms (median of {count})"
    )
    applies = []
    for modulus in (3, 4096):
        res = apply_timings(lab, modulus, count)
        applies.append(res)
        log(
            f"  apply(render()) with {modulus} buckets: "
            f"{res['apply_s']['median'] * 1000:.1f} ms (median of {count})"
        )
    return {"cli": cli, "apply": applies, "agent_idle": {"status": "pending"}}
