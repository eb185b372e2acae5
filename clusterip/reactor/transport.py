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
from clusterip.core.bus import Bus

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


class Transport(Bus, Protocol):
    """The agent's transport: the core's Bus, plus what a select loop needs. The in-memory
    fake is clusterip.core.bus.MemoryBus."""

    def open(self) -> None: ...
    def fileno(self) -> int: ...
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

    @property
    def address(self) -> str:
        return self.interface

    def send(self, data: bytes, dest: str | None = None) -> None:
        assert self._sock is not None
        for target in [dest] if dest else self.peers or [self.group]:
            # A full queue or an unreachable peer: the next heartbeat tries again.
            with contextlib.suppress(OSError):
                self._sock.sendto(data, (target, self.port))

    def recv(self) -> tuple[bytes, str] | None:
        """The next datagram waiting (non-blocking), or None."""
        assert self._sock is not None
        try:
            data, (addr, _port) = self._sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return None
        return data, addr

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
