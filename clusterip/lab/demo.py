"""`make demo`: the whole story on one machine, unattended, in about a minute and a half.

A 3-node cluster run by agents in the lab; clients on 50 addresses send requests all the time
(each a new connection; a client waits up to 2 s, as real ones wait for a lost SYN's
retransmit); a live view shows how many requests each node serves and how many buckets it
owns. Then: node 3 is killed (kill -9) and the survivors take over by themselves (failover
time shown); node 3 comes back and gets its share back; node 1's agent is restarted the way
`systemctl restart` does it (SIGTERM, then a new agent) and no request notices; node 2 drains
(no new connections) and resumes. Finally a summary, and a teardown that removes exactly what
was created. Only the kill may cost requests: the summary counts those in the 2 s after it
apart, and the demo fails if any other request failed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from clusterip.lab.net import Lab
from clusterip.lab.netops import in_netns
from clusterip.lab.topo import LabTopo
from clusterip.reactor.control import NoAgent, request

NODES = 3
CLIENTS = 50
WINDOW = 1.0  # seconds of requests the live rates are computed over
LOAD_SECONDS = 90
# A client waits this long for an answer: a SYN lost in a move's hand-over instant is sent
# again after 1 s. The demo used 0.2 s, and so counted those as failures (issue 10's "4 outside
# the kill window"): CLUSTERIP_DEMO_TIMEOUT=0.2 shows them again.
CLIENT_TIMEOUT = float(os.environ.get("CLUSTERIP_DEMO_TIMEOUT", "2.0"))
RETRANSMIT = 0.9  # a request this slow waited for a SYN retransmit
KILL_WINDOW = 2.0  # requests started this long after the kill -9 may fail


@dataclass
class Feed:
    """Requests as the load generator reports them, kept for the view and the summary."""

    recent: deque[tuple[float, str | None, str]] = field(default_factory=deque)
    totals: Counter[str] = field(default_factory=Counter)
    records: list[tuple[float, str, str | None, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, src: str, node: str | None, took: float) -> None:
        with self.lock:
            self.recent.append((t, node, src))
            self.totals[node or "failed"] += 1
            self.records.append((t, src, node, took))

    def rates(self, now: float) -> Counter[str]:
        with self.lock:
            while self.recent and self.recent[0][0] < now - WINDOW:
                self.recent.popleft()
            return Counter(n or "failed" for _, n, _ in self.recent)


def _read(proc: subprocess.Popen[str], feed: Feed) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        feed.add(d["t"], d["src"], d["node"], d.get("took", 0.0))


def _agent_status(lab: Lab, k: int) -> dict[str, Any] | None:
    try:
        return in_netns(lab.topo.node_ns(k), lambda: request("status", timeout=1.0))
    except (NoAgent, OSError):
        return None


class Demo:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.feed = Feed()
        self.log: list[str] = []
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        self.started = time.time()

    def say(self, text: str) -> None:
        self.log.append(f"[{time.time() - self.started:5.1f}s] {text}")

    def view(self, lab: Lab) -> Group:
        now = time.time()
        rates = self.feed.rates(now)
        table = Table(title=f"clusterip: VIP {lab.topo.vip}, {CLIENTS} client addresses")
        for col in ("node", "agent", "state", "buckets", "req/s", "served"):
            table.add_column(col, justify="left" if col in ("node", "state") else "right")
        for k in lab.topo.node_indexes:
            name = lab.topo.node_name(k)
            st = _agent_status(lab, k)
            vip = st["vips"][0] if st else None
            alive = k in self.procs and self.procs[k].poll() is None
            table.add_row(
                name,
                "running" if alive else "[red]dead[/red]",
                (vip["state"] + (" (draining)" if st and st["agent"]["draining"] else ""))
                if vip
                else "-",
                str(vip["owned_count"]) if vip else "0",
                f"{rates.get(name, 0) / WINDOW:.0f}",
                str(self.feed.totals.get(name, 0)),
            )
        table.add_row(
            "failed", "", "", "", f"{rates.get('failed', 0) / WINDOW:.0f}",
            str(self.feed.totals.get("failed", 0)),
        )  # fmt: skip
        return Group(table, Panel("\n".join(self.log[-8:]) or "starting", title="what happens"))

    def start_agent(self, lab: Lab, k: int, key: Path, logs: Path) -> None:
        argv = [sys.executable, "-m", "clusterip", "agent", "--vip", lab.topo.vip]
        argv += ["--interface", lab.topo.interface, "--node-id", str(k), "--key-file", str(key)]
        with open(logs / f"agent-n{k}.log", "a") as log:
            self.procs[k] = lab.spawn(lab.topo.node_ns(k), argv, stdout=log, stderr=log)

    def wait_for(self, lab: Lab, live: Live, cond: Callable[[], bool], limit: float) -> bool:
        end = time.time() + limit
        while time.time() < end:
            live.update(self.view(lab))
            if cond():
                return True
            time.sleep(0.25)
        return False

    def hold(self, lab: Lab, live: Live, seconds: float) -> None:
        self.wait_for(lab, live, lambda: False, seconds)

    def owned(self, lab: Lab, k: int) -> int:
        st = _agent_status(lab, k)
        return int(st["vips"][0]["owned_count"]) if st else 0

    def converged(self, lab: Lab, nodes: Sequence[int]) -> bool:
        counts = [self.owned(lab, k) for k in nodes]
        return sum(counts) == 4096 and max(counts) - min(counts) <= 1

    def failover_times(self, killed: float, victims: set[str]) -> list[float]:
        """Per client that lost its server: kill -> the end of its first request after it that
        needed no SYN retransmit (one sent in the second after the kill waits for its
        retransmit, which says when the client retried, not when the survivors took over)."""
        out = []
        for src in victims:
            after = [t for t, s, n, took in self.feed.records
                     if s == src and t - took > killed and n and took < RETRANSMIT]  # fmt: skip
            if after:
                out.append(min(after) - killed)
        return out

    def window(
        self, since: float, until: float, *, slow: bool = False
    ) -> list[tuple[float, str, str | None, float]]:
        """Requests that started in [since, until) (`slow`: those that waited for a SYN
        retransmit)."""
        return [
            r
            for r in self.feed.records
            if since <= r[0] - r[3] < until and (not slow or r[3] >= RETRANSMIT)
        ]


def run(argv: Sequence[str] = ()) -> int:
    console = Console()
    topo = LabTopo(f"demo{secrets.token_hex(2)}", NODES, CLIENTS)
    work = Path(tempfile.mkdtemp(prefix="clusterip-demo-"))
    key = work / "cluster.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    demo = Demo(console)
    console.rule("clusterip demo: one VIP, three nodes, no load balancer, no person in the loop")
    ok = True
    try:
        with Lab.build(topo) as lab:
            for k in topo.node_indexes:
                demo.start_agent(lab, k, key, work)
            load_argv = [sys.executable, "-m", "clusterip.lab.load", "--vip", topo.vip]
            load_argv += ["--sources", topo.client_range(), "--duration", str(LOAD_SECONDS)]
            load_argv += ["--pause", "0.2", "--timeout", str(CLIENT_TIMEOUT)]
            with Live(demo.view(lab), console=console, refresh_per_second=4) as live:
                demo.say("3 agents start: they find each other and split 4096 buckets")
                ok &= demo.wait_for(lab, live, lambda: demo.converged(lab, [1, 2, 3]), 20)
                demo.say(f"{CLIENTS} clients start: a new connection every ~0.2 s each")
                load = lab.spawn(topo.client_ns, load_argv, stdout=subprocess.PIPE, text=True)
                threading.Thread(target=_read, args=(load, demo.feed), daemon=True).start()
                demo.hold(lab, live, 5)
                before = {s for _t, s, n, _d in demo.feed.records[-600:] if n == "n3"}
                demo.say("kill -9 the agent of n3: its tables vanish with it")
                killed = time.time()
                demo.procs[3].kill()
                demo.procs[3].wait()
                ok &= demo.wait_for(lab, live, lambda: demo.converged(lab, [1, 2]), 10)
                demo.hold(lab, live, 2)
                times = demo.failover_times(killed, before)
                if times:
                    waited = len(demo.window(killed, killed + 1.0, slow=True))
                    demo.say(
                        f"survivors took over by themselves: {len(times)} clients of n3 served "
                        f"again after {1000 * sorted(times)[len(times) // 2]:.0f} ms (median); "
                        f"{waited} had sent a SYN in between and waited for its retransmit"
                    )
                demo.hold(lab, live, 3)
                demo.say("n3 comes back: it rejoins and gets a third back")
                demo.start_agent(lab, 3, key, work)
                ok &= demo.wait_for(lab, live, lambda: demo.converged(lab, [1, 2, 3]), 15)
                demo.hold(lab, live, 4)
                demo.say("restart n1's agent as systemctl does (SIGTERM, then a new one)")
                restart = time.time()
                demo.procs[1].terminate()  # a planned stop: its datapath serves on, alone
                demo.procs[1].wait()
                demo.hold(lab, live, 1)
                demo.start_agent(lab, 1, key, work)  # adopts the datapath where it stands
                ok &= demo.wait_for(lab, live, lambda: demo.converged(lab, [1, 2, 3]), 15)
                restarted = time.time()
                demo.hold(lab, live, 2)
                during = demo.window(restart, restarted)
                demo.say(
                    f"restart done in {restarted - restart:.1f} s: {len(during)} requests "
                    f"meanwhile, {sum(1 for r in during if r[2] is None)} failed, slowest "
                    f"{max((r[3] for r in during), default=0) * 1000:.0f} ms"
                )
                demo.hold(lab, live, 2)
                demo.say("drain n2: no new connections there, established ones stay")
                in_netns(topo.node_ns(2), lambda: request("drain"))
                ok &= demo.wait_for(lab, live, lambda: demo.owned(lab, 2) == 0, 10)
                demo.hold(lab, live, 5)
                demo.say("resume n2")
                in_netns(topo.node_ns(2), lambda: request("resume"))
                ok &= demo.wait_for(lab, live, lambda: demo.converged(lab, [1, 2, 3]), 10)
                demo.hold(lab, live, 4)
            load.terminate()
            load.wait(timeout=10)
            for proc in demo.procs.values():
                proc.terminate()
            for proc in demo.procs.values():
                proc.wait(timeout=10)
            ok &= summary(console, demo, killed, during)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.rule(f"torn down: lab {topo.name} removed ({time.time() - demo.started:.0f} s)")
    return 0 if ok else 1


def summary(
    console: Console,
    demo: Demo,
    killed: float,
    restart: list[tuple[float, str, str | None, float]],
) -> bool:
    """Print the summary; True when no request failed outside the 2 s after the kill -9."""
    records = demo.feed.records
    total = len(records)
    failed = [r for r in records if r[2] is None]
    in_window = [r for r in failed if killed <= r[0] - r[3] <= killed + KILL_WINDOW]
    outside = len(failed) - len(in_window)
    waited = sum(1 for r in records if r[2] and r[3] >= RETRANSMIT)
    served = ", ".join(f"{n} {c}" for n, c in sorted(demo.feed.totals.items()) if n != "failed")
    console.print(
        f"summary: {total} requests, {len(failed)} failed "
        f"({100 * len(failed) / max(total, 1):.2f}%): {len(in_window)} in the "
        f"{KILL_WINDOW:g} s after the kill -9, {outside} outside it; the planned restart: "
        f"{len(restart)} requests, {sum(1 for r in restart if r[2] is None)} failed; "
        f"{waited} requests waited for a SYN retransmit (a move's hand-over instant, or the "
        f"kill); served by: {served}"
    )
    if os.environ.get("CLUSTERIP_DEMO_DEBUG"):
        bins = Counter(int(r[0] - demo.started) for r in failed)
        console.print(f"failures per second of the demo: {sorted(bins.items())}")
    return outside == 0 and not any(r[2] is None for r in restart)


def main(argv: Sequence[str]) -> int:
    """Part one: CLUSTERIP's static cluster (`clusterip up`, `take`); part two: the agents."""
    from clusterip.lab import demo_static

    if "--agents-only" not in argv and demo_static.run(argv) != 0:
        return 1
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
