"""Running `clusterip agent` on the nodes of a lab: for tests, benchmarks and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from clusterip.lab.net import Lab
from clusterip.lab.netops import in_netns
from clusterip.reactor.control import NoAgent, request

KEY = "lab-shared-secret-0123456789abcdef\n"


def write_key(path: Path, key: str = KEY) -> Path:
    """The lab's shared secret, readable by its owner only (the agent refuses others)."""
    path.write_text(key)
    path.chmod(0o600)
    return path


def log_time(line: str) -> float:
    """The time of an agent's log line ("2026-11-30 14:17:13,686 ..."; 0: none), truncated to
    the millisecond as logging writes it."""
    try:
        whole = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        return whole + int(line[20:23]) / 1000
    except ValueError:
        return 0.0


class AgentError(AssertionError):
    """An agent did not do what a lab step expected (with the agents' log tails)."""


class Agents:
    """One `clusterip agent` per node (started, killed, restarted), logs kept for failures.

    Control requests (status, drain, weight, stop) go straight to the node's control socket
    from a thread in its namespace: no `clusterip` process to start for each.
    """

    def __init__(
        self,
        lab: Lab,
        keyfile: Path,
        *extra: str,
        vip: str | None = None,
        config: Path | None = None,
    ) -> None:
        """`vip`: the VIP to serve (default the lab's IPv4 VIP); `config`: a config file
        (`agent -c`, e.g. several VIPs) instead of --vip and --interface."""
        self.lab = lab
        self.keyfile = keyfile
        self.extra = list(extra)
        self.vip = vip or lab.topo.vip
        self.config = config
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        self.logs: dict[int, Path] = {}

    def start(
        self,
        k: int,
        *,
        keyfile: Path | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[Any]:
        lab = self.lab
        log = self.keyfile.parent / f"agent-n{k}.log"
        self.logs[k] = log
        argv = [sys.executable, "-m", "clusterip", "agent"]
        if self.config is not None:
            argv += ["-c", str(self.config)]
        else:
            argv += ["--vip", self.vip, "--interface", "eth0"]
        argv += ["--node-id", str(k)]
        argv += ["--key-file", str(keyfile or self.keyfile), *self.extra, *args]
        environ = {**os.environ, **env} if env else None
        with open(log, "a") as fh:
            fh.write(f"=== {time.time():.3f} start: {' '.join(argv[3:])}\n")
            fh.flush()
            proc = lab.spawn(lab.topo.node_ns(k), argv, stdout=fh, stderr=fh, env=environ)
        self.procs[k] = proc
        return proc

    def running(self, k: int) -> bool:
        return k in self.procs and self.procs[k].poll() is None

    def kill(self, k: int) -> tuple[float, float]:
        """SIGKILL; returns the wall-clock times of the kill and of the process being gone."""
        at = time.time()
        self.procs[k].kill()
        self.procs[k].wait(timeout=10)
        return at, time.time()

    def stop(self, k: int) -> int:
        """SIGTERM: a planned stop (the node serves on for a successor within the grace)."""
        self.procs[k].terminate()
        return self.procs[k].wait(timeout=15)

    def terminate(self, k: int) -> tuple[float, float]:
        """SIGTERM, as `stop`; returns the wall-clock times of the signal and of the exit."""
        at = time.time()
        self.stop(k)
        return at, time.time()

    def ask(self, k: int, line: str, timeout: float = 5.0) -> dict[str, Any]:
        """One control request to node k's agent; raises AgentError on an error reply."""
        ns = self.lab.topo.node_ns(k)
        try:
            reply = in_netns(ns, lambda: request(line, timeout=timeout))
        except (NoAgent, OSError) as exc:
            raise AgentError(f"n{k}: {line!r}: {exc}\n{self.tail()}") from None
        if "error" in reply:
            raise AgentError(f"n{k}: {line!r}: {reply['error']}")
        return reply

    def leave(self, k: int) -> int:
        """`clusterip stop --leave`: the buckets go to the others at once; exit status."""
        self.ask(k, "stop --leave")
        return self.procs[k].wait(timeout=15)

    def drain(self, k: int, timeout: float | None = None) -> None:
        self.ask(k, "drain" if timeout is None else f"drain {timeout:g}")

    def resume(self, k: int) -> None:
        self.ask(k, "resume")

    def weight(self, k: int, weight: int) -> None:
        self.ask(k, f"weight {weight}")

    def status(self, k: int) -> dict[str, Any]:
        return self.ask(k, "status")

    def vip_status(self, k: int, vip: str | None = None) -> dict[str, Any]:
        """The agent's report of its one VIP (or of `vip`, when it serves several)."""
        vips = self.status(k)["vips"]
        if vip is not None:
            vips = [v for v in vips if v["vip"] == vip]
        if len(vips) != 1:
            raise AgentError(f"n{k}: expected one VIP report, got {vips}")
        return vips[0]  # type: ignore[no-any-return]

    def owned(self, nodes: Iterable[int]) -> dict[int, frozenset[int]]:
        """The buckets each of `nodes` owns now (as its agent reports them)."""
        return {k: frozenset(self.vip_status(k)["owned"]) for k in nodes}

    def wait_for(
        self, cond: Callable[[], bool], what: str, timeout: float = 15.0, every: float = 0.05
    ) -> float:
        """Poll `cond` until true; returns the wall-clock time it first held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return time.time()
            except AgentError:
                pass
            time.sleep(every)
        raise AgentError(f"timed out waiting for {what}\n{self.tail()}")

    def wait_converged(
        self, nodes: list[int], timeout: float = 15.0, *, vip: str | None = None
    ) -> None:
        """Until every node in `nodes` is active and counts exactly the others as members,
        and together they own every bucket, each once."""
        last: Any = None

        def done() -> bool:
            nonlocal last
            views = {k: self.vip_status(k, vip) for k in nodes}
            ok = all(
                v.get("state") == "active"  # none: what a killed agent left, not yet replaced
                and sorted(m["id"] for m in v["members"] if m["counted"])
                == sorted(set(nodes) - {k})
                for k, v in views.items()
            )
            owned = [b for v in views.values() for b in v.get("owned", ())]
            last = {k: (v.get("state"), v.get("owned_count")) for k, v in views.items()}
            return ok and len(owned) == len(set(owned)) == views[nodes[0]]["buckets"]

        try:
            self.wait_for(done, "convergence", timeout, every=0.1)
        except AgentError:
            raise AgentError(f"agents did not converge: {last}\n{self.tail()}") from None

    def log_times(self, k: int, text: str, since: float = 0.0) -> list[float]:
        """Wall-clock times (ms precision) of node k's log lines containing `text`, from
        `since` on."""
        path = self.logs.get(k)
        lines = path.read_text().splitlines() if path is not None and path.exists() else []
        times = [log_time(line) for line in lines if text in line]
        return [t for t in times if t >= since]

    def tail(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- n{k}\n" + "\n".join(p.read_text().splitlines()[-lines:])
            for k, p in self.logs.items()
            if p.exists()
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def reset(self, nodes: Iterable[int] | None = None) -> None:
        """Every agent killed, and whatever they left removed (`clusterip down`): the nodes
        are as the lab built them, ready for the next cluster."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()
        argv = [sys.executable, "-m", "clusterip", "down"]
        for k in nodes if nodes is not None else self.lab.topo.node_indexes:
            done = self.lab.run(self.lab.topo.node_ns(k), argv, timeout=30)
            if done.returncode != 0:
                raise AgentError(f"n{k}: clusterip down: {done.stderr.strip()}")
