"""The in-memory clock and network used by the simulations."""

from __future__ import annotations

import random

import pytest

from clusterip.core.bus import Bus, FakeClock, MemoryNetwork


def net(**kw: object) -> tuple[FakeClock, MemoryNetwork]:
    clock = FakeClock()
    return clock, MemoryNetwork(clock, random.Random(1), **kw)  # type: ignore[arg-type]


def test_fake_clock_only_moves_forward() -> None:
    c = FakeClock(5.0)
    c.advance(0.5)
    assert c.now() == 5.5
    c.set(6.0)
    with pytest.raises(ValueError):
        c.set(5.9)


def test_broadcast_with_delay_not_to_self() -> None:
    clock, n = net(delay=(0.01, 0.01))
    a, b, c = n.attach("a"), n.attach("b"), n.attach("c")
    bus: Bus = a
    bus.send(b"hi")
    assert b.recv() is None  # not arrived yet
    assert n.next_arrival() == pytest.approx(0.01)
    clock.set(0.01)
    assert b.recv() == (b"hi", "a") and c.recv() == (b"hi", "a")
    assert a.recv() is None and b.recv() is None
    a.send(b"only b", dest="b")
    clock.advance(0.01)
    assert b.recv() == (b"only b", "a") and c.recv() is None


def test_partition_and_heal() -> None:
    _, n = net(delay=(0.0, 0.0))
    a, b, c = n.attach("a"), n.attach("b"), n.attach("c")
    n.partition([["a", "b"]])  # c alone in the rest
    a.send(b"x")
    c.send(b"y")
    assert b.recv() == (b"x", "a") and c.recv() is None and a.recv() is None
    n.heal()
    c.send(b"z")
    assert a.recv() == (b"z", "c") and b.recv() == (b"z", "c")
    assert n.stats.cut == 3


def test_loss_is_random_but_seeded() -> None:
    _, n = net(loss=0.5, delay=(0.0, 0.0))
    a, b = n.attach("a"), n.attach("b")
    for _ in range(1000):
        a.send(b".")
    got = 0
    while b.recv() is not None:
        got += 1
    assert 400 < got < 600 and got + n.stats.lost == 1000


def test_reordering_with_jitter() -> None:
    clock, n = net(delay=(0.0, 0.1))
    a, b = n.attach("a"), n.attach("b")
    for i in range(50):
        a.send(bytes([i]))
    clock.set(1.0)
    order = []
    while (m := b.recv()) is not None:
        order.append(m[0][0])
    assert sorted(order) == list(range(50)) and order != sorted(order)


def test_detach_drops_and_validates() -> None:
    _, n = net(delay=(0.0, 0.0))
    a, b = n.attach("a"), n.attach("b")
    a.send(b"x")
    n.detach("b")
    assert b.recv() is None
    with pytest.raises(ValueError):
        n.attach("a")
    with pytest.raises(ValueError):
        n.set_loss(2.0)
    with pytest.raises(ValueError):
        n.set_delay(0.2, 0.1)
