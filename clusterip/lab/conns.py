"""Long-lived TCP connections to the lab's echo service, checked every period (client side).

    python -c SCRIPT VIP PORT N PERIOD DURATION SRC[:SPORT][,...] [echo|http]

Each connection sends a line every PERIOD seconds and checks that the echo comes back from
the same node with the same text; or, with `http`, sends a keep-alive GET and checks that the
answer names the same node (for nginx and HAProxy, which do not echo). Prints "ready" once
all N are connected, then, after DURATION (or SIGTERM), one JSON list: per connection src,
sport, node, sent, ok, broken (null or {"error", "at"}). Bounded in time; talks only to the
VIP it is given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from clusterip.lab.net import Lab

SCRIPT = r"""
import json, selectors, signal, socket, sys, time
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
period, duration = float(sys.argv[4]), float(sys.argv[5])
sources = sys.argv[6].split(",")
http = sys.argv[7:] == ["http"]
GET = b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n"
def answer(buf):  # (node, rest) of the first complete HTTP answer in buf, or (None, buf)
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return None, buf
    fields = dict(l.split(b":", 1) for l in head.split(b"\r\n")[1:] if b":" in l)
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    length = int(fields.get(b"content-length", b"0"))
    if len(body) < length:
        return None, buf
    return (fields.get(b"x-node") or body[:length].strip()).decode(), body[length:]
sel = selectors.DefaultSelector()
conns = []
for i in range(n):
    src, _, sport = sources[i % len(sources)].partition(":")
    s = socket.create_connection((vip, port), timeout=5, source_address=(src, int(sport or 0)))
    if http:
        s.sendall(GET)
        buf, node = b"", None
        while node is None:
            buf += s.recv(65536)
            node, buf = answer(buf)
    else:
        s.sendall(b"hello\n")
        f = s.makefile("rb")
        node = f.readline().split()[0].decode()
    s.setblocking(False)
    c = {"src": src, "sport": s.getsockname()[1], "node": node, "sent": 0, "ok": 0,
         "broken": None, "buf": b"", "sock": s, "due": time.time() + (i % 10) * period / 10}
    conns.append(c)
    sel.register(s, selectors.EVENT_READ, c)
print("ready", flush=True)
end = time.time() + duration
def stop(*_):
    global end
    end = 0.0
signal.signal(signal.SIGTERM, stop)
def breaks(c, why):
    if c["broken"] is None:
        c["broken"] = {"error": why, "at": time.time()}
        sel.unregister(c["sock"])
        c["sock"].close()
while time.time() < end:
    now = time.time()
    for c in conns:
        if c["broken"] is None and now >= c["due"]:
            if c["sent"] - c["ok"] > 10:
                breaks(c, "stalled")
                continue
            c["sent"] += 1
            try:
                c["sock"].send(GET if http else f"{c['sent']}\n".encode())
            except OSError as exc:
                breaks(c, type(exc).__name__)
            c["due"] = now + period
    for key, _ in sel.select(timeout=0.01):
        c = key.data
        try:
            data = c["sock"].recv(65536)
        except OSError as exc:
            breaks(c, type(exc).__name__)
            continue
        if not data:
            breaks(c, "closed")
            continue
        c["buf"] += data
        while http:
            got, c["buf"] = answer(c["buf"])
            if got is None:
                break
            if got != c["node"]:
                breaks(c, f"answered by {got}, not {c['node']}")
                break
            c["ok"] += 1
        while not http and b"\n" in c["buf"]:
            line, c["buf"] = c["buf"].split(b"\n", 1)
            want = f"{c['node']} {c['ok'] + 1}".encode()
            if line != want:
                breaks(c, f"bad echo {line[:40]!r} != {want!r}")
                break
            c["ok"] += 1
for c in conns:
    if c["broken"] is None and c["sent"] - c["ok"] > 10:
        c["broken"] = {"error": "stalled", "at": time.time()}
print(json.dumps([{k: v for k, v in c.items() if k not in ("sock", "buf", "due")} for c in conns]))
"""


def start_conns(
    lab: Lab,
    n: int,
    *,
    port: int = 7,
    period: float = 0.1,
    duration: float = 20.0,
    http: bool = False,
    sources: list[str] | None = None,
    vip: str | None = None,
) -> subprocess.Popen[str]:
    """Open `n` connections from the client namespace; returns once all are up. `http`:
    keep-alive HTTP requests (to port 80 by default) instead of echoed lines. `sources`:
    "ADDR" or "ADDR:PORT" (a chosen client port), used in turn (default: every client). `vip`:
    another address than the lab's VIP (a VRRP baseline's)."""
    if http and port == 7:
        port = 80
    chosen = ",".join(sources or lab.topo.client_addrs())
    argv = [sys.executable, "-c", SCRIPT, vip or lab.topo.vip, str(port), str(n), str(period)]
    argv += [str(duration), chosen, "http" if http else "echo"]
    proc = lab.spawn(lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"connections did not come up: {line!r}")
    return proc


def finish_conns(
    proc: subprocess.Popen[str], timeout: float = 120, *, now: bool = False
) -> list[dict[str, Any]]:
    """The per-connection report: at the end of the duration, or at once with `now`."""
    if now:
        proc.terminate()
    out, _ = proc.communicate(timeout=timeout)
    data: list[dict[str, Any]] = json.loads(out)
    return data
