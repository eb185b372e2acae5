"""Failover time: kill -9 an agent N times, measure how long its clients go unserved.

    python -m bench.failover [--kills 20] [--xdp auto,off] [--out bench/out/failover.json]

A 3-node agent cluster in the lab (hashmode sourceip, so each client address has one owner),
clients on 30 addresses requesting all the time (a new TCP connection every ~20 ms each). For
every kill: the orphaned clients are those whose last answer before the kill came from the
victim; each one's failover time runs from the kill to its first answered request after it.
Reported: p50, p99 and max over all orphaned clients of all kills, beside the configured
detection time (heartbeat interval x tolerance). The victim is restarted and the cluster left
to converge before the next kill. Run once per `--xdp` mode of the agents (default: the XDP
pre-filter as shipped, `auto`, then nft alone, `off`), in the same invocation; the JSON's top
level is the first mode's, `modes` has each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.labrun import bench_lab
from clusterip.config import ConfigError
from clusterip.core.defaults import INTERVAL_MS as DEFAULT_INTERVAL_MS
from clusterip.core.defaults import TOLERANCE as DEFAULT_TOLERANCE
from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from clusterip.xdp.spec import parse_cli_mode

CLIENTS = 30


class Feed:
    def __init__(self) -> None:
        self.records: list[tuple[float, str, str | None]] = []
        self.lock = threading.Lock()

    def read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            d = json.loads(line)
            with self.lock:
                self.records.append((d["t"], d["src"], d["node"]))

    def snapshot(self) -> list[tuple[float, str, str | None]]:
        with self.lock:
            return list(self.records)


def start_load(lab: Lab, vip: str, duration: float) -> tuple[subprocess.Popen[str], Feed]:
    """The clients: every address a new connection every ~50 ms (100 ms timeout), read live."""
    argv = [sys.executable, "-m", "clusterip.lab.load", "--vip", vip]
    argv += ["--sources", lab.topo.client_range(), "--duration", str(duration)]
    argv += ["--timeout", "0.1", "--pause", "0.05"]
    load = lab.spawn(lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)
    feed = Feed()
    threading.Thread(target=feed.read, args=(load,), daemon=True).start()
    return load, feed


def client_times(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over all kills: the orphaned clients, how many came back, and their p50/p99/max."""
    times = [t for r in results for t in r["times"]]

    def ms(value: float) -> float:
        return round(value * 1000, 1)

    return {
        "orphaned_clients": sum(r["orphans"] for r in results),
        "recovered_clients": sum(r["recovered"] for r in results),
        "p50_ms": ms(statistics.median(times)) if times else None,
        "p99_ms": ms(percentile(times, 0.99)) if times else None,
        "max_ms": ms(max(times)) if times else None,
    }


