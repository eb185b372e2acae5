"""CPU per received heartbeat in the pure core, beside HMAC verification alone.

    python -m bench.corecost [--members 3 16 64] [--seconds 2] [--out bench/out/corecost.json]

For each cluster size, N agents' cores (clusterip.core.vipnode.VipNode) run on the in-memory
network until they have settled; then, for `seconds` of simulated time, a recorder keeps what
node 1 receives, and a copy of node 1 taken at the start is fed exactly that, stepped after
every datagram as the agent steps it (`receive` then `step`). Reported, in µs of CPU:

  per_heartbeat   receive + step, per received datagram (an unchanged heartbeat: the fast path)
  per_full_tick   one full membership tick (what any change costs), forced at a settled node
  per_send        step when a heartbeat is due: build, pack and sign it
  hmac_only       HMAC-SHA256 over one received datagram (the floor: every message is
                  verified), measured on the same datagrams

Pure Python, no root, a few seconds. The agent's CPU in a lab (sockets, syscalls, wakeups) is
bench/idlecpu.py.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import itertools
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clusterip.config import build
from clusterip.core.bus import FakeClock, MemoryNetwork
from clusterip.core.params import Params
from clusterip.core.sim import Simulation

KEY = b"bench-corecost-key-0123456789abcdef"
SPY = "10.0.9.1"


def _settled(members: int, seed: int = 1) -> Simulation:
    cfg = build(vip="192.0.2.10", interface="eth0", total_nodes=1)
    clock = FakeClock()
    net = MemoryNetwork(clock, random.Random(seed))
    params = Params()
    sim = Simulation(
        dict.fromkeys(range(1, members + 1), 1),
        cfg=cfg,
        key=KEY,
        params=params,
        clock=clock,
        network=net,
        check=False,
    )
    for n in sim.nodes:
        sim.start(n)
    # Listening, gathering, taking over: then only heartbeats go on.
    sim.run_for(params.listen_time + params.dead_after + 1.0)
    return sim


def _time(fn: Any, repeat: int) -> float:
    """Best of three runs of `repeat` calls, µs of CPU per call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(repeat):
            fn()
        best = min(best, time.process_time() - t0)
    return best / repeat * 1e6


def measure(members: int, seconds: float = 2.0) -> dict[str, Any]:
    sim = _settled(members)
    node = sim.nodes[1]
    assert node.vip is not None and not sim.problems(), sim.problems()
    spy = sim.network.attach(SPY)
    clone = copy.deepcopy(node.vip)
    start = sim.clock.now()
    got: list[tuple[float, bytes, str]] = []
    end = start + seconds
    while sim.clock.now() < end:
        sim.run_for(0.005)
        while (d := spy.recv()) is not None:
            got.append((sim.clock.now(), d[0], d[1]))
    sim.network.detach(SPY)
    datagrams = [(t, data, src) for t, data, src in got if src != node.address]

    m = clone.membership
    t0 = time.process_time()
    for t, data, src in datagrams:
        m._last_sent, clone._config_due = t, t + 1.0  # (no send: received only)
        clone.receive(data, src, t)
        clone.step(t)
    per_heartbeat = (time.process_time() - t0) / len(datagrams) * 1e6

    key = clone.cluster.key
    sample = [data for _t, data, _s in datagrams[:500]]
    it = itertools.cycle(sample)
    hmac_only = _time(lambda: hmac.digest(key, next(it)[:-32], hashlib.sha256), len(sample) * 10)

    now = datagrams[-1][0]

    def full() -> None:
        m._dirty = True  # (a forced full tick is what is measured)
        m.tick(now)

    per_full_tick = _time(full, 300)

    def send() -> None:
        m._last_sent = now - 1.0  # (a heartbeat is due)
        clone.step(now)

    per_send = _time(send, 300)
    return {
        "members": members,
        "datagrams": len(datagrams),
        "bytes": round(sum(len(d) for _t, d, _s in datagrams) / len(datagrams)),
        "per_heartbeat_us": round(per_heartbeat, 1),
        "per_full_tick_us": round(per_full_tick, 1),
        "per_send_us": round(per_send, 1),
        "hmac_only_us": round(hmac_only, 1),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = "members  datagram  per heartbeat  HMAC alone  per full tick  per send"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['members']:>7}  {r['bytes']:>6} B  {r['per_heartbeat_us']:>10.1f} µs"
            f"  {r['hmac_only_us']:>7.1f} µs  {r['per_full_tick_us']:>10.1f} µs"
            f"  {r['per_send_us']:>5.1f} µs"
        )
    return "\n".join(lines)


def run(members: Sequence[int] = (3, 16, 64), seconds: float = 2.0) -> dict[str, Any]:
    rows = [measure(n, seconds) for n in members]
    return {"rows": rows, "seconds_recorded": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corecost", description=__doc__)
    p.add_argument("--members", type=int, nargs="+", default=[3, 16, 64])
    p.add_argument("--seconds", type=float, default=2.0, help="simulated seconds recorded")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.members, args.seconds)
    print(table(result["rows"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
