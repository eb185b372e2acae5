"""IPv6 beside IPv4: request rate through an IPv6 VIP and an IPv4 VIP of the same cluster, and
the failover time of an IPv6 VIP.

    python -m bench.ipv6 [--rounds 10] [--duration 3] [--kills 10] [--out bench/out/ipv6.json]

Throughput: a dual-stack lab (3 nodes, ULA addresses), nginx on every node listening on both
families, both VIPs up at once in static mode (node k of 3, sourceip-sourceport): the same
servers, the same switch, the same client. wrk loads each VIP in turn, keep-alive and one
request per connection, and, as the control that shows what the two kernels' stacks cost
apart from the cluster, node 1's own IPv4 and IPv6 addresses; every round measures all four,
starting from a different one, and each ratio is taken per round (back to back) and
summarized by its median with a 95% confidence interval (bench.stats), as bench.throughput
does.

Failover: a 3-node agent cluster for the IPv6 VIP (hashmode sourceip), 30 client addresses
making a new connection every ~50 ms; each kill -9's orphaned clients are timed from the kill
to their first answered request (bench.failover's method, on IPv6).

Returns (and writes) a dict; prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.failover import Feed, client_times, false_alarms, one_kill
from bench.labrun import CLIENT_SYSCTLS, lab_inodes, leftovers, new_name
from bench.servers import start_nginx
from bench.stats import paired_ratios, summarize
from bench.throughput import WrkParams, sample_once
from bench.wrk import MODES
from clusterip.core.defaults import INTERVAL_MS, TOLERANCE
from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from clusterip.lab.topo import LabTopo

CLIENTS = 30
# What each round measures: through each VIP, and (the control: the stacks' own difference,
# no cluster in the way) straight to node 1's own address of each family.
TARGETS = ("vip4", "vip6", "direct4", "direct6")
Log = Callable[[str], None]


def url(lab: Lab, target: str) -> str:
    host = {
        "vip4": lab.topo.vip,
        "vip6": f"[{lab.topo.vip6}]",
        "direct4": lab.topo.node_addr(1),
        "direct6": f"[{lab.topo.node_addr6(1)}]",
    }[target]
    return f"http://{host}/"


def up_both(lab: Lab) -> None:
    """Both VIPs, static, node k of 3 on node k: one `up -c` per node."""
    for k in lab.topo.node_indexes:
        conf = "".join(
            f'[[vip]]\nvip = "{v}"\ninterface = "eth0"\ntotal_nodes = {lab.topo.nodes}\n'
            f"local_node = [{k}]\n\n"
            for v in (lab.topo.vip, lab.topo.vip6)
        )
        argv = [sys.executable, "-m", "clusterip", "up", "-c", "/dev/stdin"]
        done = lab.run(lab.topo.node_ns(k), argv, timeout=30, input=conf)
        if done.returncode != 0:
            raise RuntimeError(f"up on n{k} failed: {done.stderr.strip()}")


def throughput(lab: Lab, rounds: int, params: WrkParams, log: Log) -> dict[str, Any]:
    inodes = lab_inodes(lab)
    samples: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for mode in MODES:
            order = TARGETS[rnd % 4 :] + TARGETS[: rnd % 4]
            line = []
            for name in order:
                target = url(lab, name)
                if params.warmup > 0:
                    warm = params.argv(target, mode, params.warmup)
                    lab.run(lab.topo.client_ns, warm, timeout=60)
                s = sample_once(lab, target, mode, params, inodes)
                samples.append({"round": rnd, "mode": mode, "target": name, **s})
                line.append(f"{name} {s['rps']:.0f}")
            log(f"  round {rnd + 1}/{rounds} {mode:<9} req/s: " + ", ".join(line))
    out: dict[str, Any] = {}
    for mode in MODES:

        def series(name: str, key: str, mode: str = mode) -> list[float]:
            rows = sorted(
                (s for s in samples if s["mode"] == mode and s["target"] == name),
                key=lambda s: s["round"],
            )
            return [float(s[key]) for s in rows]

        def ratio(num: str, den: str, mode: str = mode) -> dict[str, Any]:
            return summarize(
                paired_ratios(series(num, "rps", mode), series(den, "rps", mode))
            ).to_dict()

        out[mode] = {
            **{name: summarize(series(name, "rps")).to_dict() for name in TARGETS},
            "errors": {
                name: int(sum(series(name, "socket_errors")) + sum(series(name, "non_2xx")))
                for name in TARGETS
            },
            "ratio_ipv6_ipv4": ratio("vip6", "vip4"),
            "control_ipv6_ipv4_direct": ratio("direct6", "direct4"),
            "vip6_direct6": ratio("vip6", "direct6"),
            "vip4_direct4": ratio("vip4", "direct4"),
        }
    return {"modes": out, "samples": samples}


def start_load6(lab: Lab, duration: float) -> tuple[subprocess.Popen[str], Feed]:
    argv = [sys.executable, "-m", "clusterip.lab.load", "--vip", lab.topo.vip6]
    argv += ["--sources", lab.topo.client_range6(), "--duration", str(duration)]
    argv += ["--timeout", "0.1", "--pause", "0.05"]
    load = lab.spawn(lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)
    feed = Feed()
    threading.Thread(target=feed.read, args=(load,), daemon=True).start()
    return load, feed


def failover(lab: Lab, kills: int, tmp: Path, log: Log) -> dict[str, Any]:
    keyfile = write_key(tmp / "cluster.key")
    agents = Agents(lab, keyfile, "--hashmode", "sourceip", vip=lab.topo.vip6)
    nodes = list(lab.topo.node_indexes)
    results = []
    try:
        for k in nodes:
            agents.start(k)
        agents.wait_converged(nodes, timeout=20)
        load, feed = start_load6(lab, kills * 8 + 30)
        time.sleep(2.0)
        kill_log: list[tuple[int, float]] = []
        for i in range(kills):
            victim = 1 + i % 3
            kill_log.append((victim, time.time()))
            r = one_kill(lab, agents, feed, victim)
            log(
                f"  kill {i + 1}/{kills} of {r['victim']}: {r['recovered']}/{r['orphans']} "
                f"orphaned clients back, max {max(r['times'], default=0) * 1000:.0f} ms"
            )
            results.append(r)
            time.sleep(1.0)
        load.terminate()
        load.wait(timeout=10)
        alarms = false_alarms(agents, nodes, kill_log)
    finally:
        agents.stop_all()
    detections = [r["detected"] for r in results if r["detected"] is not None]
    return {
        "kills": kills,
        **client_times(results),
        "detection_ms": INTERVAL_MS * TOLERANCE,
        "detection_max_ms": round(max(detections) * 1000, 1) if detections else None,
        "false_alarms": alarms,
        "other_clients_failed_requests": sum(r["other_clients_failed_requests"] for r in results),
        "kills_detail": results,
    }


def run(
    rounds: int = 10,
    duration: float = 3.0,
    kills: int = 10,
    out: Path | None = Path("bench/out/ipv6.json"),
    log: Log = print,
) -> dict[str, Any]:
    params = WrkParams(duration=duration, threads=2, connections=32, warmup=1.0, nice=0)
    name = new_name()
    lab = Lab.build(LabTopo(name, 3, CLIENTS, ipv6=True), servers=False)
    log(f"lab {name}: 3 nodes, dual stack, {CLIENTS} client addresses per family")
    try:
        lab.ops.sysctls(lab.topo.client_ns, CLIENT_SYSCTLS)
        result: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="clusterip-ipv6-") as tmp:
            start_nginx(lab, list(lab.topo.node_indexes), tmp, ipv6=True)
            if rounds > 0:
                up_both(lab)
                log("throughput: wrk through the IPv4 VIP and the IPv6 VIP, interleaved")
                result["throughput"] = throughput(lab, rounds, params, log)
                for k in lab.topo.node_indexes:
                    argv = [sys.executable, "-m", "clusterip", "down"]
                    lab.run(lab.topo.node_ns(k), argv, timeout=30)
            if kills > 0:
                log("failover of the IPv6 VIP: kill -9 an agent, again and again")
                result["failover"] = failover(lab, kills, Path(tmp), log)
    finally:
        lab.teardown()
        if leftovers(name):
            log(f"WARNING: lab {name} left namespaces behind")
    result["command"] = (
        f"python -m bench.ipv6 --rounds {rounds} --duration {duration:g} --kills {kills}"
    )
    result["params"] = {"rounds": rounds, "duration_s": duration, "wrk": "-t2 -c32"}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    def fmt(r: dict[str, Any]) -> str:
        return f"{r['median']:.2f} [{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}]"

    lines = ["| what | IPv4 | IPv6 | IPv6 / IPv4 |", "|---|---|---|---|"]
    for mode, row in result.get("throughput", {}).get("modes", {}).items():
        n = row["ratio_ipv6_ipv4"]["n"]
        lines.append(
            f"| req/s through the VIP, {mode} (median of {n}) | {row['vip4']['median']:.0f} | "
            f"{row['vip6']['median']:.0f} | {fmt(row['ratio_ipv6_ipv4'])} |"
        )
        lines.append(
            f"| req/s to node 1 directly, {mode} (control) | {row['direct4']['median']:.0f} | "
            f"{row['direct6']['median']:.0f} | {fmt(row['control_ipv6_ipv4_direct'])} |"
        )
    f = result.get("failover")
    if f:
        lines.append(
            f"| IPv6 VIP: node lost -> its clients served again ({f['kills']} kills, "
            f"{f['recovered_clients']}/{f['orphaned_clients']} clients) | | p50 {f['p50_ms']} ms, "
            f"p99 {f['p99_ms']} ms, max {f['max_ms']} ms | detection {f['detection_ms']} ms |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.ipv6")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bench/out/ipv6.json"))
    args = ap.parse_args(argv)
    result = run(args.rounds, args.duration, args.kills, args.out)
    print(table(result))
    f = result.get("failover")
    return 0 if not f or f["recovered_clients"] == f["orphaned_clients"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
