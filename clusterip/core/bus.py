"""The agent's one transport seam, with its in-memory fake; and the clock.

- `Clock`: `now()` in seconds (monotonic in production: `time.monotonic`). `FakeClock` is set
  by hand.
- `Bus`: sends a datagram to the cluster (`dest=None`: the multicast group or every configured
  peer; or one address) and hands out received ones (`recv()`, non-blocking, None when there
  is none). The production bus is clusterip.reactor.transport.UdpTransport; `MemoryNetwork`
  connects many `MemoryBus` in memory, with loss, delay (hence reordering), partitions and
  one-way cuts, all driven by a seeded `random.Random` and the fake clock. The simulator and
  the reactor's unit tests both use it.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class FakeClock:
    """A clock that moves only when told to (never backwards)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError(f"clock cannot go back from {self._now} to {when}")
        self._now = when

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)


class Bus(Protocol):
    @property
    def address(self) -> str: ...

    def send(self, data: bytes, dest: str | None = None) -> None: ...

    def recv(self) -> tuple[bytes, str] | None: ...


_Flight = tuple[float, int, str, str, bytes]  # (arrival, order, dest, src, data)


@dataclass
class NetStats:
    sent: int = 0  # datagrams handed to the network (one per send call)
    lost: int = 0  # copies dropped by loss
    cut: int = 0  # copies dropped by a partition
    delivered: int = 0  # copies handed to a receiver


class MemoryNetwork:
    """A broadcast domain in memory: every attached bus hears every datagram (unless lost,
    partitioned away, or addressed to another bus)."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        *,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.0002, 0.001),
        loopback: bool = False,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.loopback = loopback
        self.stats = NetStats()
        self._flights: list[_Flight] = []
        self._arrived: dict[str, deque[tuple[bytes, str]]] = {}
        self._group: dict[str, int] = {}
        self._cut: set[tuple[str, str]] = set()  # (from, to) pairs that lose everything
        self.topology = 0  # grows whenever who hears whom changes (partition, heal, cut)
        self.faulty = False  # there was loss, a partition or a cut at some point
        self._order = 0
        self.set_loss(loss)
        self.set_delay(*delay)

    def set_loss(self, loss: float) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss must be a probability")
        self.loss = loss
        self.faulty = self.faulty or loss > 0

    def set_delay(self, low: float, high: float) -> None:
        if not 0.0 <= low <= high:
            raise ValueError("delay must satisfy 0 <= low <= high")
        self.delay = (low, high)

    def attach(self, address: str) -> MemoryBus:
        if address in self._arrived:
            raise ValueError(f"address {address} already attached")
        self._arrived[address] = deque()
        return MemoryBus(self, address)

    def detach(self, address: str) -> None:
        """The node is gone: what arrived for it and was not read is dropped."""
        self._arrived.pop(address, None)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only addresses in the same group hear each other; unlisted ones form one more group."""
        self._group = {addr: i for i, group in enumerate(groups) for addr in group}
        self.topology += 1
        self.faulty = True

    def heal(self) -> None:
        self._group = {}
        self._cut = set()
        self.topology += 1

    def cut(self, src: str, dst: str, *, on: bool = True) -> None:
        """Lose everything `src` sends to `dst` (one way), or stop losing it."""
        if on:
            self._cut.add((src, dst))
            self.faulty = True
        else:
            self._cut.discard((src, dst))
        self.topology += 1

    def connected(self, a: str, b: str) -> bool:
        """Whether `b` hears `a` (and, for a partition, the other way round)."""
        return self._group.get(a, -1) == self._group.get(b, -1) and (a, b) not in self._cut

    def mutual(self, a: str, b: str) -> bool:
        return self.connected(a, b) and self.connected(b, a)

    def deliver(self, src: str, dst: str, data: bytes) -> None:
        """A datagram from a host that is no member of this network (a hostile sender)."""
        box = self._arrived.get(dst)
        if box is not None:
            self._order += 1
            at = self.clock.now() + self.rng.uniform(*self.delay)
            heapq.heappush(self._flights, (at, self._order, dst, src, data))

    def transmit(self, src: str, data: bytes, dest: str | None) -> None:
        self.stats.sent += 1
        now = self.clock.now()
        targets = [dest] if dest is not None else list(self._arrived)
        low, high = self.delay
        for target in targets:
            if target not in self._arrived or (target == src and not self.loopback):
                continue
            if not self.connected(src, target):
                self.stats.cut += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                self.stats.lost += 1
                continue
            self._order += 1
            at = now + self.rng.uniform(low, high)
            heapq.heappush(self._flights, (at, self._order, target, src, data))

    def next_arrival(self) -> float | None:
        """When the next datagram in flight arrives (None: nothing in flight)."""
        return self._flights[0][0] if self._flights else None

    def arrive(self) -> set[str]:
        """Move every datagram due by now to its receiver; the addresses that got one."""
        now = self.clock.now()
        got: set[str] = set()
        flights = self._flights
        while flights and flights[0][0] <= now:
            _, _, dest, src, data = heapq.heappop(flights)
            box = self._arrived.get(dest)
            if box is not None:
                box.append((data, src))
                self.stats.delivered += 1
                got.add(dest)
        return got

    def take(self, address: str) -> tuple[bytes, str] | None:
        if self._flights and self._flights[0][0] <= self.clock.now():
            self.arrive()
        box = self._arrived.get(address)
        return box.popleft() if box else None


class MemoryBus:
    """One node's end of a MemoryNetwork (implements Bus)."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self._address = address

    @property
    def address(self) -> str:
        return self._address

    def send(self, data: bytes, dest: str | None = None) -> None:
        self._network.transmit(self._address, data, dest)

    def recv(self) -> tuple[bytes, str] | None:
        """The next datagram that has arrived by now, with its source; None if none."""
        return self._network.take(self._address)

    # What the reactor's select loop asks of a transport (nothing to do in memory).
    def open(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass
