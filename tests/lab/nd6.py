"""IPv6 helpers for lab tests: ND captures, crafted ND and ICMPv6 packets, kernel counters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from clusterip.lab.net import Lab

# Captures every NS and NA on eth0 for a while (started before, stopped after, the traffic it
# must see); prints one JSON object per message (clusterip.nd.parse).
CAPTURE = r"""
import json, socket, sys, time
from clusterip import nd
dur = float(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind(("eth0", 0))
s.settimeout(0.05)
print("ready", flush=True)
end = time.time() + dur
while time.time() < end:
    try:
        frame = s.recv(4096)
    except socket.timeout:
        continue
    msg = nd.parse(frame)
    if msg is not None:
        print(json.dumps(msg), flush=True)
"""

# A unicast Neighbor Solicitation for the VIP, sent to the cluster MAC as a neighbour's
# reachability probe is (RFC 4861 §7.3.1), from the client's gateway address.
UNICAST_NS = r"""
import ipaddress, socket, struct, sys
from clusterip import nd
src, vip, own_mac, cluster_mac = (sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
src, vip = ipaddress.IPv6Address(src), ipaddress.IPv6Address(vip)
body = struct.pack("!BBH4x", nd.NS, 0, 0) + vip.packed
body += struct.pack("!BB", nd.OPT_SLLA, 1) + nd.mac_bytes(own_mac)
cks = nd.checksum(src, vip, body)
body = body[:2] + struct.pack("!H", cks) + body[4:]
ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src.packed + vip.packed
frame = nd.mac_bytes(cluster_mac) + nd.mac_bytes(own_mac) + struct.pack("!H", 0x86DD) + ip6 + body
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind(("eth0", 0x86DD))
s.send(frame)
"""

# ICMPv6 errors to the VIP about a UDP flow VIP:5300 -> CLIENT:PORT, as a router on the path
# would send them (from the client's gateway address; the kernel fills the checksum).
ICMP_ERRORS = r"""
import ipaddress, socket, struct, sys
src, vip, client, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
inner_udp = struct.pack("!HHHH", 5300, port, 8 + 32, 0) + b"x" * 32
inner = struct.pack("!IHBB", 6 << 28, len(inner_udp), 17, 64)
inner += ipaddress.IPv6Address(vip).packed + ipaddress.IPv6Address(client).packed + inner_udp
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.bind((src, 0))
# destination unreachable (port), packet too big (1280), time exceeded, parameter problem
for kind, code, word in ((1, 4, 0), (2, 0, 1280), (3, 0, 0), (4, 0, 40)):
    s.sendto(struct.pack("!BBHI", kind, code, 0, word) + inner, (vip, 0))
"""

ICMP_COUNTERS = ("Icmp6InDestUnreachs", "Icmp6InPktTooBigs", "Icmp6InTimeExcds",
                 "Icmp6InParmProblems")  # fmt: skip


def start_capture(lab: Lab, host: str, seconds: float) -> subprocess.Popen[str]:
    proc = lab.spawn(
        lab.ns(host),
        [sys.executable, "-u", "-c", CAPTURE, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finish_capture(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, _ = proc.communicate(timeout=60)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def about(msgs: list[dict[str, Any]], vip: str) -> list[dict[str, Any]]:
    """NAs whose target is the VIP and NSs sent from it."""
    return [
        m
        for m in msgs
        if (m["type"] == "NA" and m["target"] == vip) or (m["type"] == "NS" and m["src"] == vip)
    ]


def snmp6(lab: Lab, host: str) -> dict[str, int]:
    done = lab.run(lab.ns(host), ["cat", "/proc/net/snmp6"], timeout=10)
    return {k: int(v) for k, v in (line.split() for line in done.stdout.splitlines())}


def run_py(lab: Lab, host: str, script: str, *args: str) -> str:
    done = lab.run(lab.ns(host), [sys.executable, "-c", script, *args], timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def solicit_from_vip(lab: Lab, k: int, vip: str, to: str) -> None:
    """Make node k solicit a neighbour from the VIP: forget its neighbours, then send a
    datagram from the VIP (the kernel solicits the next hop from the packet's source)."""
    ns = lab.topo.node_ns(k)
    lab.run(ns, ["ip", "-6", "neigh", "flush", "dev", "eth0"], timeout=10)
    send = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.bind((sys.argv[1], 0))\n"
        "s.sendto(b'hello', (sys.argv[2], 9))\n"
    )
    run_py(lab, lab.topo.node_name(k), send, vip, to)
    time.sleep(0.2)
