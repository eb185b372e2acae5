"""Who may hold established flows: the pure bookkeeping behind drain and orphan RST."""

from __future__ import annotations

from clusterip.core.events import OwnershipChanged
from clusterip.core.handover import GUARD_TIME, ORPHAN_RESET_DELAY, Handover

B = 64


def handover(node: int = 1) -> Handover:
    h = Handover(node, B, drain_window=300.0)
    return h


def test_lost_to_a_live_node_drains_until_flows_are_gone() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({0}), lost={5: 2}), now=10.0)
    own = h.ownership(frozenset({0}), 10.0, None, timeout=300)
    assert own.draining == {6} and own.owned == {1}
    # A measurement from before the drain began proves nothing.
    assert h.ownership(frozenset({0}), 11.0, (9.0, {}), 300).draining == {6}
    assert h.ownership(frozenset({0}), 12.0, (11.5, {6: 3}), 300).draining == {6}
    assert h.ownership(frozenset({0}), 13.0, (12.5, {}), 300).draining == frozenset()


def test_drain_timeout_and_naive_mode() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset(), lost={5: 2}), now=10.0)
    assert h.ownership(frozenset(), 15.0, (14.0, {6: 1}), timeout=5).draining == frozenset()
    naive = Handover(1, B, 300.0, drain=False)
    naive.changed(OwnershipChanged(frozenset(), lost={5: 2}), now=10.0)
    assert naive.ownership(frozenset(), 10.0, None, 300).draining == frozenset()


def test_taken_from_a_dead_node_resets_only_after_the_delay() -> None:
    h = handover()
    ev = OwnershipChanged(frozenset({3}), gained={3: 2}, orphaned=frozenset({3}))
    assert h.changed(ev, now=10.0) == {3}
    assert h.ownership(frozenset({3}), 10.1, None, 300).orphaned == frozenset()
    assert h.ownership(frozenset({3}), 10.01 + ORPHAN_RESET_DELAY, None, 300).orphaned == {4}


def test_cold_start_and_join_are_not_orphans() -> None:
    h = handover(4)
    # Joining: "nobody" owned it in our fresh view, but node 2 does in the cluster's.
    ev = OwnershipChanged(frozenset({7}), gained={7: None}, orphaned=frozenset({7}))
    assert h.changed(ev, now=1.0) == set()


def test_false_alarm_of_a_handing_node_is_undone() -> None:
    h = handover(1)
    h.peer_up(2, 22, 0.0)
    h.changed(OwnershipChanged(frozenset({9}), gained={9: 2}), now=5.0)
    h.peer_down(2, 22, now=6.0, owned={10})
    assert 10 in h.orphaned
    h.peer_up(2, 22, now=6.1)  # same incarnation: it was only silent
    assert 10 not in h.orphaned
    assert h.ownership(frozenset({9}), 7.0, None, 300).orphaned == frozenset()


def test_kept_flows_book_and_announcer() -> None:
    import ipaddress

    from clusterip import config
    from clusterip.core.kept import KEPT_TTL, Announcer, KeptBook
    from clusterip.core.params import Cluster
    from clusterip.core.replay import ReplayGuard
    from clusterip.core.wire import MAX_KEPT, Replay, unpack

    cfg = config.build(vip="198.18.0.100", interface="eth0", total_nodes=1)
    cluster = Cluster.create(cfg, b"k" * 16, buckets=B)
    ann = Announcer(2, incarnation=7, cluster=cluster)
    flows = [(f"198.18.1.{i % 250 + 1}", 1000 + i, 1 + i % 4) for i in range(400)]
    assert ann.due(0.0, draining=True) and not ann.due(0.0, draining=False)
    datagrams = ann.messages(flows, draining={1, 2}, now=0.0)
    msgs = [unpack(d, cluster.key, fingerprint=cluster.fingerprint) for d in datagrams]
    assert len(msgs) == 2 and all(len(m.flows) <= MAX_KEPT for m in msgs)  # type: ignore[attr-defined]
    book = KeptBook(ReplayGuard())
    for m in msgs:
        book.take(m, now=0.0)  # type: ignore[arg-type]
    kept = book.current(0.5)
    assert kept == {(a, p) for a, p, b in flows if b in (1, 2)}
    assert ("198.18.1.1", 1000) in kept and all(isinstance(p, int) for _a, p in kept)
    try:
        book.take(msgs[0], now=1.0)  # type: ignore[arg-type]
        raise AssertionError("a replayed KEPT was taken")
    except Replay:
        pass
    # Nothing kept any more: one empty announcement clears the others' sets at once.
    assert ann.announced and ann.due(1.0, draining=False)
    (empty,) = ann.messages(flows, draining=set(), now=1.0)
    book.take(unpack(empty, cluster.key), now=1.0)  # type: ignore[arg-type]
    assert book.current(1.0) == frozenset() and not ann.due(2.0, draining=False)
    # Entries not refreshed expire, and a dead node's are forgotten.
    for d in ann.messages(flows, draining={3}, now=2.0):
        book.take(unpack(d, cluster.key), now=2.0)  # type: ignore[arg-type]
    assert book.current(2.0 + KEPT_TTL / 2)
    assert book.current(2.0 + KEPT_TTL + 0.1) == frozenset()
    for d in ann.messages(flows, draining={3}, now=9.0):
        book.take(unpack(d, cluster.key), now=9.0)  # type: ignore[arg-type]
    book.forget(2)
    assert book.current(9.0) == frozenset()
    assert ipaddress.IPv4Address("198.18.1.1")


def test_gained_from_a_live_node_is_guarded_for_a_while_and_while_flows_are_kept() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({7}), gained={7: 2}), now=10.0)
    assert h.ownership(frozenset({7}), 10.0, None, 300).guarded == {8}
    assert h.ownership(frozenset({7}), 10.0 + GUARD_TIME - 0.1, None, 300).guarded == {8}
    # Another node still announces kept flows: the guard stays past GUARD_TIME ...
    assert h.ownership(frozenset({7}), 30.0, None, 300, kept=True).guarded == {8}
    # ... and ends when nobody keeps anything any more; it does not come back.
    assert h.ownership(frozenset({7}), 31.0, None, 300).guarded == frozenset()
    assert h.ownership(frozenset({7}), 32.0, None, 300, kept=True).guarded == frozenset()


def test_an_orphan_is_guarded_until_its_reset_delay_then_reset() -> None:
    h = handover()
    ev = OwnershipChanged(frozenset({3}), gained={3: 2}, orphaned=frozenset({3}))
    h.changed(ev, now=10.0)
    early = h.ownership(frozenset({3}), 10.05, None, 300)
    assert early.guarded == {4} and early.orphaned == frozenset()
    late = h.ownership(frozenset({3}), 10.01 + ORPHAN_RESET_DELAY, None, 300)
    assert late.orphaned == {4} and late.guarded == frozenset()


def test_a_lost_bucket_is_no_longer_guarded() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({7}), gained={7: 2}), now=10.0)
    h.changed(OwnershipChanged(frozenset(), lost={7: 3}), now=11.0)
    own = h.ownership(frozenset(), 11.0, None, 300)
    assert own.guarded == frozenset() and own.draining == {8}
