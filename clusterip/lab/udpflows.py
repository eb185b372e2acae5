"""Long-lived UDP flows, every datagram logged with who answered it (client side).

    python -m clusterip.lab.udpflows VIP PORT PERIOD DURATION SRC[:SPORT][,...]

One socket per session, bound to (SRC, SPORT) (SPORT 0 or absent: the kernel picks), sends
datagram number i every PERIOD seconds and collects every reply ("<node> <i>", as the lab's
UDP servers answer) until 0.5 s after the last one. Prints "ready" once every socket is bound,
then after DURATION (or SIGTERM) one JSON list, per session: src, sport and `log`, a list of
[sent at (wall clock), [nodes that answered]]: none is a lost datagram, two a double answer.
Bounded in time; talks only to the VIP it is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LINGER = 0.5  # replies to the last datagrams are awaited this long


@dataclass
class Session:
    src: str
    sock: socket.socket
    sent: list[float] = field(default_factory=list)
    replies: dict[int, list[str]] = field(default_factory=dict)

    @property
    def sport(self) -> int:
        return int(self.sock.getsockname()[1])

    def report(self) -> dict[str, Any]:
        log = [[round(t, 4), self.replies.get(i, [])] for i, t in enumerate(self.sent)]
        return {"src": self.src, "sport": self.sport, "log": log}


def open_sessions(specs: Sequence[str]) -> list[Session]:
    out = []
    for spec in specs:
        src, _, port = spec.partition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((src, int(port or 0)))
        sock.setblocking(False)
        out.append(Session(src, sock))
    return out


def run(vip: str, port: int, period: float, duration: float, sessions: list[Session]) -> None:
    sel = selectors.DefaultSelector()
    for s in sessions:
        sel.register(s.sock, selectors.EVENT_READ, s)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    end = time.time() + duration
    due = time.time()
    while True:
        now = time.time()
        if stop[0] and now < end:
            end = now
        if now >= end + LINGER:
            break
        if due <= now < end:
            for i, s in enumerate(sessions):
                s.sent.append(time.time())
                # An error (no route while the lab's link is down) is a lost datagram.
                with contextlib.suppress(OSError):
                    s.sock.sendto(f"{len(s.sent) - 1}".encode(), (vip, port))
                if i % 64 == 63:  # keep reading while sending a large batch
                    _drain(sel)
            due = max(due + period, now)
        _drain(sel, min(0.005, max(0.0, due - time.time())))


def _drain(sel: selectors.BaseSelector, timeout: float = 0.0) -> None:
    for key, _ in sel.select(timeout=timeout):
        s: Session = key.data
        while True:
            try:
                data = s.sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            words = data.decode(errors="replace").split()
            if len(words) >= 2 and words[1].isdigit():
                s.replies.setdefault(int(words[1]), []).append(words[0])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clusterip.lab.udpflows")
    ap.add_argument("vip")
    ap.add_argument("port", type=int)
    ap.add_argument("period", type=float)
    ap.add_argument("duration", type=float)
    ap.add_argument("sessions", help="SRC[:SPORT],...")
    args = ap.parse_args(argv)
    sessions = open_sessions(args.sessions.split(","))
    print("ready", flush=True)
    run(args.vip, args.port, args.period, min(args.duration, 600.0), sessions)
    print(json.dumps([s.report() for s in sessions]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
