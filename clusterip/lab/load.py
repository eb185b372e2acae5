"""Continuous client load, one JSON line per finished request (run in the client namespace).

    python -m clusterip.lab.load --vip 198.18.0.100 --sources 198.18.1.1-198.18.1.50 \\
        --duration 30 [--port 80] [--timeout 0.2] [--pause 0.05]

Every source address loops on its own thread: a new TCP connection, one HTTP GET, the node's
name from the answer. Lines: {"t": wall clock at the end, "src": ..., "node": "n2" | null,
"error": null | "timeout" | ..., "took": seconds}. Bounded in time; targets only the lab's network.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Sequence

from clusterip.lab.probe import parse_sources
from clusterip.lab.topo import in_lab_net

MAX_DURATION = 600.0


def _request(vip: str, port: int, src: str, timeout: float) -> tuple[str | None, str | None]:
    """(node, error) of one request."""
    sock = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET)
    sock.settimeout(timeout)
    try:
        sock.bind((src, 0))
        sock.connect((vip, port))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
        return body or None, None if body else "empty"
    except TimeoutError:
        return None, "timeout"
    except ConnectionResetError:
        return None, "reset"
    except OSError as exc:
        return None, type(exc).__name__
    finally:
        sock.close()


def run(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="clusterip.lab.load")
    ap.add_argument("--vip", required=True)
    ap.add_argument("--sources", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--timeout", type=float, default=0.2)
    ap.add_argument("--pause", type=float, default=0.05)
    args = ap.parse_args(argv)
    vip = in_lab_net(args.vip, "VIP")
    sources = parse_sources(args.sources)
    duration = min(max(args.duration, 0.0), MAX_DURATION)
    end = time.time() + duration
    lock = threading.Lock()

    def worker(src: str) -> None:
        while time.time() < end:
            began = time.monotonic()
            node, error = _request(vip, args.port, src, args.timeout)
            took = round(time.monotonic() - began, 4)
            line = json.dumps(
                {"t": time.time(), "src": src, "node": node, "error": error, "took": took}
            )
            with lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            time.sleep(args.pause)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 10)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
