"""The failover baseline: keepalived's VRRP with its default timers, in the same kind of lab.

    python -m bench.vrrp [--kills 5] [--out bench/out/vrrp.json]

Three nodes run keepalived (Debian's), one VRRP instance for a VIP of its own, priorities 150,
140, 130, advert_int 1 (the default): the usual active/backup pair, here a trio. The same
clients as bench.failover (30 addresses, a new TCP connection every ~50 ms each) load the
VIP. A kill takes the master's link down (the node is gone: VRRP has no other way to lose a
node, since a killed keepalived leaves its address configured and the node keeps serving);
each client's failover time runs from the kill to its first answered request after it. The
link comes back and the master takes the VIP back (preemption) before the next kill.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.failover import CLIENTS, Feed, client_times, start_load, write
from bench.labrun import bench_lab
from clusterip.lab.net import Lab, LabError

KEEPALIVED = "/usr/sbin/keepalived"
VRRP_VIP = "198.18.0.101"  # beside the lab's own VIP (198.18.0.100)
ADVERT_INT = 1


def keepalived_conf(k: int, dev: str, vip: str) -> str:
    return f"""global_defs {{
  router_id n{k}
  max_auto_priority -1
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface {dev}
  virtual_router_id 51
  priority {160 - 10 * k}
  advert_int {ADVERT_INT}
  virtual_ipaddress {{
    {vip}/32 dev {dev}
  }}
}}
"""


def start(lab: Lab, k: int, workdir: str) -> None:
    d = os.path.join(workdir, f"n{k}")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "keepalived.conf")
    Path(conf).write_text(keepalived_conf(k, lab.topo.interface, VRRP_VIP))
    argv = [KEEPALIVED, "--vrrp", "--dont-fork", "--log-console", "--use-file", conf]
    argv += ["--pid", f"{d}/k.pid", "--vrrp_pid", f"{d}/v.pid"]
    with open(os.path.join(d, "log"), "wb") as log:
        lab.spawn(lab.topo.node_ns(k), argv, role="keepalived", stdout=log, stderr=log)


def holder(lab: Lab) -> int | None:
    """The node that has the VRRP VIP configured now."""
    for k in lab.topo.node_indexes:
        out = lab.run(lab.topo.node_ns(k), ["ip", "-4", "-o", "addr", "show"], timeout=10).stdout
        if f" {VRRP_VIP}/" in out:
            return k
    return None


def wait_holder(lab: Lab, want: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while holder(lab) != want:
        if time.monotonic() > end:
            raise LabError(f"VRRP VIP not on n{want} after {timeout:.0f} s (on {holder(lab)})")
        time.sleep(0.2)


def link(lab: Lab, k: int, state: str) -> None:
    lab.run(lab.topo.node_ns(k), ["ip", "link", "set", lab.topo.interface, state], timeout=10)


def one_kill(lab: Lab, feed: Feed, victim: int) -> dict[str, Any]:
    name = lab.topo.node_name(victim)
    before = feed.snapshot()
    last = {src: node for _t, src, node in before if node}
    orphans = {s for s, n in last.items() if n == name}
    killed = time.time()
    link(lab, victim, "down")
    deadline = time.monotonic() + 15
    times: dict[str, float] = {}
    while time.monotonic() < deadline and len(times) < len(orphans):
        time.sleep(0.25)
        for t, s, n in feed.snapshot():
            if t > killed and s in orphans and n and s not in times:
                times[s] = t - killed
    link(lab, victim, "up")
    wait_holder(lab, victim, timeout=20)  # preemption: the master takes the VIP back
    time.sleep(1.0)
    return {
        "victim": name,
        "orphans": len(orphans),
        "recovered": len(times),
        "times": sorted(times.values()),
    }


def run(kills: int, out: Path, log: Any = print) -> dict[str, Any]:
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="clusterip-vrrp-") as workdir,
        bench_lab(3, CLIENTS, log) as lab,
    ):
        lab.start_servers()
        for k in lab.topo.node_indexes:
            start(lab, k, workdir)
        wait_holder(lab, 1, timeout=20)
        load, feed = start_load(lab, VRRP_VIP, kills * 12 + 30)
        time.sleep(2.0)
        for i in range(kills):
            r = one_kill(lab, feed, 1)
            log(
                f"VRRP kill {i + 1}/{kills} of {r['victim']}: {r['recovered']}/{r['orphans']} "
                f"clients back, max {max(r['times'], default=0) * 1000:.0f} ms"
            )
            results.append(r)
        load.terminate()
        load.wait(timeout=10)
    summary = {
        "kills": kills,
        "advert_int_s": ADVERT_INT,
        **client_times(results),
        "summary": (
            "keepalived VRRP, default timers (advert_int 1 s, master down after 3 adverts plus "
            "skew): from the master's link going down to each client's first answered request."
        ),
        "kills_detail": results,
        "command": f"python -m bench.vrrp --kills {kills}",
    }
    write(out, summary)
    return summary


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.vrrp")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/out/vrrp.json"))
    args = ap.parse_args(argv)
    s = run(args.kills, args.out)
    print(
        f"VRRP failover over {s['kills']} kills, {s['recovered_clients']}/"
        f"{s['orphaned_clients']} clients: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
        f"max {s['max_ms']} ms"
    )
    return 0 if s["recovered_clients"] == s["orphaned_clients"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
