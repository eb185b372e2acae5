"""False alarms on a loaded machine: agents with default timing while wrk saturates both cores.

    python -m bench.falsealarm [--seconds 30] [--out bench/out/falsealarm.json]

Side by side in one run: the same 3-agent cluster for the same time, first idle, then with
wrk (2 threads, 64 connections) hammering the VIP, served by the lab's Python HTTP servers on
every node: the CPUs are busy with clients, servers and every packet flooded to 3 nodes.
Reported per phase: heartbeat timeouts of live nodes (false alarms; should be 0) and the
largest gap between two heartbeats of one node as a listener on the segment saw it, beside the
configured detection time.
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

from bench.failover import down_times
from bench.labrun import bench_lab
from clusterip.core.defaults import INTERVAL_MS as DEFAULT_INTERVAL_MS
from clusterip.core.defaults import TOLERANCE as DEFAULT_TOLERANCE
from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from clusterip.reactor.transport import DEFAULT_GROUP, DEFAULT_PORT

LISTEN = r"""
import json, socket, struct, sys, time
from clusterip.core.wire import peek
group, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = struct.pack("4s4si", socket.inet_aton(group), b"\0" * 4, socket.if_nametoindex("eth0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(0.5)
last, worst = {}, 0.0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data = s.recv(4096)
    except OSError:
        continue
    now, node = time.monotonic(), peek(data).node_id
    if node in last:
        worst = max(worst, now - last[node])
    last[node] = now
print(json.dumps({"max_gap_ms": round(worst * 1000, 1)}))
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(lab: Lab, agents: Agents, seconds: float, loaded: bool) -> dict[str, Any]:
    started = time.time()
    cpu0 = {k: cpu_seconds(p.pid) for k, p in agents.procs.items()}
    listen = [sys.executable, "-c", LISTEN, DEFAULT_GROUP, str(DEFAULT_PORT), str(seconds)]
    listener = lab.spawn(lab.topo.client_ns, listen, stdout=-1, text=True)
    wrk = None
    if loaded:
        argv = ["wrk", "-t2", "-c64", f"-d{int(seconds)}s", f"http://{lab.topo.vip}/"]
        wrk = lab.spawn(lab.topo.client_ns, argv, stdout=-1, text=True)
    out, _ = listener.communicate(timeout=seconds + 30)
    requests = None
    if wrk is not None:
        text, _ = wrk.communicate(timeout=seconds + 30)
        for line in text.splitlines():
            if "requests in" in line:
                requests = int(line.split()[0])
    alarms = sum(
        1
        for k in lab.topo.node_indexes
        for x in lab.topo.node_indexes
        for t in down_times(agents, k, x)
        if t >= started
    )
    cpu = max(cpu_seconds(p.pid) - cpu0[k] for k, p in agents.procs.items())
    elapsed = time.time() - started
    return {
        "false_alarms": alarms,
        "wrk_requests": requests,
        "agent_cpu_percent": round(100 * cpu / elapsed, 2),
        **json.loads(out),
    }


def run(seconds: float, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterip-falsealarm-") as tmp:
        keyfile = Path(tmp) / "cluster.key"
        write_key(keyfile)
        with bench_lab(3, 10, log) as lab:
            lab.start_servers()
            agents = Agents(lab, keyfile)
            try:
                for k in lab.topo.node_indexes:
                    agents.start(k)
                agents.wait_converged(list(lab.topo.node_indexes), timeout=20)
                idle = phase(lab, agents, seconds, loaded=False)
                log(f"idle: {idle}")
                loaded = phase(lab, agents, seconds, loaded=True)
                log(f"loaded: {loaded}")
            finally:
                agents.stop_all()
    phases = {"idle": idle, "loaded": loaded}
    result: dict[str, Any] = {
        "seconds": seconds,
        "detection_ms": DEFAULT_INTERVAL_MS * DEFAULT_TOLERANCE,
        "idle": idle,
        "loaded": loaded,
        "command": f"python -m bench.falsealarm --seconds {seconds:g}",
    }
    result["columns"] = [
        "phase",
        "false alarms",
        "largest heartbeat gap",
        "dead after",
        "busiest agent's CPU",
        "wrk requests",
    ]
    result["rows"] = [
        [
            name,
            p["false_alarms"],
            f"{p['max_gap_ms']} ms",
            f"{result['detection_ms']} ms",
            f"{p['agent_cpu_percent']}%",
            p["wrk_requests"] or "-",
        ]
        for name, p in phases.items()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.falsealarm")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("bench/out/falsealarm.json"))
    args = ap.parse_args(argv)
    r = run(args.seconds, args.out)
    for name in ("idle", "loaded"):
        p = r[name]
        print(
            f"{name}: {p['false_alarms']} false alarms in {r['seconds']:g} s, largest heartbeat "
            f"gap {p['max_gap_ms']} ms (a node is dead after {r['detection_ms']} ms)"
            + (f", wrk {p['wrk_requests']} requests" if p["wrk_requests"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
