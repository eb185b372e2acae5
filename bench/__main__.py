"""`python -m bench`: run the data-plane benchmarks in a lab and write the report.

    python -m bench                 # everything (about 15 minutes on 2 cores)
    python -m bench --quick         # fewer rounds and kills, same figures, wider intervals
    python -m bench --only throughput --only evenness
    python -m bench --investigate all   # also the variants' cost per packet (bench/setups.py)
    python -m bench --only datapath --investigate all   # their cost per packet only
    python -m bench --report-only   # rewrite docs/ from bench/out/results.json
    python -m bench --only idlecpu --only flood   # the agent's own costs (their own labs)

Parts with their own labs and JSON files in --out: failover, falsealarm, rebalance, idlecpu,
flood, corecost (no lab: the pure core), partition, ipv6. A run of some parts only keeps the
other parts' figures of bench/out/results.json and of the JSON files already there.

Needs root (network namespaces), nginx, wrk, haproxy, curl, trafgen (netsniff-ng).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench import control, evenness, foreign, perpacket, prefilter, report, throughput
from bench.labrun import bench_lab, isolate_port, lab_inodes, prepare_client
from bench.servers import haproxy_conf, nginx_conf, start_haproxy, start_nginx
from bench.setups import DIRECTOR, LAB_NODES, SERVING, VARIANTS, live_setups, make_setups
from bench.sysinfo import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = (
    "throughput",
    "foreign",
    "evenness",
    "control",
    "datapath",
    "failover",
    "falsealarm",
    "rebalance",
    "prefilter",
    "xdp",
    "macmodes",
    "idlecpu",
    "flood",
    "corecost",
    "partition",
    "ipv6",
)
# Parts measured in the shared data-plane lab (the others build their own, or none).
LAB_PARTS = ("throughput", "foreign", "evenness", "control", "datapath", "prefilter")
CLIENTS = 100  # client addresses for the evenness sample (wrk uses the gateway address)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds and kills: wider intervals")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 2)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 20; quick 6)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--warmup", type=int, default=0, help="seconds of wrk before each run")
    p.add_argument(
        "--quiet",
        type=float,
        default=0.15,
        help="retry a run if other work used more than this share of the CPUs",
    )
    p.add_argument("--retries", type=int, default=1, help="retries of a run taken while busy")
    p.add_argument("--nice", type=int, default=0, help="nice value for nginx, haproxy and wrk")
    p.add_argument("--foreign-seconds", type=int, help="seconds per trafgen run (default 3)")
    p.add_argument("--foreign-rounds", type=int, help="rounds of the foreign-traffic phases")
    p.add_argument("--flows", type=int, default=10_000, help="flows for the evenness tables")
    p.add_argument("--per-source", type=int, help="lab sample: requests per client address")
    p.add_argument("--control-count", type=int, help="repetitions of each control-plane change")
    p.add_argument("--idle-nodes", type=int, nargs="+", default=[3, 16, 32], help="idlecpu: N")
    p.add_argument("--idle-seconds", type=float, help="idlecpu window (default 60; quick 10)")
    p.add_argument("--flood-rate", type=int, default=10_000, help="flood: forged per second")
    p.add_argument("--flood-seconds", type=float, help="flood: per phase (default 20; quick 5)")
    p.add_argument("--partitions", type=int, help="partition: per system (default 10; quick 4)")
    p.add_argument("--ipv6-rounds", type=int, help="ipv6: wrk rounds (default 10; quick 4)")
    p.add_argument("--ipv6-kills", type=int, help="ipv6: kills (default 10; quick 4)")
    p.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    p.add_argument(
        "--investigate",
        metavar="VARIANTS",
        default="",
        help=f"datapath variants, per packet: 'all' or some of {','.join(VARIANTS)}",
    )
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "out"), help="raw results")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="report directory")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --out")
    args = p.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or 2
    args.rounds = args.rounds or (6 if quick else 20)
    args.foreign_seconds = args.foreign_seconds or (2 if quick else 3)
    args.foreign_rounds = args.foreign_rounds or (2 if quick else 3)
    args.per_source = args.per_source or (2 if quick else 3)
    args.control_count = args.control_count or (5 if quick else 15)
    args.idle_seconds = args.idle_seconds or (10.0 if quick else 60.0)
    args.flood_seconds = args.flood_seconds or (5.0 if quick else 20.0)
    args.partitions = args.partitions or (4 if quick else 10)
    args.ipv6_rounds = args.ipv6_rounds or (4 if quick else 10)
    args.ipv6_kills = args.ipv6_kills or (4 if quick else 10)
    args.parts = tuple(args.only or PARTS)  # "datapath" runs only with --investigate
    inv = args.investigate.strip()
    args.variants = list(VARIANTS) if inv == "all" else [v for v in inv.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"bad variant {v!r}: allowed are all, {', '.join(VARIANTS)}")
    return args


def log(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    started = time.time()
    results: dict[str, Any] = {
        "version": 1,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python -m bench", *map(shlex.quote, argv)]),
        "params": {
            k: v for k, v in vars(args).items() if k not in ("out", "docs", "only", "command")
        },
    }
    if os.geteuid() != 0:
        sys.exit("python -m bench: needs root (it builds network namespaces)")
    if not set(args.parts) & set(LAB_PARTS):
        if "xdp" in args.parts:
            run_xdp(args, results)
        results["duration_s"] = round(time.time() - started, 1)
        return results
    with (
        tempfile.TemporaryDirectory(prefix="clusterip-bench-") as workdir,
        bench_lab(LAB_NODES, CLIENTS, log) as lab,
    ):
        isolate_port(lab, lab.topo.node_name(DIRECTOR))
        prepare_client(lab)
        prefix = ["nice", "-n", str(args.nice)] if args.nice else []
        start_nginx(lab, SERVING, workdir, prefix)
        start_haproxy(lab, DIRECTOR, SERVING, workdir, prefix)
        inodes = lab_inodes(lab)
        results["configs"] = {
            "nginx": nginx_conf("n1", "WORKDIR"),
            "haproxy": haproxy_conf(
                [lab.topo.node_addr(k) for k in SERVING], bind=lab.topo.node_addr(DIRECTOR)
            ),
        }
        if "throughput" in args.parts:
            log("throughput and latency (wrk against nginx)")
            setups = live_setups()
            params = throughput.WrkParams(
                duration=args.duration,
                threads=args.threads,
                connections=args.connections,
                warmup=args.warmup,
                nice=args.nice,
                quiet=args.quiet,
                retries=args.retries,
            )
            samples = throughput.measure(lab, setups, params, args.rounds, inodes, log)
            results["throughput"] = {
                "setups": [{"name": s.name, "title": s.title} for s in setups],
                "wrk": {m: params.argv("URL", m) for m in ("keepalive", "close")},
                "samples": samples,
                "analysis": throughput.analyze(samples, setups),
            }
        if "prefilter" in args.parts:
            log("the XDP pre-filter: VIP with it, VIP with nft alone, spread (wrk)")
            params = throughput.WrkParams(
                duration=args.duration,
                threads=args.threads,
                connections=args.connections,
                warmup=args.warmup,
                nice=args.nice,
                quiet=args.quiet,
                retries=args.retries,
            )
            samples = prefilter.measure(lab, params, args.rounds, inodes, log)
            results["prefilter"] = {"samples": samples, "analysis": prefilter.analyze(samples)}
        if args.variants and "datapath" in args.parts:
            log("datapath cost per packet, variant by variant (trafgen)")
            chosen = [s for s in make_setups(args.variants) if s.name not in ("direct", "haproxy")]
            results["perpacket"] = perpacket.measure(
                lab,
                chosen,
                workdir,
                seconds=args.foreign_seconds,
                rounds=args.foreign_rounds,
                lab_inodes=inodes,
                log=log,
                quiet=args.quiet,
                retries=args.retries,
            )
        if "foreign" in args.parts:
            log("foreign traffic (trafgen, one receiver at a time)")
            results["foreign"] = foreign.measure(
                lab,
                workdir,
                seconds=args.foreign_seconds,
                rounds=args.foreign_rounds,
                lab_inodes=inodes,
                log=log,
                quiet=args.quiet,
                retries=args.retries,
            )
        if "evenness" in args.parts:
            log("evenness (computed, and a sample in the lab)")
            seed = lab.topo.vip_config([1], total_nodes=len(SERVING)).seed
            results["evenness"] = {
                "seed": f"{seed:08x}",
                "flows": evenness.flows_table(seed, args.flows),
                "agent": evenness.agent_tables(seed, args.flows),
                "lab": evenness.lab_sample(lab, per_source=args.per_source, log=log),
                "lab_sources": CLIENTS,
            }
        if "control" in args.parts:
            log("control plane (one ownership change = one nft transaction)")
            results["control"] = control.measure(lab, count=args.control_count, log=log)
    if "xdp" in args.parts:
        run_xdp(args, results)
    results["duration_s"] = round(time.time() - started, 1)
    return results


def run_xdp(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from bench import xdp

    log("XDP per packet (frames injected like a NIC's)")
    rounds = 3 if args.quick else 7
    results["xdp"] = xdp.run(rounds=rounds, frames=1_000_000 if args.quick else 2_000_000, log=log)


def keep_previous(results: dict[str, Any], raw: str) -> dict[str, Any]:
    """The figures of the data-plane parts this run did not measure, from the previous
    results.json (if any), marked with the run they come from."""
    try:
        with open(raw) as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return results
    kept = [k for k in (*LAB_PARTS, "perpacket", "xdp", "configs") if k in old and k not in results]
    for k in kept:
        results[k] = old[k]
    if kept:
        results["kept_from"] = {k: old.get("started", "?") for k in kept}
    return results


def run_agent_benches(args: argparse.Namespace) -> None:
    """Failover and rebalancing: their own labs and JSON files, which the report reads."""
    from pathlib import Path

    from bench import failover, falsealarm, rebalance, vrrp

    out = Path(args.out)
    if "failover" in args.parts:
        log("failover: kill -9 an agent, again and again")
        failover.run(5 if args.quick else 20, out / "failover.json", log=log)
        log("failover baseline: keepalived VRRP, the master's link taken down")
        vrrp.run(3 if args.quick else 5, out / "vrrp.json", log=log)
    if "falsealarm" in args.parts:
        log("false alarms: idle, then wrk saturating the lab")
        falsealarm.run(10 if args.quick else 30, out / "falsealarm.json", log=log)
    if "rebalance" in args.parts:
        log("rebalancing: what each move costs clients, naive move vs clusterip")
        rebalance.run(rebalance.LISTENS, out / "rebalance.json", log=log)
    if "macmodes" in args.parts:
        from bench import macmodes

        log("MAC modes: frames at a non-member port per request, req/s beside multicast")
        rounds = 3 if args.quick else 10
        macmodes.run(rounds, out / "macmodes.json", duration=args.duration, log=log,
                     command=f"python -m bench.macmodes --rounds {rounds}")  # fmt: skip
    run_agent_costs(args, out)


def with_load(args: argparse.Namespace, path: Any, measure: Any) -> None:
    """Run `measure()` (which writes the JSON file `path`), then add to that file the machine's
    load average at the start and the end, how busy the CPUs were meanwhile, and the command
    of this run (`python -m bench ...`)."""
    from bench import procstat

    load0, tot0 = procstat.loadavg(), procstat.cpu_totals()
    measure()
    data = json.loads(path.read_text())
    data["load"] = {
        "loadavg": [load0, procstat.loadavg()],
        "machine_busy": round(procstat.busy_share(tot0, procstat.cpu_totals()), 3),
    }
    data["run_by"] = args.command
    path.write_text(json.dumps(data, indent=2) + "\n")


def run_agent_costs(args: argparse.Namespace, out: Any) -> None:
    """Idle CPU, a hostile flood, the pure core's cost, healed partitions, IPv6."""
    out.mkdir(parents=True, exist_ok=True)
    if "idlecpu" in args.parts:
        from bench import idlecpu

        path = out / "idlecpu.json"
        with_load(
            args, path, lambda: idlecpu.run(args.idle_nodes, args.idle_seconds, path, log=log)
        )
    if "flood" in args.parts:
        from bench import flood

        log("a hostile flood: forged heartbeats at one agent, beside it idle")
        path = out / "flood.json"
        with_load(
            args, path, lambda: flood.run(args.flood_rate, args.flood_seconds, False, path, log=log)
        )
    if "corecost" in args.parts:
        from bench import corecost

        log("the pure core: µs per received heartbeat, beside HMAC alone")
        path = out / "corecost.json"

        def core() -> None:
            cc = corecost.run()
            cc["command"] = "python -m bench.corecost --members 3 16 64 --seconds 2"
            path.write_text(json.dumps(cc, indent=2) + "\n")
            log(corecost.table(cc["rows"]))

        with_load(args, path, core)
    if "partition" in args.parts:
        from bench import partition

        log("partitions that heal: clusterip beside keepalived VRRP")
        path = out / "partition.json"
        with_load(args, path, lambda: partition.run(args.partitions, path, log=log))
    if "ipv6" in args.parts:
        from bench import ipv6

        log("IPv6 beside IPv4: throughput and failover")
        path = out / "ipv6.json"
        with_load(
            args, path, lambda: ipv6.run(args.ipv6_rounds, 3.0, args.ipv6_kills, path, log=log)
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.command = " ".join(["python -m bench", *map(shlex.quote, argv)])
    raw = os.path.join(args.out, "results.json")
    if args.report_only:
        with open(raw) as fh:
            results = json.load(fh)
    else:
        try:
            began = time.time()
            results = run(args, argv)
            run_agent_benches(args)
            results["duration_s"] = round(time.time() - began, 1)
        except KeyboardInterrupt:
            log("interrupted: the lab was torn down, no report written")
            return 130
        os.makedirs(args.out, exist_ok=True)
        results = keep_previous(results, raw)
        with open(raw, "w") as fh:
            json.dump(results, fh, indent=1)
        log(f"raw results: {os.path.relpath(raw, ROOT)}")
    written = report.write(results, args.docs, args.out)
    for path in written:
        log(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
