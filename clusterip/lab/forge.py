"""Hostile heartbeats at a steady rate, from a host of the lab (client side).

    python -m clusterip.lab.forge VIP GROUP PORT KEYFILE RATE SECONDS [--node-id 77] [--to ADDR]
                                  [--kinds replay,bad-mac-other-key,bad-mac,foreign,malformed]

Captures one real heartbeat of the cluster, then sends, in turn and RATE per second for
SECONDS (or until SIGTERM): that heartbeat replayed, heartbeats signed with another key (bad
MAC), heartbeats with the right key and another configuration (a foreign fingerprint), and
malformed ones (or only the `--kinds` given), to the group (every agent) or with `--to` to one
agent's address. Prints "ready" once it captured, and at the end one JSON object: sent (handed
to the kernel), failed (refused by it: a full socket buffer), the node id it replayed, the rate
reached (sent per second). Only the lab's network is involved (the group is
link-local).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence

from clusterip import config
from clusterip.core.fingerprint import fingerprint, key_id
from clusterip.core.wire import Heartbeat, peek

OTHER_KEY = b"not-the-cluster-key-at-all!"
KINDS = ("replay", "bad-mac-other-key", "bad-mac", "foreign", "malformed")  # as `forged` makes


def forged(vip: str, key: bytes, captured: bytes, node_id: int) -> list[bytes]:
    """The kinds of refused datagram, one of each: a replay, a bad MAC under another key and
    under ours (the captured heartbeat with its last byte changed), a foreign fingerprint
    under our key, a malformed one."""
    ip = ipaddress.IPv4Address(vip)
    ours = config.build(vip=vip, interface="eth0", total_nodes=1)
    other = config.build(vip=vip, interface="eth0", total_nodes=1, seed="1234")

    def heartbeat(cfg: config.VipConfig, k: bytes, seq: int) -> bytes:
        kid = key_id(k)
        fp = fingerprint(cfg, buckets=4096, key_id=kid)
        hb = Heartbeat(node_id=node_id, vip=ip, fingerprint=fp, key_id=kid, incarnation=12345,
                       seq=seq)  # fmt: skip
        return hb.pack(k)

    return [
        captured,
        heartbeat(ours, OTHER_KEY, 1),
        captured[:-1] + bytes([captured[-1] ^ 1]),
        heartbeat(other, key, 1),
        captured[:40] + b"\xff" * 10,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clusterip.lab.forge")
    ap.add_argument("vip")
    ap.add_argument("group")
    ap.add_argument("port", type=int)
    ap.add_argument("keyfile")
    ap.add_argument("rate", type=float)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--node-id", type=int, default=77)
    ap.add_argument("--to", help="one agent's address (default: the group, every agent)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = sorted(set(kinds) - set(KINDS))
    if bad or not kinds:
        ap.error(f"bad --kinds {args.kinds!r}: allowed are {', '.join(KINDS)}")
    with open(args.keyfile, "rb") as fh:
        key = fh.read().rstrip()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", args.port))
    mreq = struct.pack("4s4si", socket.inet_aton(args.group), b"\0" * 4,
                       socket.if_nametoindex("eth0"))  # fmt: skip
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.settimeout(5)
    captured = s.recv(4096)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreq)  # no need to read more
    every = dict(zip(KINDS, forged(args.vip, key, captured, args.node_id), strict=True))
    datagrams = [every[k] for k in kinds]
    print("ready", flush=True)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    began = time.monotonic()
    end = began + min(args.seconds, 600.0)
    sent = failed = 0
    batch = max(1, int(args.rate / 200))  # sent every 5 ms
    dest = (args.to or args.group, args.port)
    while not stop[0] and (now := time.monotonic()) < end:
        due = began + sent / args.rate
        if now < due:
            time.sleep(min(due - now, 0.005))
            continue
        for i in range(batch):
            try:
                s.sendto(datagrams[(sent + i) % len(datagrams)], dest)
            except OSError:  # a full socket buffer: that one is not sent
                failed += 1
        sent += batch
    took = time.monotonic() - began
    replayed = peek(captured).node_id
    ok = sent - failed
    print(json.dumps({"sent": ok, "failed": failed, "replayed_node": replayed,
                      "rate": round(ok / took)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
