"""Client traffic for move and fault experiments, and what it saw, summarised.

Three kinds of clients run at once in the client namespace:
- *held*: long-lived TCP connections (clusterip.lab.conns), from client ports chosen by
  bucket, each checked every period; broken = reset, closed, wrong or stalled;
- *udp*: long-lived UDP flows (clusterip.lab.udpflows), also from chosen ports, every
  datagram logged with the nodes that answered it (none: lost; two: answered twice);
- *new*: new TCP connections in a loop from every client address (clusterip.lab.newconns),
  each timed: `took` shows a SYN retransmit (1 s) or a failure.

Pure parts (port choice, summaries) are separate from the processes, so a test or a benchmark
computes its figures the same way.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import VipConfig
from clusterip.hashing import flow_bucket
from clusterip.lab.conns import finish_conns, start_conns
from clusterip.lab.net import Lab

SYN_RETRANSMIT = 1.0  # the client's first SYN retransmit (TCP_TIMEOUT_INIT)
SLOW = SYN_RETRANSMIT + 0.5  # a new connection slower than this waited for two retransmits
UDP_PORT = 5300
# New connections per client address: one every 50 ms at most, about 800/s from 40 addresses:
# hundreds in the moved buckets during a move, and CPU left for the agents on a 2-core machine.
NEW_PAUSE = 0.05


def bucket_of(cfg: VipConfig, buckets: int, src: str, sport: int, dport: int) -> int:
    """The bucket (1-based) of a flow, as the kernel hashes it."""
    addr = ipaddress.IPv4Address(src)
    return flow_bucket(cfg.hashmode, cfg.seed, buckets, addr, sport, dport)


class PortPicker:
    """Client (address, port)s chosen by bucket, from ports below the ephemeral range that no
    earlier pick used (a closed connection's port lingers in TIME_WAIT)."""

    def __init__(self, sources: Sequence[str], first: int = 10000, last: int = 32000) -> None:
        self.sources = list(sources)
        self.next = first
        self.last = last

    def pick(
        self,
        cfg: VipConfig,
        buckets: int,
        dport: int,
        want: Mapping[str, tuple[Collection[int], int]],
    ) -> dict[str, list[str]]:
        """For each label, `count` "addr:port"s whose bucket is in its set (scanned in turn
        over the addresses, so the picks spread over them)."""
        left = {label: count for label, (_b, count) in want.items()}
        out: dict[str, list[str]] = {label: [] for label in want}
        while any(left.values()):
            if self.next > self.last:
                raise RuntimeError("client ports for chosen flows ran out")
            port = self.next
            self.next += 1
            for src in self.sources:
                b = bucket_of(cfg, buckets, src, port, dport)
                for label, (chosen, _n) in want.items():
                    if left[label] and b in chosen:
                        out[label].append(f"{src}:{port}")
                        left[label] -= 1
                        break
        return out


@dataclass
class Traffic:
    """The three clients, running; `finish()` stops them and returns what they saw."""

    lab: Lab
    vip: str | None = None  # another address than the lab's VIP (a baseline's)
    held: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    udp: subprocess.Popen[str] | None = None
    new: subprocess.Popen[str] | None = None
    started: float = 0.0
    closed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def hold(self, label: str, sources: list[str], *, http: bool, period: float = 0.2) -> None:
        """Long-lived connections from exactly these "addr:port"s (a group `label`, which
        `close(label)` can end by client choice)."""
        self.held[label] = start_conns(
            self.lab, len(sources), period=period, duration=300, http=http, sources=sources,
            vip=self.target,
        )  # fmt: skip

    @property
    def target(self) -> str:
        return self.vip or self.lab.topo.vip

    def close(self, label: str) -> list[dict[str, Any]]:
        """End group `label` by client choice; returns its report (`finish` includes it)."""
        self.closed[label] = finish_conns(self.held.pop(label), now=True)
        return self.closed[label]

    def flows(self, sessions: list[str], period: float = 0.1, duration: float = 300) -> None:
        argv = [sys.executable, "-m", "clusterip.lab.udpflows", self.target]
        argv += [str(UDP_PORT), str(period), str(duration), ",".join(sessions)]
        self.udp = self.lab.spawn(self.lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)
        _ready(self.udp, "udp flows")

    def connect(
        self,
        sources: Sequence[str],
        *,
        port: int = 80,
        timeout: float = 5.0,
        pause: float = NEW_PAUSE,
    ) -> None:
        """New connections in a loop from each of `sources`, `pause` s apart (per address)."""
        argv = [sys.executable, "-m", "clusterip.lab.newconns", self.target, str(port)]
        argv += ["300", str(timeout), ",".join(sources), "--pause", str(pause)]
        self.new = self.lab.spawn(self.lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)
        _ready(self.new, "new connections")
        self.started = time.time()

    def finish(self) -> Seen:
        seen = Seen()
        for proc in (self.new, self.udp):
            if proc is not None:
                proc.terminate()
        if self.new is not None:
            seen.new = json.loads(self.new.communicate(timeout=60)[0])
        if self.udp is not None:
            seen.udp = json.loads(self.udp.communicate(timeout=60)[0])
        for label in list(self.held):
            self.close(label)
        seen.held = dict(self.closed)
        return seen

    def kill(self) -> None:
        """Stop whatever still runs (after a failure), without reading it."""
        for proc in [*self.held.values(), self.udp, self.new]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{what} did not start: {line!r}")


@dataclass
class Seen:
    """Raw records: new connections, UDP flows, and long-lived connections per group."""

    new: list[dict[str, Any]] = field(default_factory=list)
    udp: list[dict[str, Any]] = field(default_factory=list)
    held: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


InBucket = Callable[[str, int], bool]  # (client address, client port) -> in the moved set


def new_summary(records: Iterable[dict[str, Any]], since: float, moved: InBucket) -> dict[str, Any]:
    """New connections started at or after `since`: all of them, and those of moved buckets."""
    recs = [r for r in records if r["start"] >= since]
    inside = [r for r in recs if r["sport"] is not None and moved(r["src"], r["sport"])]
    failed = [r for r in recs if r["error"]]
    return {
        "total": len(recs),
        "in_moved": len(inside),
        "failed": len(failed),
        "errors": dict(Counter(r["error"] for r in failed)),
        "max_wait_s": round(max((r["took"] for r in recs), default=0.0), 3),
        "retransmits": sum(1 for r in recs if r["took"] >= SYN_RETRANSMIT),
        "slow": sum(1 for r in recs if r["took"] > SLOW),
        "nodes_after": dict(Counter(r["node"] for r in inside if r["node"])),
    }


def held_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    recs = list(records)
    broken = [r for r in recs if r["broken"]]
    return {
        "total": len(recs),
        "broken": len(broken),
        "errors": dict(Counter(r["broken"]["error"] for r in broken)),
        "min_ok": min((r["ok"] for r in recs), default=0),
        "nodes": dict(Counter(r["node"] for r in recs)),
    }


def udp_summary(sessions: Iterable[dict[str, Any]], since: float = 0.0) -> dict[str, Any]:
    """Datagrams sent at or after `since`: answered twice, unanswered; sessions whose answers
    came from more than one node over the run."""
    items = list(sessions)
    doubles = missing = sent = switched = 0
    for s in items:
        log = [(t, nodes) for t, nodes in s["log"] if t >= since]
        sent += len(log)
        doubles += sum(1 for _t, nodes in log if len(nodes) > 1)
        missing += sum(1 for _t, nodes in log if not nodes)
        switched += len({n for _t, nodes in log for n in nodes}) > 1
    return {
        "sessions": len(items),
        "sent": sent,
        "doubles": doubles,
        "missing": missing,
        "switched": switched,
    }


def udp_gaps(sessions: Iterable[dict[str, Any]], since: float) -> list[float]:
    """Per session: the time from `since` to the first datagram sent after it that was
    answered exactly once, from which on every datagram was (inf: never)."""
    out = []
    for s in sessions:
        log = [(t, nodes) for t, nodes in s["log"] if t >= since]
        first = float("inf")
        for t, nodes in reversed(log):
            if len(nodes) != 1:
                break
            first = t
        # The last datagrams may be unanswered only because the client stopped listening.
        out.append(first - since)
    return out
