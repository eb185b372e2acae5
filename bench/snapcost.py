"""What a bucket move costs the agent's loop: the sock_diag snapshot and the nft transaction.

    sudo .venv/bin/python -m bench.snapcost [--conns 1000,5000,15000] [--rounds 5]

In a private pair of namespaces, N TCP connections to the VIP are held open; then, per N,
the median over ROUNDS of: clusterip.sockdiag.tcp_sockets (the snapshot), pyroute2's
DiagSocket dump of the same sockets (the library reading it would use), and
AgentDatapath.apply for a move that puts 1 of 16 buckets into draining (snapshot, render,
one nft transaction with N elements), with a state read (`start()`) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

VIP = "198.18.0.100"
SERVER = r"""
import resource, socket, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(4096); print("ready", flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""
CLIENT = r"""
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [socket.create_connection((sys.argv[1], 9000)) for _ in range(int(sys.argv[2]))]
print("held", flush=True)
sys.stdin.read()
"""
MEASURE = r"""
import ipaddress, json, socket, statistics, sys, time
from pyroute2 import DiagSocket
from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.link import NetlinkLink
from clusterip.nft import NftFirewall
from clusterip.reactor.datapath import AgentDatapath
from clusterip.sockdiag import tcp_sockets
vip, rounds = sys.argv[1], int(sys.argv[2])
def median(fn):
    out = []
    for _ in range(rounds):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000
n = len(tcp_sockets(ipaddress.IPv4Address(vip)))
def pyroute2_dump():
    with DiagSocket() as ds:
        ds.bind()
        [m for m in ds.get_sock_stats(family=socket.AF_INET) if m["idiag_src"] == vip]
cfg = config.build(vip=vip, interface="eth0", total_nodes=1)
dp = AgentDatapath(cfg, 16, NftFirewall(), NetlinkLink())
t = time.perf_counter(); dp.start(); start_ms = (time.perf_counter() - t) * 1000
every = Ownership.of(16, range(1, 17))
dp.apply(every)
moves = []
for _ in range(rounds):
    t = time.perf_counter(); dp.apply(every.release(3)); moves.append(time.perf_counter() - t)
    dp.apply(every)
dp.stop()
sockdiag_ms = median(lambda: tcp_sockets(ipaddress.IPv4Address(vip)))
print(json.dumps({"sockets": n, "sockdiag_ms": sockdiag_ms,
                  "pyroute2_ms": median(pyroute2_dump), "start_ms": start_ms,
                  "move_ms": statistics.median(moves) * 1000,
                  "snapshot_flows": dp.stats.last_snapshot_flows}))
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.snapcost")
    parser.add_argument("--conns", default="1000,5000,15000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    node, client = f"snapn-{secrets.token_hex(2)}", f"snapc-{secrets.token_hex(2)}"
    procs: list[subprocess.Popen[str]] = []
    try:
        for ns in (node, client):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "eth0", "netns", client)
        sh("ip", "-n", node, "addr", "add", "198.18.0.1/16", "dev", "eth0")
        sh("ip", "-n", node, "addr", "add", f"{VIP}/32", "dev", "eth0")
        sh("ip", "-n", client, "addr", "add", "198.18.1.1/16", "dev", "eth0")
        for ns in (node, client):
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        srv = subprocess.Popen(
            ["ip", "netns", "exec", node, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(srv)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        held = 0
        print("sockets  sock_diag (ms)  pyroute2 (ms)  move: snapshot + nft (ms)  start (ms)")
        for n in (int(x) for x in args.conns.split(",")):
            cli = subprocess.Popen(
                ["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, VIP, str(n - held)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(cli)
            assert cli.stdout is not None and cli.stdout.readline().strip() == "held"
            held = n
            time.sleep(0.5)
            argv = ["ip", "netns", "exec", node, sys.executable, "-c", MEASURE, VIP]
            done = subprocess.run([*argv, str(args.rounds)], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            r = json.loads(done.stdout)
            print(
                f"{r['sockets']:>7}  {r['sockdiag_ms']:>14.1f}  {r['pyroute2_ms']:>13.1f}"
                f"  {r['move_ms']:>25.1f}  {r['start_ms']:>10.1f}"
            )
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (node, client):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
