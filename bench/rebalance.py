"""What each kind of rebalance costs clients, clusterip's way beside the naive way.

    python -m bench.rebalance [--listen wildcard --listen vip] [--out bench/out/rebalance.json]

One 4-node lab, 40 client addresses. Every move runs once per listener bind (servers on the
wildcard address, or bound to the VIP as nginx `listen VIP:80` is) and once per way, with the
same clients (clusterip.lab.traffic): 150 long-lived TCP connections in the buckets the move
touches and 30 elsewhere, UDP flows, and new connections from every address all along:

- static   `release 3` on node 3, then `take 3` on node 1 (naive: `release 3 --now`, what
           CLUSTERIP's `echo -3` did: the old owner forgets its flows);
- join, drain, weight, leave, restart: clusterip.lab.agentmoves (naive: agents with
           `--drain-timeout 0`, `drain 0`, a leave without draining first, and a restart with
           `--restart-grace 0`: SIGTERM was a leave before planned restarts existed).

Reported per move: new connections failed (started from the move on), long-lived connections
broken, UDP datagrams answered twice, the longest time a new connection waited (target: one
SYN retransmit, about 1 s) and how many waited for one, and how long a gained bucket stays
guarded (the status's guard window, from the move on).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.labrun import bench_lab
from clusterip.lab.agentmoves import MoveLab, Outcome, Spec
from clusterip.lab.traffic import (
    Traffic,
    bucket_of,
    held_summary,
    new_summary,
    udp_summary,
)

MOVES = ("static", "join", "drain", "weight", "leave", "restart")
LISTENS = ("wildcard", "vip")
STATIC_BUCKET = 3  # of 3: node 3's share moves to node 1
BEFORE, AFTER = 1.0, 1.5


def _cip(m: MoveLab, k: int, *args: str) -> None:
    lab = m.lab
    done = lab.run(lab.topo.node_ns(k), [sys.executable, "-m", "clusterip", *args], timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"clusterip {' '.join(args)} on n{k}: {done.stderr.strip()}")


def static_move(m: MoveLab, listen: str, naive: bool) -> dict[str, Any]:
    """A static `release 3` / `take 3` under the same clients as the agent moves."""
    spec = Spec("static", listen, 1)
    m.cells += 1
    m.reset(spec)
    vip = m.lab.topo.vip
    for k in (1, 2, 3):
        _cip(m, k, "up", "--vip", vip, "--interface", "eth0", "--total-nodes", "3",
             "--local-node", str(k))  # fmt: skip
    m.serve(spec, [1, 2, 3])
    moved = frozenset({STATIC_BUCKET})
    rest = frozenset({1, 2})
    traffic = Traffic(m.lab)
    try:
        picked = m.ports.pick(m.cfg, 3, 7, {"held": (moved, 150), "other": (rest, 30)})
        for label, sources in picked.items():
            traffic.hold(label, sources, http=False)
        udp = m.ports.pick(m.cfg, 3, 5300, {"in": (moved, 60), "out": (rest, 20)})
        traffic.flows(udp["in"] + udp["out"])
        traffic.connect(m.lab.topo.client_addrs())
        time.sleep(BEFORE)
        began = time.time()
        _cip(m, 3, "release", str(STATIC_BUCKET), "--vip", vip, *(("--now",) if naive else ()))
        _cip(m, 1, "take", str(STATIC_BUCKET), "--vip", vip)
        settled = time.time()
        time.sleep(AFTER)
        seen = traffic.finish()
    except BaseException:
        traffic.kill()
        raise
    for k in (1, 2, 3):
        _cip(m, k, "down")

    def in_moved(src: str, sport: int) -> bool:
        return bucket_of(m.cfg, 3, src, sport, 80) == STATIC_BUCKET

    held = [r for group in seen.held.values() for r in group]
    return _row(new_summary(seen.new, began, in_moved), held_summary(held),
                udp_summary(seen.udp), settled - began, None)  # fmt: skip


def agent_move(m: MoveLab, move: str, listen: str, naive: bool) -> dict[str, Any]:
    out = m.run(Spec(move, listen, 1, naive=naive), unguarded=True)
    s = out.summary()
    return _row(s["new"], s["held"], s["udp"], s["move_s"], _guard(out))


def _guard(out: Outcome) -> float | None:
    """How long after the move began a gained bucket stays guarded, as status says."""
    ends = [st["guard_ends_at"] for st in out.statuses.values() if st.get("guard_ends_at")]
    return round(max(ends) - out.marks["move"], 2) if ends else None


def _row(
    new: dict[str, Any],
    held: dict[str, Any],
    udp: dict[str, Any],
    took: float,
    guard: float | None,
) -> dict[str, Any]:
    return {
        "new_total": new["total"],
        "new_in_moved": new["in_moved"],
        "new_failed": new["failed"],
        "new_errors": new["errors"],
        "longest_wait_s": new["max_wait_s"],
        "waited_retransmit": new["retransmits"],
        "held_total": held["total"],
        "held_broken": held["broken"],
        "held_errors": held["errors"],
        "udp_doubles": udp["doubles"],
        "udp_missing": udp["missing"],
        "move_s": round(took, 3),
        "guard_s": guard,
    }


def run(
    listens: Sequence[str],
    out: Path,
    moves: Sequence[str] = MOVES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="clusterip-rebalance-") as tmp,
        bench_lab(4, 40, log) as lab,
    ):
        m = MoveLab(lab, Path(tmp))
        try:
            for move in moves:
                for listen in listens:
                    for way in ("naive", "clusterip"):
                        naive = way == "naive"
                        if move == "static":
                            row = static_move(m, listen, naive)
                        else:
                            row = agent_move(m, move, listen, naive)
                        results.setdefault(move, {}).setdefault(listen, {})[way] = row
                        log(f"{move} {listen} {way}: {_line(row)}")
        finally:
            m.agents.reset()
    args = " ".join(f"--listen {x}" for x in listens)
    result = {
        "moves": results,
        "columns": COLUMNS,
        "rows": rows(results),
        "long_lived": 150,
        "command": f"python -m bench.rebalance {args}",
        "summary": (
            "per move, listener bind and way: new connections failed (of those started from "
            "the move on), long-lived connections broken (of 180; leave: of 190, 40 of them on "
            "the leaving node), UDP datagrams answered twice, the longest wait of a new "
            "connection (one SYN retransmit = 1 s)"
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _line(r: dict[str, Any]) -> str:
    return (
        f"new failed {r['new_failed']}/{r['new_total']}, long-lived broken "
        f"{r['held_broken']}/{r['held_total']}, UDP doubles {r['udp_doubles']}, longest wait "
        f"{r['longest_wait_s']:.2f} s ({r['waited_retransmit']} waited for a retransmit)"
    )


COLUMNS = ["move", "listener", "way", "new failed", "long-lived broken", "UDP twice",
           "longest wait", "guarded"]  # fmt: skip


def rows(results: dict[str, Any]) -> list[list[str]]:
    """The report's table (bench.report renders `columns` and `rows`)."""
    out = []
    for move, by_listen in results.items():
        for listen, ways in by_listen.items():
            for way, r in ways.items():
                guard = f"{r['guard_s']:.1f} s" if r["guard_s"] is not None else "-"
                out.append([
                    move, listen, way, f"{r['new_failed']} / {r['new_total']}",
                    f"{r['held_broken']} / {r['held_total']}", str(r["udp_doubles"]),
                    f"{r['longest_wait_s']:.2f} s", guard,
                ])  # fmt: skip
    return out


def table(result: dict[str, Any]) -> str:
    head = (
        f"{'move':8} {'listen':9} {'way':10} {'new failed':>12} {'broken':>9} "
        f"{'UDP x2':>7} {'longest wait':>13} {'guard':>7}"
    )
    lines = [head, "-" * len(head)]
    for move, by_listen in result["moves"].items():
        for listen, ways in by_listen.items():
            for way, r in ways.items():
                guard = f"{r['guard_s']:.1f} s" if r["guard_s"] is not None else "-"
                lines.append(
                    f"{move:8} {listen:9} {way:10} "
                    f"{r['new_failed']:>5}/{r['new_total']:<6} "
                    f"{r['held_broken']:>4}/{r['held_total']:<4} {r['udp_doubles']:>7} "
                    f"{r['longest_wait_s']:>11.2f} s {guard:>7}"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="bench.rebalance")
    ap.add_argument("--listen", action="append", choices=LISTENS)
    ap.add_argument("--move", action="append", choices=MOVES)
    ap.add_argument("--out", type=Path, default=Path("bench/out/rebalance.json"))
    args = ap.parse_args(argv)
    r = run(args.listen or list(LISTENS), args.out, args.move or MOVES)
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
