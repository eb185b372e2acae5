"""wrk: the command line it is run with and the parser of its `--latency` report (pure)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("keepalive", "close")
MODE_TITLES = {"keepalive": "keep-alive", "close": "one request per connection"}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m)"


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests per second, latency percentiles in ms, and error counts."""

    rps: float
    requests: int
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WrkParseError(ValueError):
    """wrk printed something that is not its usual report."""


def wrk_argv(url: str, *, mode: str, duration: float, threads: int, connections: int) -> list[str]:
    """The wrk command for `mode` (keepalive, or close: `Connection: close` on every request,
    so the server closes and wrk opens a new connection for the next one)."""
    if mode not in MODES:
        raise ValueError(f"bad mode {mode!r}: allowed are {', '.join(MODES)}")
    seconds = round(duration)
    if seconds < 1:
        raise ValueError(f"bad duration {duration!r}: wrk takes whole seconds, at least 1")
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Parse the report `wrk --latency` prints on stdout."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if rps is None or total is None:
        raise WrkParseError(f"no request rate in wrk output: {text.strip()[:200]!r}")
    pct: dict[str, float] = {}
    for m in re.finditer(rf"^\s+(50|75|90|99)%\s+{_DURATION}\s*$", text, re.M):
        pct[m.group(1)] = _ms(m.group(2), m.group(3))
    if len(pct) != 4:
        raise WrkParseError(f"no latency distribution in wrk output: {text.strip()[:200]!r}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock is not None:
        errors = sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=pct["50"],
        p75_ms=pct["75"],
        p90_ms=pct["90"],
        p99_ms=pct["99"],
        socket_errors=errors,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )
