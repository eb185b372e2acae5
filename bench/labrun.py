"""One benchmark lab: unique name, always torn down (errors, Ctrl-C, SIGTERM, SIGHUP)."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from bench.setups import run_ok
from clusterip.lab.net import Lab
from clusterip.lab.topo import LabTopo

PREFIX = "b"
NETNS_DIR = "/run/netns"


def new_name() -> str:
    """'b' + 5 hex digits, not used by any namespace on this machine."""
    while True:
        name = PREFIX + secrets.token_hex(3)[:5]
        if not any(ns.startswith(f"{name}-") for ns in _netns()):
            return name


def _netns() -> list[str]:
    try:
        return os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []


_OWNER = os.getpid()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """In the benchmark process: unwind (so the lab is torn down). In a forked child (pyroute2
    forks helpers and ends them with SIGTERM): die as the default action would."""
    if os.getpid() != _OWNER:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def lab_inodes(lab: Lab) -> list[int]:
    return [int(r["ino"]) for r in lab.state()["namespaces"] if r.get("ino")]


def leftovers(name: str) -> list[str]:
    """Namespaces of lab `name`, or processes in them, still present (should be none)."""
    return sorted(ns for ns in _netns() if ns.startswith(f"{name}-"))


def isolate_port(lab: Lab, port: str) -> None:
    """Stop the switch flooding multicast frames (the cluster MAC) to `port`: node 4, the
    director, must not pay for copies of VIP frames in set-ups it takes no part in."""
    run_ok(
        lab,
        lab.topo.switch_ns,
        ["ip", "link", "set", "dev", port, "type", "bridge_slave", "mcast_flood", "off"],
    )


CLIENT_SYSCTLS = {
    # wrk cannot bind source addresses: all its connections come from one address. When the
    # client closes first (behind HAProxy) its TIME_WAIT entries would run out of ports.
    "net.ipv4.tcp_tw_reuse": "1",
    "net.ipv4.ip_local_port_range": "1024 65535",
}


def prepare_client(lab: Lab) -> None:
    lab.ops.sysctls(lab.topo.client_ns, CLIENT_SYSCTLS)


@contextmanager
def bench_lab(nodes: int, clients: int, log: Callable[[str], None]) -> Iterator[Lab]:
    name = new_name()
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    lab: Lab | None = None
    try:
        log(f"lab {name}: {nodes} nodes, {clients} client addresses")
        lab = Lab.build(LabTopo(name, nodes, clients), servers=False)
        yield lab
    finally:
        try:
            if lab is not None:
                lab.teardown()
            left = leftovers(name)
            if left:
                log(f"WARNING: lab {name} left namespaces behind: {', '.join(left)}")
            else:
                log(f"lab {name} torn down")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
