"""The datapath's own cost per packet, variant by variant (`--investigate`).

wrk's request rate on two shared cores moves by several percent from run to run, more than the
differences between rulesets. This measures them directly: trafgen sends UDP frames to the
VIP from 256 flows (source ports 40000-40255, so conntrack, where a variant turns it on, sees
known flows as it would in a keep-alive benchmark), flooded to nodes 1-3 as in the throughput
set-ups, with each variant's rules loaded; the CPU time of the whole path per packet is
compared with the ceiling's in the same round. The owners' stacks answer nothing (no socket
on the port; ICMP errors are rate-limited), the same in every variant.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from bench import foreign
from bench.setups import DIRECTOR, Setup, lab_config, run_ok
from bench.stats import summarize
from clusterip.lab.net import Lab


def _flood_serving(lab: Lab) -> None:
    for k in lab.topo.node_indexes:
        state = "off" if k == DIRECTOR else "on"
        run_ok(
            lab,
            lab.topo.switch_ns,
            [
                "ip",
                "link",
                "set",
                "dev",
                lab.topo.node_name(k),
                "type",
                "bridge_slave",
                "mcast_flood",
                state,
            ],
        )


def measure(
    lab: Lab,
    setups: Sequence[Setup],
    workdir: str,
    *,
    seconds: int,
    rounds: int,
    lab_inodes: Sequence[int],
    log: Callable[[str], None],
    quiet: float = 0.15,
    retries: int = 1,
) -> dict[str, Any]:
    conf = os.path.join(workdir, "perpacket.trafgen")
    with open(conf, "w") as fh:
        fh.write(
            foreign.trafgen_conf(
                lab_config(lab, 1).clustermac,
                lab.topo.client_mac,
                lab.topo.client_addrs()[0],
                lab.topo.vip,
                sport="dinc(40000, 40255, 1)",
            )
        )
    argv = foreign.trafgen_argv(lab, conf, seconds)
    rx = foreign.Receiver("serving", 1, "nodes 1-3")
    _flood_serving(lab)
    samples: list[dict[str, Any]] = []
    for rnd in range(rounds):
        order = [*setups[rnd % len(setups) :], *setups[: rnd % len(setups)]]
        for setup in order:
            setup.enter(lab)
            try:
                best: dict[str, Any] | None = None
                for _ in range(1 + retries):
                    one = foreign.one_run(lab, argv, rx, seconds, lab_inodes)
                    if best is None or one["cpu"]["background"] < best["cpu"]["background"]:
                        best = one
                    if best["cpu"]["background"] <= quiet:
                        break
                assert best is not None
            finally:
                setup.leave(lab)
            samples.append({"round": rnd, "setup": setup.name, **best})
            log(
                f"  round {rnd + 1}/{rounds} {setup.name:<16} {best['ns_per_packet']:7.0f} "
                f"ns/pkt  others {best['cpu']['background']:.0%}"
            )
    return {
        "setups": [{"name": s.name, "title": s.title} for s in setups],
        "samples": samples,
        "analysis": analyze(samples, [s.name for s in setups]),
        "trafgen": shlex.join(a.replace(workdir, "DIR") for a in argv),
    }


def analyze(samples: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per set-up: ns per packet, and its extra cost over the ceiling in the same round."""
    ceiling = {s["round"]: s["ns_per_packet"] for s in samples if s["setup"] == "ceiling"}
    out: dict[str, Any] = {}
    for name in names:
        rows = [s for s in samples if s["setup"] == name]
        if not rows:
            continue
        entry: dict[str, Any] = {
            "ns_per_packet": summarize([s["ns_per_packet"] for s in rows]).to_dict()
        }
        extra = [s["ns_per_packet"] - ceiling[s["round"]] for s in rows if s["round"] in ceiling]
        if extra and name != "ceiling":
            entry["extra_ns"] = summarize(extra).to_dict()
        out[name] = entry
    return out
