"""The agent's datapath across the ends of a process, without the agent's core (a driver
process runs AgentDatapath by hand: clusterip.lab.dpdriver).

- suspend(grace) then exit, and a successor adopts within the grace: every established
  connection lives on, new ones are served throughout, nothing is answered twice;
- suspend without a successor: served until the lease runs out in the kernel, then nothing;
- kill -9: nothing is answered from that moment (the owner table dies with the process);
- the mark that says "an agent is live" never reaches the IP stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from clusterip.lab.conns import finish_conns, start_conns
from clusterip.lab.net import Lab
from tests.lab.conftest import MakeLab

BUCKETS = 16
# UDP datagrams every 5 ms, round robin over the sources, each with its sequence number; prints
# per datagram [sent at (wall clock), answers]. Runs for argv[3] seconds (or until SIGTERM).
UDP_TIMELINE = r"""
import json, selectors, signal, socket, sys, time
vip, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for src in sys.argv[4].split(","):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0)); s.setblocking(False); socks.append(s)
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
sent, answers, stop = [], {}, [False]
signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
print("ready", flush=True)
end, due = time.time() + duration, time.time()
while not stop[0] and time.time() < end + 0.3:
    now = time.time()
    if now >= due and now < end:
        seq = len(sent)
        socks[seq % len(socks)].sendto(str(seq).encode(), (vip, port))
        sent.append(now)
        due = now + 0.005
    for key, _ in sel.select(timeout=0.002):
        while True:
            try:
                data = key.fileobj.recv(2048)
            except BlockingIOError:
                break
            seq = int(data.split()[1])
            answers[seq] = answers.get(seq, 0) + 1
print(json.dumps([[t, answers.get(i, 0)] for i, t in enumerate(sent)]))
"""


class Driver:
    """One dpdriver process in a node."""

    def __init__(self, lab: Lab, k: int = 1) -> None:
        argv = [sys.executable, "-m", "clusterip.lab.dpdriver", lab.topo.vip]
        self.proc = lab.spawn(
            lab.topo.node_ns(k),
            [*argv, "--buckets", str(BUCKETS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        doc: dict[str, Any] = json.loads(self.proc.stdout.readline())
        assert "error" not in doc, (command, doc)
        return doc

    def exit(self) -> float:
        """Ends the process without a word to the kernel; the time it was gone."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        return time.time()


