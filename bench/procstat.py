"""Pure helpers of the agent benchmarks (idlecpu, flood): CPU time from /proc, the machine's
load, heartbeat gaps, and what an agent's log says changed. Nothing here needs root.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from clusterip.lab.agents import log_time

HZ = os.sysconf("SC_CLK_TCK")


def stat_ticks(text: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat (the command name, in
    parentheses, may hold spaces and parentheses: fields are counted after the last ')')."""
    fields = text.rsplit(")", 1)[1].split()
    # After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12.
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        return stat_ticks(fh.read()) / HZ


def percent_of_core(cpu_s: float, wall_s: float) -> float:
    """CPU seconds over a wall-clock window, as % of one core."""
    if wall_s <= 0:
        raise ValueError(f"bad window {wall_s!r} s: must be positive")
    return 100.0 * cpu_s / wall_s


def loadavg(text: str | None = None) -> dict[str, Any]:
    """/proc/loadavg as a dict: the 1, 5 and 15 minute averages and 'running/total'."""
    if text is None:
        with open("/proc/loadavg") as fh:
            text = fh.read()
    one, five, fifteen, tasks = text.split()[:4]
    return {"1m": float(one), "5m": float(five), "15m": float(fifteen), "tasks": tasks}


def load_text(load: dict[str, Any]) -> str:
    return f"{load['1m']:.2f} {load['5m']:.2f} {load['15m']:.2f}"


def cpu_totals(text: str | None = None) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the first line of /proc/stat (idle and iowait
    are not busy)."""
    if text is None:
        with open("/proc/stat") as fh:
            text = fh.readline()
    values = [int(v) for v in text.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest times are already in user and nice
    return total - idle, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all CPUs (0..1) that was busy between two `cpu_totals`."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total > 0 else 0.0


def median_max(values: Sequence[float]) -> dict[str, float]:
    if not values:
        raise ValueError("no values")
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def gaps(times: Iterable[float]) -> dict[str, Any]:
    """Arrival times of one sender's heartbeats -> how many, the largest and the 99th
    percentile gap between consecutive ones (ms; None with fewer than two)."""
    ts = sorted(times)
    diffs = sorted(b - a for a, b in itertools.pairwise(ts))
    if not diffs:
        return {"count": len(ts), "max_ms": None, "p99_ms": None}
    p99 = diffs[min(len(diffs) - 1, round(0.99 * (len(diffs) - 1)))]
    return {"count": len(ts), "max_ms": round(max(diffs) * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


# The agent's log lines for the core's events (clusterip.reactor.report.log_events).
_EVENTS = {
    "peer_down": re.compile(r": node \d+ down \("),
    "state_changes": re.compile(r": [A-Z_]+ -> [A-Z_]+ \("),
    "peer_up": re.compile(r": node \d+ up at "),
    "ownership_changes": re.compile(r": \d+ buckets now \("),
    "slow_steps": re.compile(r"a loop step took \d+ ms"),
}
ALARMS = ("peer_down", "state_changes", "peer_up", "ownership_changes")


@dataclass(frozen=True)
class LogEvents:
    counts: dict[str, int]
    lines: list[str]

    @property
    def false_alarms(self) -> int:
        """Anything membership did in a window where nothing happened: a peer declared down
        (or back up), a state change, buckets moving."""
        return sum(self.counts[k] for k in ALARMS)


def log_events(lines: Iterable[str], since: float, until: float | None = None) -> LogEvents:
    """Count the event lines of an agent's log stamped in [since, until]."""
    counts = dict.fromkeys(_EVENTS, 0)
    hit: list[str] = []
    for line in lines:
        t = log_time(line)
        if t < since or (until is not None and t > until):
            continue
        for name, rx in _EVENTS.items():
            if rx.search(line):
                counts[name] += 1
                if name in ALARMS:
                    hit.append(line)
                break
    return LogEvents(counts, hit)


def udp_counters(snmp: str) -> dict[str, int]:
    """The `Udp:` counters of /proc/net/snmp (InDatagrams, RcvbufErrors, ...)."""
    rows = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        raise ValueError("no Udp: lines in /proc/net/snmp")
    names, values = rows[0][1:], rows[1][1:]
    return {n: int(v) for n, v in zip(names, values, strict=True)}


def split_by_window(
    arrivals: dict[str, list[float]], start: float, end: float
) -> dict[str, list[float]]:
    """Each sender's arrival times inside [start, end]."""
    return {a: [t for t in ts if start <= t <= end] for a, ts in arrivals.items()}
