"""What a hostile flood costs an agent: forged heartbeats at 10,000/s, beside the same agent idle.

    python -m bench.flood [--rate 10000] [--seconds 20] [--group] [--quick] \
                          [--out bench/out/flood.json]

3 agents with default settings, converged, in a lab whose client namespace sends the flood
(clusterip.lab.forge: forged heartbeats of the kinds a stranger can make, in turn: signed with
another key, the cluster's heartbeat with a flipped MAC byte, and well-formed ones signed with
the right key for another configuration, a foreign fingerprint) to node 1's address at the
heartbeat port (with --group: to the heartbeat group, every agent). One run, two phases of
`seconds` each, back to back: idle, then the flood. Per phase:

- CPU of each agent (utime + stime, /proc/PID/stat), as % of one core: node 1 is the flooded
  one, the idle phase is its baseline;
- the largest and the 99th-percentile gap between consecutive heartbeats *of node 1* as its
  peers receive them: a listener on the heartbeat port in node 2's and node 3's namespaces
  (beside their agents) stamps every heartbeat from node 1's address;
- false alarms: peers declared down or up, state changes, bucket moves in any agent's log, and
  whether every agent owns what it owned before;
- the rate reached: what the forger handed to the kernel per second, what node 1's agent
  counted as refused per second, and UDP datagrams node 1's kernel dropped for a full socket
  buffer (/proc/net/snmp RcvbufErrors);
- the machine's load average and busy share.

Targets (issue 11): no false alarm; the flooded agent under one core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import procstat
from bench.labrun import bench_lab
from clusterip.core.defaults import INTERVAL_MS, TOLERANCE
from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from clusterip.reactor.transport import DEFAULT_GROUP, DEFAULT_PORT

KINDS = "bad-mac-other-key,bad-mac,foreign"
Log = Callable[[str], None]

# In a peer's namespace: the wall-clock arrival time of every heartbeat from `nodes`, as JSON.
LISTEN = r"""
import json, signal, socket, struct, sys, time
group, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
nodes = set(sys.argv[4].split(","))
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("", port))
mreq = struct.pack("4s4si", socket.inet_aton(group), b"\0" * 4, socket.if_nametoindex("eth0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(0.2)
print("ready", flush=True)
seen = {a: [] for a in nodes}
end = time.monotonic() + seconds
while not stop and time.monotonic() < end:
    try:
        _data, (addr, _p) = s.recvfrom(4096)
    except OSError:
        continue
    if addr in seen:
        seen[addr].append(time.time())
print(json.dumps(seen))
"""


def snmp_udp(lab: Lab, k: int) -> dict[str, int]:
    done = lab.run(lab.topo.node_ns(k), ["cat", "/proc/net/snmp"], timeout=10)
    return procstat.udp_counters(done.stdout)


def rejected(agents: Agents, k: int) -> int:
    return sum(agents.vip_status(k)["rejected"].values())


class Phase:
    """CPU of every agent (and of `extra` processes), the machine's load, over one window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.load0 = procstat.loadavg()
        self.tot0 = procstat.cpu_totals()
        self.t0 = time.time()
        self.m0 = time.monotonic()
        self.cpu0 = {n: procstat.cpu_seconds(p) for n, p in pids.items()}

    def end(self) -> dict[str, Any]:
        cpu1 = {n: procstat.cpu_seconds(p) for n, p in self.pids.items()}
        wall = time.monotonic() - self.m0
        return {
            "start": self.t0,
            "end": time.time(),
            "seconds": round(wall, 2),
            "cpu_percent": {
                n: round(procstat.percent_of_core(cpu1[n] - self.cpu0[n], wall), 2)
                for n in self.pids
            },
            "machine_busy": round(procstat.busy_share(self.tot0, procstat.cpu_totals()), 3),
            "loadavg": [self.load0, procstat.loadavg()],
        }


def flood_once(
    lab: Lab, agents: Agents, rate: int, seconds: float, group: bool, log: Log
) -> dict[str, Any]:
    nodes = list(lab.topo.node_indexes)
    n1 = lab.topo.node_addr(1)
    before = agents.owned(nodes)
    total = 2 * seconds + 15  # both phases, the forger's capture, margins
    listeners = {}
    for k in nodes[1:]:
        argv = [sys.executable, "-c", LISTEN, DEFAULT_GROUP, str(DEFAULT_PORT), str(total), n1]
        listeners[k] = lab.spawn(lab.topo.node_ns(k), argv, stdout=subprocess.PIPE, text=True)
    for p in listeners.values():
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    pids = {f"n{k}": agents.procs[k].pid for k in nodes}
    time.sleep(1.0)

    log(f"  idle: {seconds:g} s")
    phase = Phase(pids)
    time.sleep(seconds)
    idle = phase.end()

    argv = [sys.executable, "-m", "clusterip.lab.forge", lab.topo.vip, DEFAULT_GROUP]
    argv += [str(DEFAULT_PORT), str(agents.keyfile), str(rate), str(seconds), "--kinds", KINDS]
    if not group:
        argv += ["--to", n1]
    forger = lab.spawn(lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)
    assert forger.stdout is not None and forger.stdout.readline().strip() == "ready"
    log(f"  flood: {rate}/s for {seconds:g} s to {'the group' if group else n1}")
    rej0, udp0 = rejected(agents, 1), snmp_udp(lab, 1)
    phase = Phase({**pids, "forger": forger.pid})
    out = forger.stdout.read()  # EOF: it exited; a zombie's /proc/PID/stat keeps its times
    flood = phase.end()
    forger.wait(timeout=30)
    rej1, udp1 = rejected(agents, 1), snmp_udp(lab, 1)
    sent = json.loads(out)
    time.sleep(1.0)  # a false alarm the flood caused would show by now
    after = agents.owned(nodes)

    arrivals: dict[int, dict[str, list[float]]] = {}
    for k, p in listeners.items():
        p.terminate()
        text, _ = p.communicate(timeout=30)
        arrivals[k] = json.loads(text) if text.strip() else {}
    for ph in (idle, flood):
        ph["gaps_of_n1"] = {
            f"heard by n{k}": procstat.gaps(
                procstat.split_by_window(arr, ph["start"], ph["end"]).get(n1, [])
            )
            for k, arr in arrivals.items()
        }
    events = {k: procstat.log_events(agents.logs[k].read_text().splitlines(), idle["start"])
              for k in nodes}  # fmt: skip
    flood["forger"] = sent
    flood["refused_per_s"] = round((rej1 - rej0) / flood["seconds"])
    flood["udp_n1"] = {n: udp1[n] - udp0.get(n, 0) for n in ("InDatagrams", "RcvbufErrors")}
    return {
        "rate_asked": rate,
        "to": "group" if group else n1,
        "kinds": KINDS.split(","),
        "idle": idle,
        "flood": flood,
        "false_alarms": sum(e.false_alarms for e in events.values()),
        "alarm_lines": [line for e in events.values() for line in e.lines][:20],
        "slow_steps": sum(e.counts["slow_steps"] for e in events.values()),
        "owned_unchanged": before == after,
    }


def worst_gap(phase: dict[str, Any]) -> float | None:
    values = [g["max_ms"] for g in phase["gaps_of_n1"].values() if g["max_ms"] is not None]
    return max(values) if values else None


def p99_gap(phase: dict[str, Any]) -> float | None:
    values = [g["p99_ms"] for g in phase["gaps_of_n1"].values() if g["p99_ms"] is not None]
    return max(values) if values else None


COLUMNS = ["phase", "rate reached", "flooded agent's CPU", "peers' CPU (n2, n3)",
           "n1's heartbeats as its peers hear them: largest gap / p99", "machine busy",
           "load avg (start → end)"]  # fmt: skip


def rows(r: dict[str, Any]) -> list[list[str]]:
    out = []
    for name in ("idle", "flood"):
        ph = r[name]
        c = ph["cpu_percent"]
        if name == "flood":
            f = ph["forger"]
            reached = (f"{f['rate']:,}/s sent ({f['failed']} refused by the sender's kernel), "
                       f"{ph['refused_per_s']:,}/s refused by n1's agent, "
                       f"{ph['udp_n1']['RcvbufErrors']} dropped in n1's socket buffer")  # fmt: skip
        else:
            reached = "-"
        la = ph["loadavg"]
        out.append([
            name, reached, f"{c['n1']:.2f}%", f"{c['n2']:.2f}%, {c['n3']:.2f}%",
            f"{worst_gap(ph)} ms / {p99_gap(ph)} ms", f"{ph['machine_busy']:.0%}",
            f"{procstat.load_text(la[0])} → {procstat.load_text(la[1])}",
        ])  # fmt: skip
    return out


def verdict(r: dict[str, Any]) -> str:
    cpu = r["flood"]["cpu_percent"]["n1"]
    alarms = r["false_alarms"]
    return (
        f"False alarms: {alarms} (target 0: **{'met' if alarms == 0 else 'not met'}**); "
        f"buckets unchanged: {'yes' if r['owned_unchanged'] else '**no**'}; flooded agent "
        f"{cpu:.1f}% of a core (target under 100%: **{'met' if cpu < 100 else 'not met'}**). "
        f"A peer is declared dead after {INTERVAL_MS * TOLERANCE} ms without a heartbeat."
    )  # fmt: skip


def run(
    rate: int, seconds: float, group: bool, out: Path | None, log: Log = print, command: str = ""
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterip-flood-") as tmp:
        keyfile = write_key(Path(tmp) / "cluster.key")
        with bench_lab(3, 1, log) as lab:
            agents = Agents(lab, keyfile)
            try:
                for k in lab.topo.node_indexes:
                    agents.start(k)
                agents.wait_converged(list(lab.topo.node_indexes), timeout=30)
                r = flood_once(lab, agents, rate, seconds, group, log)
            finally:
                agents.stop_all()
    result = {
        "summary": (
            f"3 agents, default settings. Forged heartbeats ({', '.join(r['kinds'])}, in turn) "
            f"from the client namespace to {'the heartbeat group' if group else 'node 1'} at "
            f"{rate:,}/s for {seconds:g} s, beside {seconds:g} s idle just before, same run. "
            "CPU as % of one core (/proc/PID/stat); gaps measured on the wire by listeners in "
            "n2's and n3's namespaces. " + verdict(r)
        ),
        **r,
        "columns": COLUMNS,
        "rows": rows(r),
        "command": command
        or f"python -m bench.flood --rate {rate} --seconds {seconds:g}"
        + (" --group" if group else ""),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.flood")
    ap.add_argument("--rate", type=int, default=10_000, help="forged datagrams per second")
    ap.add_argument("--seconds", type=float, help="per phase (default 20; quick 5)")
    ap.add_argument("--group", action="store_true", help="flood the group (every agent)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/out/flood.json"))
    args = ap.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    r = run(args.rate, seconds, args.group, args.out)
    print("\n".join(" | ".join(row) for row in [r["columns"], *r["rows"]]))
    print(verdict(r))
    return 0 if r["false_alarms"] == 0 and r["owned_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
