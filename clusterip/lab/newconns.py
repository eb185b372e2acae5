"""New TCP connections in a loop, from many sources at once, each timed (client side).

    python -m clusterip.lab.newconns VIP PORT DURATION TIMEOUT SRC[,SRC...] [--workers N]
                                     [--pause S]

Each worker (one per source, or N spread over them) opens a connection from (src, any port),
sends one HTTP GET, reads the whole answer and records: src, sport, start (wall clock), took
(seconds), node (who answered, from X-Node or the body) and error (null, or "timeout",
"reset", ...). A handshake whose first SYN was lost takes the client's SYN retransmit time
(1 s, then 3 s): `took` shows it. `--pause`: each worker waits this long between two
connections (default 0: as fast as the servers answer). Prints "ready" when the workers
start, then after DURATION (or SIGTERM) one JSON list of records.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from clusterip.lab.probe import classify, http_node


def once(vip: str, port: int, src: str, timeout: float) -> dict[str, Any]:
    start, t0 = time.time(), time.monotonic()
    sport, node, error = None, None, None
    with socket.socket() as sock:
        try:
            sock.settimeout(timeout)
            sock.bind((src, 0))
            sport = sock.getsockname()[1]
            sock.connect((vip, port))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while node is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError("closed before a full answer")
                data += chunk
                node = http_node(data)
        except (OSError, EOFError, ValueError) as exc:
            error = classify(exc)
    took = time.monotonic() - t0
    return {"src": src, "sport": sport, "start": start, "took": took, "node": node, "error": error}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clusterip.lab.newconns")
    parser.add_argument("vip")
    parser.add_argument("port", type=int)
    parser.add_argument("duration", type=float)
    parser.add_argument("timeout", type=float)
    parser.add_argument("sources")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    sources = args.sources.split(",")
    workers = args.workers or len(sources)
    end = time.monotonic() + args.duration
    stop = threading.Event()
    out: list[dict[str, Any]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        n = 0
        while not stop.is_set() and time.monotonic() < end:
            rec = once(args.vip, args.port, sources[(i + n * workers) % len(sources)], args.timeout)
            n += 1
            with lock:
                out.append(rec)
            if args.pause:
                stop.wait(args.pause)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
