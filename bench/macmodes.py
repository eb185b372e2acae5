"""MAC modes: what each costs the segment and what it serves, beside multicast mode.

    python -m bench.macmodes [--rounds 6] [--duration 2] [--requests 200] [--out bench/out]

A lab of 4 nodes on an IGMP-snooping switch (clusterip.lab.snoop): nodes 1-3 run nginx and
serve the VIP, node 4 serves nothing (the port a switch should spare). Each round takes every
MAC mode in turn (rotated: a different one first each round): `clusterip up --mac-mode M` on
nodes 1-3 (XDP off: the MAC mode's own cost), then

- frames: `--requests` HTTP requests, one connection each, from distinct client addresses;
  the switch counts, per port, the frames to the VIP it delivered there: frames per request at
  the non-member port (node 4) and at a member (node 1);
- throughput: wrk against the VIP, keep-alive and one request per connection (requests/s).

Ratios to multicast mode are per round (measured back to back), summarized by their median and
95% interval. Writes `macmodes.json` (a generic table that `python -m bench` puts in
docs/benchmarks.md) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.labrun import lab_inodes, leftovers, new_name, prepare_client
from bench.servers import start_nginx
from bench.stats import paired_ratios, summarize
from bench.throughput import WrkParams, _sample
from bench.wrk import MODES
from clusterip.lab.net import Lab
from clusterip.lab.snoop import count_port_frames, mdb_ports, port_frames
from clusterip.lab.topo import LabTopo

MAC_MODES = ("multicast", "igmp", "unicast")
SERVING = (1, 2, 3)
OUTSIDER = "n4"
CLIENTS = 200
GROUP = "239.255.0.100"  # the lab VIP's igmp-mode group


def up_all(lab: Lab, mode: str) -> None:
    for k in SERVING:
        argv = [sys.executable, "-m", "clusterip", "up", "--vip", lab.topo.vip, "-i", "eth0"]
        argv += ["--total-nodes", str(len(SERVING)), "--local-node", str(k)]
        argv += ["--mac-mode", mode, "--xdp", "off"]
        done = lab.run(lab.topo.node_ns(k), argv, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"n{k}: {done.stderr.strip()}")
    if mode == "igmp":  # the switch has heard every member's report
        _wait(lambda: _members(lab) == {f"n{k}" for k in SERVING}, "the members' reports")
    else:
        _wait(lambda: not _members(lab), "the members to leave")
    lab.run(lab.topo.client_ns, ["ip", "neigh", "flush", "all"], timeout=10)


def _members(lab: Lab) -> set[str]:
    return mdb_ports(lab, GROUP)


def _wait(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def frames_per_request(lab: Lab, requests: int) -> dict[str, float]:
    sources = lab.topo.client_addrs()[:requests]
    count_port_frames(lab)
    res = lab.probe(proto="tcp", port=80, sources=list(sources), per_source=1, timeout=2.0)
    got = port_frames(lab)
    done = len(res.results) - res.errors
    return {
        "requests": done,
        "errors": res.errors,
        "outsider": got[OUTSIDER] / done if done else 0.0,
        "member": got["n1"] / done if done else 0.0,
    }


def measure(
    lab: Lab, params: WrkParams, rounds: int, requests: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    url = f"http://{lab.topo.vip}/"
    inodes = lab_inodes(lab)
    samples: list[dict[str, Any]] = []
    for rnd in range(rounds):
        k = rnd % len(MAC_MODES)
        line = []
        for mode in (*MAC_MODES[k:], *MAC_MODES[:k]):
            up_all(lab, mode)
            frames = frames_per_request(lab, requests)
            rates = {m: _sample(lab, url, m, params, inodes)["rps"] for m in MODES}
            samples.append({"round": rnd, "mac_mode": mode, "frames": frames, "rps": rates})
            line.append(
                f"{mode} {frames['outsider']:.1f} frames/req at n4, "
                f"{rates['keepalive']:.0f}/{rates['close']:.0f} req/s"
            )
        log(f"  round {rnd + 1}/{rounds}: " + "; ".join(line))
    return samples


def analyze(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def series(mode: str, pick: Callable[[dict[str, Any]], float]) -> list[float]:
        return [pick(s) for s in sorted(samples, key=lambda s: s["round"]) if s["mac_mode"] == mode]

    out: dict[str, Any] = {}
    for mode in MAC_MODES:
        d: dict[str, Any] = {
            "outsider_frames": summarize(series(mode, lambda s: s["frames"]["outsider"])).to_dict(),
            "member_frames": summarize(series(mode, lambda s: s["frames"]["member"])).to_dict(),
            "errors": sum(int(s["frames"]["errors"]) for s in samples if s["mac_mode"] == mode),
        }
        for m in MODES:

            def rps(s: dict[str, Any], m: str = m) -> float:
                return float(s["rps"][m])

            d[f"rps_{m}"] = summarize(series(mode, rps)).to_dict()
            ratios = paired_ratios(series(mode, rps), series("multicast", rps))
            d[f"ratio_{m}"] = summarize(ratios).to_dict()
        out[mode] = d
    return out


def _ci(s: dict[str, Any], fmt: str = ".2f") -> str:
    lo, hi = s["ci95"]
    return f"{s['median']:{fmt}} [{lo:{fmt}}–{hi:{fmt}}]"


def table(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = [
        "MAC mode",
        "frames per request at a non-member port",
        "at a member port",
        "keep-alive req/s",
        "/ multicast",
        "one request per connection, req/s",
        "/ multicast",
    ]
    rows = []
    for mode in MAC_MODES:
        a = analysis[mode]
        rows.append(
            [
                mode,
                _ci(a["outsider_frames"], ".1f"),
                _ci(a["member_frames"], ".1f"),
                _ci(a["rps_keepalive"], ".0f"),
                _ci(a["ratio_keepalive"]),
                _ci(a["rps_close"], ".0f"),
                _ci(a["ratio_close"]),
            ]
        )
    return cols, rows


def run(
    rounds: int,
    out: Path,
    *,
    duration: float = 2.0,
    requests: int = 200,
    log: Callable[[str], None] = print,
    command: str = "python -m bench.macmodes",
) -> dict[str, Any]:
    if os.geteuid() != 0:
        sys.exit("python -m bench.macmodes: needs root (it builds network namespaces)")
    name = new_name()
    params = WrkParams(duration=duration, threads=2, connections=64, warmup=0, nice=0)
    log(f"lab {name}: 4 nodes on an IGMP-snooping switch, {CLIENTS} client addresses")
    lab = Lab.build(LabTopo(name, 4, CLIENTS, snooping=True), servers=False)
    try:
        prepare_client(lab)
        with tempfile.TemporaryDirectory(prefix="clusterip-macmodes-") as workdir:
            start_nginx(lab, SERVING, workdir, [])
            samples = measure(lab, params, rounds, min(requests, CLIENTS), log)
    finally:
        lab.teardown()
        left = leftovers(name)
        if left:
            log(f"WARNING: lab {name} left namespaces behind: {', '.join(left)}")
    analysis = analyze(samples)
    cols, rows = table(analysis)
    doc = {
        "summary": (
            "Per MAC mode, 3 nodes serving and a 4th serving nothing on an IGMP-snooping "
            "switch that forwards a joined group's MAC to member ports only: VIP frames the "
            "switch delivered per HTTP request (one connection each), at the non-member port "
            "and at a member's, and requests/s with wrk (XDP off), with each mode's ratio to "
            f"multicast mode in the same round; median [95% interval] of {rounds} rounds."
        ),
        "command": command,
        "columns": cols,
        "rows": rows,
        "analysis": analysis,
        "samples": samples,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {out}")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.macmodes", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=2.0, help="seconds per wrk run")
    p.add_argument("--requests", type=int, default=200, help="requests counted per round")
    here = Path(__file__).resolve().parent
    p.add_argument("--out", default=str(here / "out"))
    args = p.parse_args(argv)
    command = "python -m bench.macmodes " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = run(
        args.rounds,
        Path(args.out) / "macmodes.json",
        duration=args.duration,
        requests=args.requests,
        command=command.strip(),
    )
    cols, rows = doc["columns"], doc["rows"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
