"""Probe a VIP from many source addresses and report which node answered each request.

    python -m clusterip.lab.probe --vip 198.18.0.100 --proto tcp --port 80 \\
        --sources 198.18.1.1-198.18.1.50 --per-source 4 --timeout 1.0 [--concurrency 32]

Run inside the client namespace. Each request binds to (src, 0), records the source port the
kernel picked, then does one HTTP GET (tcp) or one datagram (udp) against the node servers of
`clusterip.lab.servers`. Prints JSON on stdout:
`{"results": [{"src", "sport", "dport", "node", "error"}], "by_node": {...}, "errors": K, ...}`.
Errors are "timeout", "refused", "reset", "closed", "unreachable", "deadline" (not attempted
before the run's deadline) or "<errno name or exception>". Targets must lie in 198.18.0.0/16
or, for an IPv6 VIP, in fdc1::/48.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import math
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from clusterip.config import ConfigError, parse_port
from clusterip.lab.topo import in_lab_net

PROTOS = ("tcp", "udp")
DEFAULT_PORTS = {"tcp": 80, "udp": 5300}
MAX_SOURCES = 65536
MAX_REQUESTS = 100_000
MAX_DEADLINE = 600.0


# --- pure parts -------------------------------------------------------------------------------
def parse_sources(text: str) -> tuple[str, ...]:
    """'A-B,C,...' -> addresses in order; each must be in the lab net; ranges inclusive."""
    out: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        first, _, last = part.partition("-")
        lo = ipaddress.ip_address(in_lab_net(first, "source address"))
        hi = ipaddress.ip_address(in_lab_net(last, "source address")) if last else lo
        if hi.version != lo.version or hi < lo:  # type: ignore[operator]
            raise ConfigError(f"bad source range {part!r}: the first address must come first")
        if len(out) + int(hi) - int(lo) + 1 > MAX_SOURCES:
            raise ConfigError(f"bad sources {text!r}: more than {MAX_SOURCES} addresses")
        out.extend(str(lo + i) for i in range(int(hi) - int(lo) + 1))
    if not out:
        raise ConfigError(f"bad sources {text!r}: expected addresses such as 198.18.1.1-198.18.1.9")
    return tuple(out)


def format_sources(addrs: Iterable[str]) -> str:
    """Inverse of parse_sources: consecutive runs become 'A-B'."""
    runs: list[list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = []
    for addr in addrs:
        value = ipaddress.ip_address(addr)
        last = runs[-1][1] if runs else None
        if last is not None and last.version == value.version and int(value) == int(last) + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(frozen=True)
class ProbeSpec:
    vip: str
    proto: str
    port: int
    sources: tuple[str, ...]
    per_source: int
    timeout: float
    concurrency: int
    deadline: float

    @classmethod
    def make(
        cls,
        *,
        vip: str,
        proto: str = "tcp",
        port: int | str | None = None,
        sources: str | Sequence[str],
        per_source: int = 1,
        timeout: float = 1.0,
        concurrency: int = 32,
        deadline: float | None = None,
    ) -> ProbeSpec:
        """Validate; raises ConfigError naming the bad value. Default deadline: every request
        timing out, plus 2 s (at most 600 s)."""
        if proto not in PROTOS:
            raise ConfigError(f"bad protocol {proto!r}: allowed are {', '.join(PROTOS)}")
        srcs = parse_sources(sources if isinstance(sources, str) else ",".join(sources))
        _check_int(per_source, "requests per source", 1, 1000)
        _check_int(concurrency, "concurrency", 1, 1024)
        if not 0.01 <= timeout <= 60:
            raise ConfigError(f"bad timeout {timeout!r}: expected 0.01 to 60 seconds")
        total = len(srcs) * per_source
        if total > MAX_REQUESTS:
            raise ConfigError(f"bad request count {total}: at most {MAX_REQUESTS} per run")
        if deadline is None:
            deadline = min(MAX_DEADLINE, 2.0 + timeout * math.ceil(total / concurrency))
        elif not 0.1 <= deadline <= MAX_DEADLINE:
            raise ConfigError(f"bad deadline {deadline!r}: expected 0.1 to {MAX_DEADLINE} seconds")
        return cls(
            vip=in_lab_net(vip, "VIP"),
            proto=proto,
            port=parse_port(port if port is not None else DEFAULT_PORTS[proto]),
            sources=srcs,
            per_source=per_source,
            timeout=float(timeout),
            concurrency=concurrency,
            deadline=float(deadline),
        )

    def to_args(self) -> list[str]:
        return [
            *("--vip", self.vip, "--proto", self.proto, "--port", str(self.port)),
            *("--sources", format_sources(self.sources), "--per-source", str(self.per_source)),
            *("--timeout", repr(self.timeout), "--concurrency", str(self.concurrency)),
            *("--deadline", repr(self.deadline)),
        ]


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"bad {what} {value!r}: expected a whole number from {low} to {high}")


@dataclass(frozen=True)
class ProbeRecord:
    src: str
    sport: int | None
    dport: int
    node: str | None
    error: str | None


@dataclass(frozen=True)
class ProbeResult:
    results: tuple[ProbeRecord, ...]
    elapsed: float = 0.0

    @property
    def by_node(self) -> dict[str, int]:
        return dict(sorted(Counter(r.node for r in self.results if r.node).items()))

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.error is not None)

    def error_kinds(self) -> dict[str, int]:
        return dict(sorted(Counter(r.error for r in self.results if r.error).items()))

    def nodes_by_source(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in self.results:
            if r.node:
                out.setdefault(r.src, set()).add(r.node)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [asdict(r) for r in self.results],
            "by_node": self.by_node,
            "errors": self.errors,
            "error_kinds": self.error_kinds(),
            "elapsed": round(self.elapsed, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            tuple(ProbeRecord(**r) for r in data["results"]), float(data.get("elapsed", 0.0))
        )

    @classmethod
    def from_json(cls, text: str) -> ProbeResult:
        return cls.from_dict(json.loads(text))


def http_node(data: bytes) -> str | None:
    """The answering node of a complete HTTP response (X-Node, else the body); None while
    incomplete; ValueError for a response that is not 200."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or status[1] != "200":
        raise ValueError(f"http {lines[0][:40]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return headers.get("x-node") or body[:length].decode(errors="replace").strip()


def classify(exc: BaseException) -> str:
    """A short error string for a failed request."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, EOFError):
        return "closed"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{type(exc).__name__}: {exc}"[:80]


# --- I/O ---------------------------------------------------------------------------------------
Clock = Callable[[], float]


def _tcp_once(sock: socket.socket, spec: ProbeSpec, left: Callable[[], float]) -> str:
    sock.settimeout(left())
    sock.connect((spec.vip, spec.port))
    request = f"GET / HTTP/1.1\r\nHost: {spec.vip}\r\nConnection: close\r\n\r\n".encode()
    sock.settimeout(left())
    sock.sendall(request)
    data = b""
    while True:
        sock.settimeout(left())
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before a full response")
        data += chunk
        node = http_node(data)
        if node is not None:
            return node


def _udp_once(sock: socket.socket, spec: ProbeSpec, left: Callable[[], float], seq: int) -> str:
    sock.connect((spec.vip, spec.port))
    payload = f"probe {sock.getsockname()[1]} {seq}".encode()
    sock.send(payload)
    while True:
        sock.settimeout(left())
        node, _, echoed = sock.recv(65535).partition(b" ")
        if echoed == payload:  # anything else is a stale or foreign datagram: keep waiting
            return node.decode(errors="replace")


def request_once(spec: ProbeSpec, src: str, seq: int, end: float, clock: Clock) -> ProbeRecord:
    """One request from `src`; never raises for network errors."""
    stop = min(end, clock() + spec.timeout)

    def left() -> float:
        remaining = stop - clock()
        if remaining <= 0:
            raise TimeoutError("timed out")
        return remaining

    if clock() >= end:
        return ProbeRecord(src, None, spec.port, None, "deadline")
    kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
    sport: int | None = None
    family = socket.AF_INET6 if ":" in spec.vip else socket.AF_INET
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((src, 0))
            sport = int(sock.getsockname()[1])
            if spec.proto == "tcp":
                node = _tcp_once(sock, spec, left)
            else:
                node = _udp_once(sock, spec, left, seq)
        except (OSError, EOFError, ValueError) as exc:
            return ProbeRecord(src, sport, spec.port, None, classify(exc))
    return ProbeRecord(src, sport, spec.port, node, None)


def run_probe(spec: ProbeSpec, *, clock: Clock = time.monotonic) -> ProbeResult:
    """All requests of `spec`, `concurrency` at a time, finished by `spec.deadline`."""
    start = clock()
    end = start + spec.deadline
    jobs = [(src, i) for i in range(spec.per_source) for src in spec.sources]
    with ThreadPoolExecutor(max_workers=min(spec.concurrency, len(jobs))) as pool:
        records = list(pool.map(lambda job: request_once(spec, job[0], job[1], end, clock), jobs))
    return ProbeResult(tuple(records), clock() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clusterip.lab.probe")
    parser.add_argument("--vip", required=True)
    parser.add_argument("--proto", default="tcp", choices=PROTOS)
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--sources", required=True, help="A-B,C,... inside 198.18.0.0/16 or fdc1::/48"
    )
    parser.add_argument("--per-source", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float)
    args = parser.parse_args(argv)
    try:
        spec = ProbeSpec.make(
            vip=args.vip,
            proto=args.proto,
            port=args.port,
            sources=args.sources,
            per_source=args.per_source,
            timeout=args.timeout,
            concurrency=args.concurrency,
            deadline=args.deadline,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    print(run_probe(spec).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
