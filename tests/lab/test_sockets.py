"""sock_diag in the real kernel: clusterip.sockdiag against pyroute2's decoding of the same
sockets, in a private namespace (listeners excluded, every address but the VIP's as the kernel
filters them; TIME_WAIT only when asked for)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from clusterip.sockdiag import LISTEN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

VIP = "198.18.0.100"
# In the namespace: a listener on the VIP and one on the wildcard address, N connections to
# each from another local address, every 10th closed by the server (TIME_WAIT there); then
# both readings of the VIP's sockets.
SCRIPT = r"""
import json, socket, sys, time
from pyroute2 import DiagSocket
from clusterip.sockdiag import tcp_sockets, LINGERING_STATES, LISTEN, CLOSE
import ipaddress
vip, n = sys.argv[1], int(sys.argv[2])
lsn = []
for addr, port in ((vip, 80), ("0.0.0.0", 81)):
    s = socket.socket(); s.bind((addr, port)); s.listen(4096); lsn.append(s)
held = []
for i in range(n):
    for port, server in ((80, lsn[0]), (81, lsn[1])):
        c = socket.create_connection((vip, port), source_address=("198.18.1.1", 0))
        a, _ = server.accept()
        if i % 10 == 0:
            a.close()  # the server closes first: TIME_WAIT on the VIP's side
            c.close()
        else:
            held += [c, a]
other = socket.create_connection(("198.18.0.1", 81), source_address=("198.18.1.1", 0))
held += [other, lsn[1].accept()[0]]
time.sleep(0.2)
t = time.perf_counter()
mine = tcp_sockets(ipaddress.IPv4Address(vip), LINGERING_STATES)
took = time.perf_counter() - t
live = tcp_sockets(ipaddress.IPv4Address(vip))
states = 0xFFF & ~(1 << LISTEN | 1 << CLOSE)
with DiagSocket() as ds:
    ds.bind()
    ref = [(m["idiag_dst"], m["idiag_dport"], m["idiag_sport"], m["idiag_state"])
           for m in ds.get_sock_stats(family=socket.AF_INET, states=states)
           if m["idiag_src"] == vip]
print(json.dumps({"mine": sorted(map(list, mine)), "ref": sorted(map(list, ref)), "took": took,
                  "live": sorted(map(list, live))}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"cips-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for argv in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{VIP}/32", "dev", "lo"],
            ["addr", "add", "198.18.0.1/32", "dev", "lo"],
            ["addr", "add", "198.18.1.1/32", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", name, *argv], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_sockdiag_reads_what_pyroute2_reads(netns: str) -> None:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT, VIP, "1000"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["mine"] == out["ref"]
    states = Counter(s for *_rest, s in out["mine"])
    assert states[1] == 1800 and states[6] > 0, states  # established; TIME_WAIT (and LAST_ACK)
    assert LISTEN not in states and {lport for _a, _p, lport, _s in out["mine"]} == {80, 81}
    # By default the kernel sends the live flows only: TIME_WAIT stays out.
    assert out["live"] == [s for s in out["mine"] if s[3] != 6] and len(out["live"]) >= 1800
    print(f" [{len(out['mine'])} sockets read in {out['took'] * 1000:.1f} ms]", end="")
