"""Running `clusterip agent` on the nodes of a lab: for tests, benchmarks and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clusterip.lab.net import Lab

KEY = "lab-shared-secret-0123456789abcdef\n"


def write_key(path: Path, key: str = KEY) -> Path:
    """The lab's shared secret, readable by its owner only (the agent refuses others)."""
    path.write_text(key)
    path.chmod(0o600)
    return path


class Agents:
    """One `clusterip agent` per node (started, killed, restarted), logs kept for failures."""

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

    def start(self, k: int, *, keyfile: Path | None = None, args: tuple[str, ...] = ()) -> None:
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
        with open(log, "a") as fh:
            self.procs[k] = lab.spawn(lab.topo.node_ns(k), argv, stdout=fh, stderr=fh)

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

    def leave(self, k: int) -> int:
        """`clusterip stop --leave`: the buckets go to the others at once; exit status."""
        argv = [sys.executable, "-m", "clusterip", "stop", "--leave"]
        done = self.lab.run(self.lab.topo.node_ns(k), argv, timeout=30)
        assert done.returncode == 0, done.stderr
        return self.procs[k].wait(timeout=15)

    def status(self, k: int) -> dict[str, Any]:
        argv = [sys.executable, "-m", "clusterip", "status", "--json"]
        done = self.lab.run(self.lab.topo.node_ns(k), argv, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def vip_status(self, k: int, vip: str | None = None) -> dict[str, Any]:
        """The agent's report of its one VIP (or of `vip`, when it serves several)."""
        vips = self.status(k)["vips"]
        if vip is not None:
            vips = [v for v in vips if v["vip"] == vip]
        assert len(vips) == 1, vips
        return vips[0]  # type: ignore[no-any-return]

    def wait_converged(
        self, nodes: list[int], timeout: float = 15.0, *, vip: str | None = None
    ) -> None:
        """Until every node in `nodes` is active and counts exactly the others as members."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                views = {k: self.vip_status(k, vip) for k in nodes}
            except AssertionError as exc:
                last = exc
                time.sleep(0.2)
                continue
            ok = all(
                v.get("state") == "active"  # none: what a killed agent left, not yet replaced
                and sorted(m["id"] for m in v["members"] if m["counted"])
                == sorted(set(nodes) - {k})
                for k, v in views.items()
            )
            total = sum(v.get("owned_count", 0) for v in views.values())
            if ok and total == views[nodes[0]]["buckets"]:
                return
            last = {k: (v.get("state"), v.get("owned_count")) for k, v in views.items()}
            time.sleep(0.2)
        raise AssertionError(f"agents did not converge: {last}\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(
            f"--- n{k}\n" + "\n".join(p.read_text().splitlines()[-15:])
            for k, p in self.logs.items()
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
