"""Client-side helpers that run inside a lab's client namespace (as `python -c`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from clusterip.lab.net import Lab

# Sends one datagram from each source and collects *every* reply for a while: a flow that two
# nodes accepted shows up as two answers.
UDP_ONCE = r"""
import json, socket, sys, time, selectors
vip, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sources = sys.argv[4].split(",")
sel = selectors.DefaultSelector()
socks = {}
for src in sources:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.setblocking(False)
    s.sendto(src.encode(), (vip, port))
    socks[s] = (src, s.getsockname()[1])
    sel.register(s, selectors.EVENT_READ)
answers = {f"{src}:{sport}": [] for src, sport in socks.values()}
end = time.monotonic() + wait
while time.monotonic() < end:
    for key, _ in sel.select(timeout=max(0.0, end - time.monotonic())):
        data, addr = key.fileobj.recvfrom(2048)
        src, sport = socks[key.fileobj]
        answers[f"{src}:{sport}"].append(data.decode().split()[0])
print(json.dumps(answers))
"""

# A long-lived TCP connection: reads lines on stdin, sends each, prints the echo.
ECHO_CLIENT = r"""
import socket, sys
vip, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((vip, port), timeout=5, source_address=(src, 0))
print("sport", s.getsockname()[1], flush=True)
f = s.makefile("rw")
for line in sys.stdin:
    try:
        f.write(line)
        f.flush()
        print(f.readline().strip() or "closed", flush=True)
    except OSError as exc:
        print("error", type(exc).__name__, flush=True)
"""


def udp_once(lab: Lab, sources: list[str], port: int = 5300, wait: float = 1.0) -> dict[str, Any]:
    argv = [sys.executable, "-c", UDP_ONCE, lab.topo.vip, str(port), str(wait), ",".join(sources)]
    done = lab.run(lab.topo.client_ns, argv, timeout=wait + 20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]
