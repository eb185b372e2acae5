"""The agent's control socket: an abstract unix socket, so scoped to the network namespace.

One request line in, one JSON document out. Only root peers are served (SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clusterip.config import ConfigError

SOCKET_NAME = "\0clusterip-agent"
MAX_REQUEST = 4096


@dataclass(frozen=True)
class Later:
    """A reply that reads the kernel (sockets, counters): computed in a thread of its own, so
    that the agent's loop, which must send heartbeats on time, never waits for it."""

    compute: Callable[[], dict[str, Any]]


Handler = Callable[[str], "dict[str, Any] | Later"]


class NoAgent(RuntimeError):
    """No agent listens in this network namespace."""


class AgentRunning(ConfigError):
    """Another agent already serves this network namespace (nothing was changed)."""


class ControlServer:
    def __init__(self, name: str = SOCKET_NAME) -> None:
        self.name = name
        self._sock: socket.socket | None = None

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.name)
        except OSError as exc:
            sock.close()
            raise AgentRunning(
                "another agent already runs in this network namespace (its control socket "
                f"is taken: {exc.strerror}); nothing was changed"
            ) from None
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def serve_one(self, handler: Handler) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return
        conn.settimeout(1.0)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        reply: dict[str, Any] | Later
        if uid != 0:
            reply = {"error": "permission denied: root only"}
        else:
            try:
                request = conn.recv(MAX_REQUEST).decode(errors="replace").strip()
                reply = handler(request)
            except Exception as exc:  # a bad request must not stop the agent
                reply = {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(reply, Later):
            threading.Thread(target=_answer, args=(conn, reply), daemon=True).start()
        else:
            _send(conn, reply)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _answer(conn: socket.socket, later: Later) -> None:
    try:
        reply = later.compute()
    except Exception as exc:  # as in serve_one
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    _send(conn, reply)


def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
    with conn, contextlib.suppress(OSError):
        conn.sendall(json.dumps(reply).encode())


def request(command: str, name: str = SOCKET_NAME, timeout: float = 3.0) -> dict[str, Any]:
    """Ask the agent of this network namespace; raises NoAgent when there is none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoAgent("no agent runs in this network namespace") from None
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    return data
