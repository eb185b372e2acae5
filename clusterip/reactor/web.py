"""The agent's HTTP port (`--metrics ADDR:PORT`, localhost unless an address is given):

    /              a live status page: one self-contained HTML file (no external assets)
    /status.json   the document the page shows: `clusterip status --json`'s, with recent events
    /metrics       Prometheus text, as before

The page shows members, weights and shares, this node's packet counters, guard and drain
windows and recent events. It shows no secret: no key, no key file path, no message content;
what it shows (addresses, node ids, counters) is what `clusterip status` shows any root user
on the node. The document comes from the agent's loop through its control socket, as for
`clusterip status`, at most twice a second however many pages are open.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clusterip.core.events import (
    Event,
    Notice,
    OwnershipChanged,
    PeerContinued,
    PeerDown,
    PeerUp,
    StateChanged,
)
from clusterip.reactor.metrics import Metrics
from clusterip.reactor.page import PAGE

log = logging.getLogger("clusterip.agent")
HISTORY = 100  # events kept in memory
DEFAULT_HOST = "127.0.0.1"
CACHE_S = 0.5
Source = Callable[[], dict[str, Any]]


def describe(event: Event) -> tuple[str, int | None, str] | None:
    """(kind, node id, text) of an event worth showing; None for the rest."""
    if isinstance(event, PeerUp):
        return "join", event.node_id, f"node {event.node_id} up at {event.address}"
    if isinstance(event, PeerDown):
        return "death", event.node_id, f"node {event.node_id} down ({event.reason})"
    if isinstance(event, PeerContinued):
        return "restart", event.node_id, f"node {event.node_id} restarted, continued"
    if isinstance(event, OwnershipChanged):
        text = (
            f"{len(event.owned)} buckets here (+{len(event.gained)}, "
            f"{len(event.orphaned)} from dead nodes, -{len(event.lost)})"
        )
        return "move", None, text
    if isinstance(event, StateChanged):
        return (
            "state",
            None,
            f"{event.old.name.lower()} -> {event.new.name.lower()} ({event.reason})",
        )
    if isinstance(event, Notice) and event.cause != "state":  # a state change: see above
        return "notice", None, event.text
    return None


class History:
    """The last HISTORY events the agent logged, with wall-clock times (for the page)."""

    def __init__(self, size: int = HISTORY, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self._clock = clock
        self._lock = threading.Lock()

    def add(self, vip: str, event: Event) -> None:
        what = describe(event)
        if what is None:
            return
        kind, node, text = what
        row = {"t": round(self._clock(), 3), "vip": vip, "kind": kind, "node": node, "text": text}
        with self._lock:
            self._events.append(row)

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._events))


def parse_bind(spec: str) -> tuple[str, int]:
    """`PORT`, `:PORT` or `ADDR:PORT` (settings checked the values): localhost by default."""
    host, _, port = spec.rpartition(":")
    return host or DEFAULT_HOST, int(port)


class StatusWeb:
    def __init__(self, metrics: Metrics, source: Source | None = None) -> None:
        self.metrics = metrics
        self.source = source or _from_control_socket
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def document(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > CACHE_S:
                doc = self.source()
                doc.setdefault("time", time.time())
                self._cache = (now, doc)
            return self._cache[1]

    def serve(self, spec: str) -> None:
        host, port = parse_bind(spec)
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        body = generate_latest(web.metrics.registry)
                        self._send(200, CONTENT_TYPE_LATEST, body)
                    elif path == "/status.json":
                        self._send(200, "application/json", json.dumps(web.document()).encode())
                    elif path in ("/", "/index.html"):
                        self._send(200, "text/html; charset=utf-8", render_page(web.document()))
                    else:
                        self._send(404, "text/plain", b"not found\n")
                except Exception as exc:  # no agent loop to answer (stopping): say so
                    self._send(503, "text/plain", f"unavailable: {exc}\n".encode())

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                return  # no access log in the agent's journal

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="status-web", daemon=True
        )
        self._thread.start()
        log.info("status page and metrics on http://%s:%d/", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _from_control_socket() -> dict[str, Any]:
    from clusterip.reactor.control import request

    doc = request("status", timeout=2.0)
    if "error" in doc:
        raise RuntimeError(doc["error"])
    return doc


def render_page(doc: dict[str, Any]) -> bytes:
    """The page with the current document inside (it renders at once, then polls)."""
    data = json.dumps(doc).replace("<", "\\u003c")  # nothing in it can close the script tag
    return PAGE.replace("/*INITIAL*/null", data).encode()