def write(out: Path, summary: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def down_times(agents: Agents, k: int, victim: int) -> list[float]:
    """Wall-clock times at which node k's agent logged `node VICTIM down (timeout)`."""
    out = []
    for line in agents.logs[k].read_text().splitlines():
        if f"node {victim} down (timeout)" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def false_alarms(agents: Agents, nodes: Sequence[int], kills: list[tuple[int, float]]) -> int:
    """`node X down (timeout)` lines that no kill of X in the 2 s before explains."""
    count = 0
    for k in nodes:
        for x in nodes:
            for t in down_times(agents, k, x):
                if not any(v == x and 0 <= t - at <= 2.0 for v, at in kills):
                    count += 1
    return count


def one_kill(lab: Lab, agents: Agents, feed: Feed, victim: int) -> dict[str, Any]:
    name = lab.topo.node_name(victim)
    before = feed.snapshot()
    last: dict[str, str | None] = {}
    for _t, src, node in before:
        if node:
            last[src] = node
    orphans = {s for s, n in last.items() if n == name}
    killed, _gone = agents.kill(victim)
    time.sleep(1.5)
    after = [r for r in feed.snapshot() if r[0] > killed]
    times = {}
    for src in orphans:
        served = [t for t, s, n in after if s == src and n]
        if served:
            times[src] = min(served) - killed
    failed_elsewhere = sum(1 for t, s, n in after if n is None and s not in orphans)
    detected = [
        t - killed
        for k in lab.topo.node_indexes
        if k != victim
        for t in down_times(agents, k, victim)
        if t > killed
    ]
    agents.start(victim)
    agents.wait_converged(list(lab.topo.node_indexes), timeout=20)
    return {
        "victim": name,
        "orphans": len(orphans),
        "recovered": len(times),
        "times": sorted(times.values()),
        "detected": min(detected) if detected else None,
        "other_clients_failed_requests": failed_elsewhere,
    }


XDP_MODES = ("auto", "off")


def run(
    kills: int, out: Path, log: Any = print, xdp_modes: Sequence[str] = XDP_MODES
) -> dict[str, Any]:
    """One run per XDP mode, side by side; written to `out` (the first mode's at the top)."""
    modes = {m: run_mode(kills, m, log) for m in xdp_modes}
    first = modes[xdp_modes[0]]
    summary = {**first, "modes": modes}
    summary["command"] = f"python -m bench.failover --kills {kills} --xdp {','.join(xdp_modes)}"
    write(out, summary)
    return summary


def run_mode(kills: int, xdp: str, log: Any = print) -> dict[str, Any]:
    detection_ms = DEFAULT_INTERVAL_MS * DEFAULT_TOLERANCE
    results = []
    with tempfile.TemporaryDirectory(prefix="clusterip-failover-") as tmp:
        keyfile = Path(tmp) / "cluster.key"
        write_key(keyfile)
        with bench_lab(3, CLIENTS, log) as lab:
            lab.start_servers()
            agents = Agents(lab, keyfile, "--hashmode", "sourceip", "--xdp", xdp)
            try:
                for k in lab.topo.node_indexes:
                    agents.start(k)
                agents.wait_converged(list(lab.topo.node_indexes), timeout=20)
                load, feed = start_load(lab, lab.topo.vip, kills * 8 + 30)
                time.sleep(2.0)
                kill_log: list[tuple[int, float]] = []
                for i in range(kills):
                    kill_log.append((1 + i % 3, time.time()))
                    r = one_kill(lab, agents, feed, 1 + i % 3)
                    log(
                        f"xdp {xdp}: kill {i + 1}/{kills} of {r['victim']}: "
                        f"{r['recovered']}/{r['orphans']} orphaned clients back, max "
                        f"{max(r['times'], default=0) * 1000:.0f} ms"
                    )
                    results.append(r)
                    time.sleep(1.0)
                load.terminate()
                load.wait(timeout=10)
                alarms = false_alarms(agents, list(lab.topo.node_indexes), kill_log)
            finally:
                agents.stop_all()
    detections = [r["detected"] for r in results if r["detected"] is not None]
    return {
        "xdp": xdp,
        "kills": kills,
        **client_times(results),
        "detection_ms": detection_ms,
        "other_clients_failed_requests": sum(r["other_clients_failed_requests"] for r in results),
        "detection_p50_ms": round(statistics.median(detections) * 1000, 1) if detections else None,
        "detection_max_ms": round(max(detections) * 1000, 1) if detections else None,
        "false_alarms": alarms,
        "summary": (
            f"Detection, from the kill to the first survivor's verdict: p50 "
            f"{round(statistics.median(detections) * 1000, 1) if detections else '-'} ms, max "
            f"{round(max(detections) * 1000, 1) if detections else '-'} ms (configured "
            f"{detection_ms} ms). False alarms during the run: {alarms}. The client side below "
            "adds the clients' retry granularity (a new connection every ~50 ms, 100 ms timeout)."
        ),
        "kills_detail": results,
    }


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.failover")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument(
        "--xdp",
        default=",".join(XDP_MODES),
        help="the agents' --xdp modes, one run each (comma-separated; default: auto,off)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/out/failover.json"))
    args = ap.parse_args(argv)
    try:
        modes = [parse_cli_mode(m) for m in args.xdp.split(",")]
    except ConfigError as exc:
        ap.error(f"--xdp {args.xdp!r}: {exc} (comma-separated)")
    summary = run(args.kills, args.out, xdp_modes=modes)
    for s in summary["modes"].values():
        print(
            f"xdp {s['xdp']}: failover over {s['kills']} kills, "
            f"{s['recovered_clients']}/{s['orphaned_clients']} orphaned clients: p50 "
            f"{s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms (detection "
            f"configured: {s['detection_ms']} ms, measured kill -> first survivor's verdict p50 "
            f"{s['detection_p50_ms']} ms, max {s['detection_max_ms']} ms); requests of other "
            f"clients that failed meanwhile: {s['other_clients_failed_requests']}; false alarms: "
            f"{s['false_alarms']}"
        )
    back = all(s["recovered_clients"] == s["orphaned_clients"] for s in summary["modes"].values())
    return 0 if back else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
