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
FAMILY = socket.AF_INET6 if ":" in vip else socket.AF_INET
sel = selectors.DefaultSelector()
socks = {}
for src in sources:
    s = socket.socket(FAMILY, socket.SOCK_DGRAM)
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


def udp_once(
    lab: Lab, sources: list[str], port: int = 5300, wait: float = 1.0, vip: str | None = None
) -> dict[str, Any]:
    argv = [sys.executable, "-c", UDP_ONCE, vip or lab.topo.vip, str(port), str(wait)]
    argv.append(",".join(sources))
    done = lab.run(lab.topo.client_ns, argv, timeout=wait + 20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# Requests from every source in a loop for a while; every request is logged with wall-clock
# start/end, so a test can line them up with the moment it killed a node. TCP: a new connection
# and one HTTP GET each time. UDP: one datagram, and every reply within the timeout is counted.
LOOP = r"""
import json, socket, sys, threading, time
vip, proto, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
FAMILY = socket.AF_INET6 if ":" in vip else socket.AF_INET
duration, timeout, pause = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
sources = sys.argv[7].split(",")
end = time.time() + duration
out, lock = [], threading.Lock()

def tcp(src):
    s = socket.socket(FAMILY)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((vip, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return [data.split(b"\r\n\r\n", 1)[1].decode().strip()], None
    except OSError as exc:
        return [], type(exc).__name__
    finally:
        s.close()

def udp(src):
    s = socket.socket(FAMILY, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.sendto(b"ping", (vip, port))
    got, stop = [], time.time() + timeout
    while (left := stop - time.time()) > 0:
        s.settimeout(left)
        try:
            got.append(s.recv(2048).decode().split()[0])
        except OSError:
            break
    s.close()
    return got, None if got else "timeout"

def worker(src):
    while (start := time.time()) < end:
        nodes, err = (tcp if proto == "tcp" else udp)(src)
        with lock:
            out.append([src, start, time.time(), nodes, err])
        time.sleep(pause)

threads = [threading.Thread(target=worker, args=(s,)) for s in sources]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def start_loop(
    lab: Lab,
    sources: list[str],
    *,
    proto: str = "tcp",
    port: int = 80,
    duration: float = 6.0,
    timeout: float = 0.2,
    pause: float = 0.05,
    vip: str | None = None,
) -> Any:
    """Start LOOP in the client namespace; `finish_loop(proc)` returns its records."""
    import subprocess

    argv = [sys.executable, "-c", LOOP, vip or lab.topo.vip, proto, str(port), str(duration)]
    argv += [str(timeout), str(pause), ",".join(sources)]
    return lab.spawn(lab.topo.client_ns, argv, stdout=subprocess.PIPE, text=True)


def finish_loop(proc: Any, timeout: float = 60) -> list[tuple[str, float, float, list[str], str]]:
    out, _ = proc.communicate(timeout=timeout)
    return [tuple(r) for r in json.loads(out)]  # type: ignore[misc]


# Forged and replayed heartbeats, sent from the client namespace to the agents' group.
FORGE = r"""
import ipaddress, socket, struct, sys, time
from clusterip import config
from clusterip.core.fingerprint import fingerprint, key_id
from clusterip.core.wire import Heartbeat
vip, group, port, keyfile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
key = open(keyfile, "rb").read().rstrip()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
idx = socket.if_nametoindex("eth0")
mreq = struct.pack("4s4si", socket.inet_aton(group), b"\0" * 4, idx)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
s.settimeout(3)
captured = s.recv(4096)  # a real heartbeat of a member
time.sleep(0.3)  # its sender has moved on: this one is now old
def heartbeat(cfg, k, node_id=77):
    kid = key_id(k)
    return Heartbeat(node_id=node_id, vip=ipaddress.IPv4Address(vip),
                     fingerprint=fingerprint(cfg, buckets=4096, key_id=kid), key_id=kid,
                     incarnation=12345, seq=1).pack(k)
cfg = config.build(vip=vip, interface="eth0", total_nodes=1)
other_seed = config.build(vip=vip, interface="eth0", total_nodes=1, seed="1234")
forged = {
    "replay": captured,
    "bad_mac": heartbeat(cfg, b"not-the-cluster-key-at-all!"),
    "malformed": captured[:40] + b"\xff" * 10,
    "foreign_fingerprint": heartbeat(other_seed, key),
}
for _ in range(5):
    for data in forged.values():
        s.sendto(data, (group, port))
    time.sleep(0.05)
from clusterip.core.wire import peek
print(peek(captured).node_id)
"""


# Long-lived UDP "sessions": each socket (fixed source address and port) sends a datagram every
# `period` and collects every reply; prints, per session, the nodes that answered, the
# datagrams that got no answer and those that got more than one.
UDP_SESSIONS = r"""
import json, selectors, socket, sys, time
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FAMILY = socket.AF_INET6 if ":" in vip else socket.AF_INET
period, duration = float(sys.argv[4]), float(sys.argv[5])
sources = sys.argv[6].split(",")
sel = selectors.DefaultSelector()
sessions = []
for i in range(n):
    s = socket.socket(FAMILY, socket.SOCK_DGRAM)
    s.bind((sources[i % len(sources)], 0))
    s.setblocking(False)
    sess = {"src": sources[i % len(sources)], "sport": s.getsockname()[1], "sent": 0,
            "replies": {}, "sock": s}
    sessions.append(sess)
    sel.register(s, selectors.EVENT_READ, sess)
end = time.time() + duration
next_send = time.time()
while time.time() < end + 0.5:
    now = time.time()
    if now >= next_send and now < end:
        for sess in sessions:
            sess["sent"] += 1
            sess["sock"].sendto(str(sess["sent"]).encode(), (vip, port))
        next_send = now + period
    for key, _ in sel.select(timeout=0.01):
        sess = key.data
        data = key.fileobj.recv(2048).decode().split()
        sess["replies"].setdefault(data[1], []).append(data[0])
out = []
for sess in sessions:
    nodes = sorted({n for r in sess["replies"].values() for n in r})
    missing = sess["sent"] - len(sess["replies"])
    doubles = sum(1 for r in sess["replies"].values() if len(r) > 1)
    out.append({"src": sess["src"], "sport": sess["sport"], "nodes": nodes,
                "sent": sess["sent"], "missing": missing, "doubles": doubles})
print(json.dumps(out))
"""
