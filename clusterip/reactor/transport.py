"""The heartbeat transport: UDP to a link-local multicast group, or to a list of peers.

The real side of the packet bus: `send(bytes)` to every peer, `recv()` what arrived. Bound to
the cluster interface, TTL 1: heartbeats never leave the segment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Protocol

from clusterip.config import ConfigError
from clusterip.core import defaults

DEFAULT_GROUP = defaults.GROUP
DEFAULT_PORT = defaults.PORT
MAX_DATAGRAM = 2048


def parse_group(text: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"bad heartbeat group {text!r}: expected e.g. {DEFAULT_GROUP}") from None
    if not addr.is_multicast:
        raise ConfigError(f"bad heartbeat group {text!r}: must be a multicast address (224/4)")
    return str(addr)


class Transport(Protocol):
    def open(self) -> None: ...
    def fileno(self) -> int: ...
    def send(self, data: bytes) -> None: ...
    def recv(self) -> list[tuple[bytes, str]]: ...
    def close(self) -> None: ...


class UdpTransport:
    def __init__(
        self,
        interface: str,
        *,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        peers: Sequence[str] = (),
    ) -> None:
        self.interface = interface
        self.group = group
        self.port = port
        self.peers = [str(ipaddress.IPv4Address(p)) for p in peers]
        self._sock: socket.socket | None = None

    def open(self) -> None:
        ifindex = socket.if_nametoindex(self.interface)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0"
            )
            sock.bind(("", self.port))
            if not self.peers:
                mreqn = struct.pack("4s4si", socket.inet_aton(self.group), b"\0" * 4, ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        for target in self.peers or [self.group]:
            # A full queue or an unreachable peer: the next heartbeat tries again.
            with contextlib.suppress(OSError):
                self._sock.sendto(data, (target, self.port))

    def recv(self) -> list[tuple[bytes, str]]:
        """Everything waiting now (non-blocking)."""
        assert self._sock is not None
        out: list[tuple[bytes, str]] = []
        while True:
            try:
                data, (addr, _port) = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return out
            out.append((data, addr))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class MemoryHub:
    """In-memory segment for unit tests: what one transport sends, every other one receives."""

    def __init__(self) -> None:
        self.inboxes: dict[str, list[tuple[bytes, str]]] = {}
        self.cut: set[str] = set()  # addresses whose traffic is lost (a partition)

    def transport(self, address: str) -> MemoryTransport:
        self.inboxes[address] = []
        return MemoryTransport(self, address)


class MemoryTransport:
    def __init__(self, hub: MemoryHub, address: str) -> None:
        self.hub = hub
        self.address = address

    def open(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def send(self, data: bytes) -> None:
        if self.address in self.hub.cut:
            return
        for addr, inbox in self.hub.inboxes.items():
            if addr != self.address and addr not in self.hub.cut:
                inbox.append((data, self.address))

    def recv(self) -> list[tuple[bytes, str]]:
        out = self.hub.inboxes[self.address]
        self.hub.inboxes[self.address] = []
        return out

    def close(self) -> None:
        pass
