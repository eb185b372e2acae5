"""A steady UDP probe of new flows: who answers each datagram, with its send time (client side).

    python -m clusterip.lab.udpprobe VIP PORT INTERVAL DURATION SRC[,SRC...] [--wait 0.3]

Every INTERVAL seconds a datagram leaves from a new socket (the next source address in turn,
a port the kernel picks): each is a new flow, hashed to whoever owns its bucket *now*, so the
probe sees ownership change from one datagram to the next. Every reply within --wait seconds
is kept. Prints "ready", then after DURATION (or SIGTERM) one JSON list of
[sent at (wall clock), source, port, [nodes that answered]].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clusterip.lab.udpprobe")
    ap.add_argument("vip")
    ap.add_argument("port", type=int)
    ap.add_argument("interval", type=float)
    ap.add_argument("duration", type=float)
    ap.add_argument("sources")
    ap.add_argument("--wait", type=float, default=0.3)
    args = ap.parse_args(argv)
    sources = args.sources.split(",")
    sel = selectors.DefaultSelector()
    log: list[list[object]] = []
    open_: dict[socket.socket, tuple[int, float]] = {}  # socket -> (log index, close at)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    print("ready", flush=True)
    began = time.time()
    end = began + min(args.duration, 600.0)
    sent = 0
    while True:
        now = time.time()
        if stop[0]:
            end = min(end, now)
        if now >= end and not open_:
            break
        while now < end and began + sent * args.interval <= now:
            src = sources[sent % len(sources)]
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((src, 0))
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.sendto(b"probe", (args.vip, args.port))
            log.append([round(time.time(), 4), src, sock.getsockname()[1], []])
            open_[sock] = (len(log) - 1, now + args.wait)
            sel.register(sock, selectors.EVENT_READ, sock)
            sent += 1
        for key, _ in sel.select(timeout=0.001):
            ready: socket.socket = key.data
            with contextlib.suppress(OSError):
                while True:
                    data = ready.recv(2048)
                    nodes = log[open_[ready][0]][3]
                    assert isinstance(nodes, list)
                    nodes.append(data.decode(errors="replace").split()[0])
        for sock, (_i, close_at) in list(open_.items()):
            if now >= close_at:
                sel.unregister(sock)
                sock.close()
                del open_[sock]
    print(json.dumps(log), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