def timeline(lab: Lab, duration: float) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", UDP_TIMELINE, lab.topo.vip, "5300", str(duration)]
    proc = lab.spawn(
        lab.topo.client_ns,
        [*argv, ",".join(lab.topo.client_addrs())],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def cip(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "clusterip", *args]
    return lab.run(lab.topo.node_ns(1), argv, timeout=30)


def clean(lab: Lab) -> bool:
    """Nothing of the VIP left on node 1: tables, address, cluster MAC."""
    ns = lab.topo.node_ns(1)
    tables = lab.run(ns, ["nft", "list", "tables"], timeout=10).stdout
    addrs = lab.run(ns, ["ip", "-o", "addr", "show", "dev", "eth0"], timeout=10).stdout
    mcast = lab.run(ns, ["cat", "/proc/net/dev_mcast"], timeout=10).stdout
    return "clusterip" not in tables and lab.topo.vip not in addrs and "03bf" not in mcast


@pytest.fixture
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    yield make_lab(nodes=1, clients=20)


def test_suspend_then_adopt_keeps_every_flow(lab: Lab) -> None:
    first = Driver(lab)
    assert first("start 1") == {"adopted": False, "owned": 0, "lease": None}
    assert first("apply all")["changed"]
    conns = start_conns(lab, 100, period=0.1, duration=60)
    udp = timeline(lab, 5.0)
    argv = [sys.executable, "-m", "clusterip.lab.newconns", lab.topo.vip, "80", "60", "3"]
    loop = lab.spawn(
        lab.topo.client_ns,
        [*argv, ",".join(lab.topo.client_addrs())],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert loop.stdout is not None and loop.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    suspended = time.time()
    first("suspend 3.0 1 1001")
    gone = first.exit()
    # No process: the node serves on its lease, and says so.
    (st,) = json.loads(cip(lab, "status", "--json").stdout)["vips"]
    assert st["mode"] == "agent" and st["lease"]["node_id"] == 1 and st["owned"], st
    time.sleep(max(0.0, gone + 1.0 - time.time()))
    second = Driver(lab)
    adopted = second("start 1")
    assert adopted["adopted"] and adopted["owned"] == BUCKETS
    assert adopted["lease"]["node_id"] == 1 and adopted["lease"]["incarnation"] == 1001
    # Its end, as the predecessor wrote it; what the kernel had left of it (whole seconds).
    assert abs(adopted["lease"]["until"] - (suspended + 3.0)) < 0.5
    assert 0 <= adopted["lease"]["left"] <= 2.5
    time.sleep(3.5)  # beyond the first lease: the successor's live table serves now
    loop.terminate()
    new = json.loads(loop.communicate(timeout=30)[0])
    held = finish_conns(conns, now=True)
    sent = json.loads(udp.communicate(timeout=30)[0])
    assert not [r for r in new if r["error"]] and len(new) > 200
    assert max(r["took"] for r in new) < 0.5
    assert [r for r in new if r["start"] > gone + 0.1]  # served with no process at all
    assert not [r for r in held if r["broken"]] and min(r["ok"] for r in held) >= 40
    assert [n for _t, n in sent] == [1] * len(sent)  # every datagram answered, once
    lease = lab.run(lab.topo.node_ns(1), ["nft", "list", "set", "netdev",
                    "clusterip_198_18_0_100", "lease"], timeout=10).stdout  # fmt: skip
    assert "198.18.0.100" not in lease  # the successor deleted it
    second("stop")
    assert clean(lab)


def test_suspend_without_successor_stops_when_the_lease_runs_out(lab: Lab) -> None:
    driver = Driver(lab)
    driver("start 1")
    driver("apply all")
    udp = timeline(lab, 3.0)
    time.sleep(0.5)
    began = time.time()
    driver("suspend 1.0 1 1")
    driver.exit()
    sent = json.loads(udp.communicate(timeout=30)[0])
    within = [n for t, n in sent if t < began + 0.9]
    after = [n for t, n in sent if t > began + 1.1]
    assert within and all(n == 1 for n in within)
    assert after and not any(after), sum(after)
    # `clusterip down` removes what the suspended agent left.
    done = cip(lab, "down", "--vip", lab.topo.vip)
    assert done.returncode == 0 and "stopped agent" in done.stdout, done
    assert clean(lab)


def test_kill_9_answers_nothing_from_that_moment(lab: Lab) -> None:
    driver = Driver(lab)
    driver("start 1")
    driver("apply all")
    # While the agent runs, static commands leave its VIP alone.
    refused = cip(lab, "down", "--vip", lab.topo.vip)
    assert refused.returncode == 2 and "run by an agent" in refused.stderr, refused
    udp = timeline(lab, 2.0)
    time.sleep(0.7)
    killed = time.time()
    driver.proc.kill()
    driver.proc.wait(timeout=10)
    gone = time.time()
    sent = json.loads(udp.communicate(timeout=30)[0])
    before = [n for t, n in sent if t < killed - 0.05]
    after = [n for t, n in sent if t > gone]
    assert before and all(n == 1 for n in before)
    assert after and not any(after), sum(after)
    print(f" [kill -9 to process gone: {(gone - killed) * 1000:.1f} ms]", end="")
    human = cip(lab, "status").stdout
    assert "left by a stopped agent: every VIP packet is dropped here" in human, human
    assert cip(lab, "down", "--vip", lab.topo.vip).returncode == 0
    assert clean(lab)


def test_the_live_mark_never_reaches_the_stack(lab: Lab) -> None:
    """Every packet the datapath accepts leaves it with mark 0: counted at prerouting."""
    ns = lab.topo.node_ns(1)
    vip = lab.topo.vip
    script = f"""table ip marks {{
	counter vip {{ }}
	counter marked {{ }}
	chain pre {{
		type filter hook prerouting priority -300; policy accept;
		ip daddr {vip} counter name "vip"
		ip daddr {vip} meta mark != 0 counter name "marked"
	}}
}}
"""
    assert lab.run(ns, ["nft", "-f", "-"], timeout=10, input=script).returncode == 0
    driver = Driver(lab)
    driver("start 1")
    driver("apply all")
    conns = start_conns(lab, 20, period=0.05, duration=60)
    res = lab.probe(proto="udp", per_source=3)
    ping = lab.run(lab.topo.client_ns, ["ping", "-c", "3", "-i", "0.2", vip], timeout=10)
    time.sleep(0.5)
    assert not [r for r in finish_conns(conns, now=True) if r["broken"]]
    assert res.errors == 0 and ping.returncode == 0
    out = lab.run(ns, ["nft", "-j", "list", "counters", "table", "ip", "marks"], timeout=10)
    counters = {
        o["counter"]["name"]: o["counter"]["packets"]
        for o in json.loads(out.stdout)["nftables"]
        if "counter" in o
    }
    assert counters["vip"] > 500 and counters["marked"] == 0, counters
    driver("stop")


def test_a_graceful_stop_answers_nothing_once_it_began(lab: Lab) -> None:
    """stop(): nothing answered from its first transaction on (issue 11): without the tables
    and before the address goes, the stack would take UDP sent to the cluster MAC."""
    driver = Driver(lab)
    driver("start 1")
    driver("apply all")
    udp = timeline(lab, 2.0)
    time.sleep(0.7)
    began = time.time()
    driver("stop")
    sent = json.loads(udp.communicate(timeout=30)[0])
    before = [n for t, n in sent if t < began - 0.05]
    after = [n for t, n in sent if t > began + 0.02]
    assert before and all(n == 1 for n in before)
    assert after and not any(after), sum(after)
    assert clean(lab)
