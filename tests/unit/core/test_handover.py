"""Who may hold established flows: the pure bookkeeping behind drain, guard and orphan RST;
and the KEPT announcements (1-based buckets throughout)."""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

import pytest

from clusterip import config
from clusterip.core.events import OwnershipChanged
from clusterip.core.fingerprint import key_id
from clusterip.core.handover import AFTER_DEATH, GUARD_TIME, ORPHAN_RESET_DELAY, Handover
from clusterip.core.kept import KEPT_TTL, REFRESH, Announcer, KeptBook
from clusterip.core.ownership import Ownership
from clusterip.core.params import Cluster
from clusterip.core.wire import Kept, max_kept, unpack

B = 64


def handover(node: int = 1) -> Handover:
    return Handover(node, B, drain_window=300.0)


def test_lost_to_a_live_node_drains_until_flows_are_gone() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({1}), lost={6: 2}), now=10.0)
    own = h.ownership(frozenset({1}), 10.0, None, timeout=300)
    assert own.draining == {6} and own.owned == {1}
    # A measurement from before the drain began proves nothing.
    assert h.ownership(frozenset({1}), 11.0, (9.0, {}), 300).draining == {6}
    assert h.ownership(frozenset({1}), 12.0, (11.5, {6: 3}), 300).draining == {6}
    assert h.ownership(frozenset({1}), 13.0, (12.5, {}), 300).draining == frozenset()


def test_drain_timeout_and_naive_mode() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset(), lost={6: 2}), now=10.0)
    assert h.ownership(frozenset(), 15.0, (14.0, {6: 1}), timeout=5).draining == frozenset()
    naive = Handover(1, B, 300.0, drain=False)
    naive.changed(OwnershipChanged(frozenset(), lost={6: 2}), now=10.0)
    assert naive.ownership(frozenset(), 10.0, None, 300).draining == frozenset()


def test_lost_to_nobody_or_when_stopping_does_not_drain() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset(), lost={6: None}), now=10.0)  # nobody takes it
    assert h.ownership(frozenset(), 10.0, None, 300).draining == frozenset()
    h.changed(OwnershipChanged(frozenset(), lost={7: 2}), now=11.0)
    h.changed(OwnershipChanged(frozenset(), lost={8: 3}, drain=False), now=12.0)
    # isolated, passive or leaving: the others take every flow over, this node keeps none
    assert h.ownership(frozenset(), 12.0, None, 300).draining == frozenset()


def test_taken_from_a_dead_node_resets_only_after_the_delay() -> None:
    h = handover()
    ev = OwnershipChanged(frozenset({4}), gained={4: 2}, orphaned=frozenset({4}))
    assert h.changed(ev, now=10.0) == {4}
    assert h.ownership(frozenset({4}), 10.1, None, 300).orphaned == frozenset()
    assert h.ownership(frozenset({4}), 10.0 + ORPHAN_RESET_DELAY, None, 300).orphaned == {4}
    assert min(h.deadlines(10.1, 300)) == pytest.approx(10.0 + ORPHAN_RESET_DELAY)


def test_cold_start_and_join_are_not_orphans() -> None:
    h = handover(4)
    # Joining: "nobody" owned it in our fresh view, but node 2 does in the cluster's.
    ev = OwnershipChanged(frozenset({8}), gained={8: None}, orphaned=frozenset({8}))
    assert h.changed(ev, now=100.0) == set()
    assert h.ownership(frozenset({8}), 200.0, None, 300).orphaned == frozenset()


def test_false_alarm_of_a_handing_node_is_undone() -> None:
    h = handover(1)
    h.peer_up(2, 22, 0.0)
    h.changed(OwnershipChanged(frozenset({10}), gained={10: 2}), now=5.0)
    h.peer_down(2, 22, now=6.0, owned=frozenset({11}))
    assert 11 in h.orphaned
    h.peer_up(2, 22, now=6.1)  # same incarnation: it was only silent
    assert 11 not in h.orphaned
    assert h.ownership(frozenset({10, 11}), 7.0, None, 300).orphaned == frozenset()


def test_a_new_incarnation_does_not_undo_the_orphans_of_the_old_one() -> None:
    h = handover(1)
    h.peer_down(2, 22, now=6.0, owned=frozenset({11}))
    h.peer_up(2, 23, now=6.1)  # restarted: the old process's flows are gone for good
    assert h.ownership(frozenset({11}), 7.0, None, 300).orphaned == {11}


def test_a_continued_peer_keeps_its_orphans_undoable() -> None:
    """Planned restart: the successor continues the old incarnation; if it turns out the old
    one was only silent, the successor's PeerUp undoes the orphaning."""
    h = handover(1)
    h.peer_down(2, 22, now=6.0, owned=frozenset({11}))
    h.continued(2, 22, 23)
    h.peer_up(2, 23, now=6.1)
    assert h.ownership(frozenset({11}), 7.0, None, 300).orphaned == frozenset()


def test_buckets_gained_soon_after_a_death_are_orphans_later_ones_guarded() -> None:
    h = handover(1)
    h.peer_down(3, 33, now=10.0, owned=frozenset())
    h.changed(OwnershipChanged(frozenset({5}), gained={5: 2}), now=10.0 + AFTER_DEATH / 2)
    h.changed(OwnershipChanged(frozenset({5, 6}), gained={6: 2}), now=11.0 + AFTER_DEATH)
    own = h.ownership(frozenset({5, 6}), 11.0 + AFTER_DEATH, None, 300)
    assert own.orphaned == {5} and own.guarded == {6}


def test_gained_from_a_live_node_is_guarded_for_a_while_and_while_peers_drain() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({8}), gained={8: 2}), now=10.0)
    assert h.ownership(frozenset({8}), 10.0, None, 300).guarded == {8}
    assert h.ownership(frozenset({8}), 10.0 + GUARD_TIME - 0.1, None, 300).guarded == {8}
    # A live peer still drains (its heartbeat flag): the guard stays past GUARD_TIME ...
    late = h.ownership(frozenset({8}), 30.0, None, 300, others_draining=True)
    assert late.guarded == {8} and late.orphaned == frozenset()
    # ... and ends when nobody drains any more; it does not come back.
    assert h.ownership(frozenset({8}), 31.0, None, 300).guarded == frozenset()
    assert h.ownership(frozenset({8}), 32.0, None, 300, others_draining=True).guarded == set()


def test_an_orphan_is_guarded_until_its_reset_delay_then_reset() -> None:
    h = handover()
    ev = OwnershipChanged(frozenset({4}), gained={4: 2}, orphaned=frozenset({4}))
    h.changed(ev, now=10.0)
    early = h.ownership(frozenset({4}), 10.05, None, 300)
    assert early.guarded == {4} and early.orphaned == frozenset()
    late = h.ownership(frozenset({4}), 10.0 + ORPHAN_RESET_DELAY, None, 300)
    assert late.orphaned == {4} and late.guarded == frozenset()


def test_no_resets_while_a_draining_peer_has_not_said_what_it_keeps() -> None:
    """A RST for a flow a live peer keeps would break it: while a draining peer's KEPT
    announcement is missing, orphans stay guarded (a lost announcement delays a RST, it never
    resets a live node's flow); once it is known, the resets come."""
    h = handover()
    h.peer_down(3, 33, now=10.0, owned=frozenset({4, 5}))
    later = 10.0 + 5 * ORPHAN_RESET_DELAY
    waiting = h.ownership(frozenset({4, 5}), later, None, 300, unannounced=True)
    assert waiting.orphaned == frozenset() and waiting.guarded == {4, 5}
    known = h.ownership(frozenset({4, 5}), later, None, 300, kept=frozenset({("198.51.100.1", 9)}))
    assert known.orphaned == {4, 5} and known.kept == {("198.51.100.1", 9)}


def test_a_lost_bucket_is_no_longer_guarded_nor_orphaned() -> None:
    h = handover()
    h.changed(OwnershipChanged(frozenset({8, 9}), gained={8: 2, 9: 2}), now=10.0)
    h.peer_down(2, 22, now=10.5, owned=frozenset({9}))
    h.changed(OwnershipChanged(frozenset(), lost={8: 3, 9: 3}), now=11.0)
    own = h.ownership(frozenset(), 11.0, None, 300)
    assert own.guarded == frozenset() and own.orphaned == frozenset()
    assert own.draining == {8, 9}


def test_ownership_is_always_a_valid_datapath_state() -> None:
    """Whatever the order of events, what the datapath gets passes Ownership's own checks
    (orphaned and guarded within owned, never both; nothing owned and draining)."""
    h = handover()
    events: list[Any] = [
        ("changed", OwnershipChanged(frozenset({1, 2}), gained={1: 2, 2: None})),
        ("down", (2, 22, frozenset({1, 2}))),
        ("changed", OwnershipChanged(frozenset({2}), lost={1: 3})),
        ("changed", OwnershipChanged(frozenset({1, 2}), gained={1: 3}, orphaned=frozenset({1}))),
        ("up", (2, 22)),
    ]
    for perm in itertools.permutations(events):
        h = handover()
        owned: frozenset[int] = frozenset()
        for t, (what, arg) in enumerate(perm):
            if what == "changed":
                h.changed(arg, float(t))
                owned = arg.owned
            elif what == "down":
                h.peer_down(arg[0], arg[1], float(t), owned)
            else:
                h.peer_up(arg[0], arg[1], float(t))
            for later in (t, t + ORPHAN_RESET_DELAY, t + GUARD_TIME):
                own = h.ownership(owned, later, None, 300)
                assert isinstance(own, Ownership) and own.owned == owned


def test_adopt_continues_a_predecessors_datapath() -> None:
    h = handover()
    before = Ownership(
        B,
        frozenset({1, 2, 3}),
        draining=frozenset({9}),
        orphaned=frozenset({3}),
        guarded=frozenset({2}),
    )
    h.adopt(before, now=50.0)
    own = h.ownership(frozenset({1, 2, 3}), 50.0, None, 300)
    assert own.draining == {9} and own.guarded == {2}
    assert own.orphaned == {3}  # its reset delay had already passed: no second wait


# ----- KEPT: what this node keeps, what the others keep ------------------------------------


def cluster(vip: str = "198.18.0.100") -> Cluster:
    address = ipaddress.ip_address(vip)
    if address.version == 6:  # the configuration does not take IPv6 VIPs yet; the core does
        key = b"k" * 16
        return Cluster(address, key, bytes(8), key_id(key))
    cfg = config.build(vip=vip, interface="eth0", total_nodes=1)
    return Cluster.create(cfg, b"k" * 16, buckets=B)


class Headers:
    """The header-fields callable an Announcer takes: one sequence for every message."""

    def __init__(self, c: Cluster, node: int = 2) -> None:
        self.c, self.node, self.seq = c, node, itertools.count(1)

    def __call__(self) -> dict[str, object]:
        return {
            "node_id": self.node,
            "vip": self.c.vip,
            "fingerprint": self.c.fingerprint,
            "key_id": self.c.key_id,
            "incarnation": 7,
            "seq": next(self.seq),
        }


def announce(ann: Announcer, flows: Any, draining: set[int], now: float, h: Headers) -> list[Kept]:
    msgs = ann.messages(flows, frozenset(draining), now, h)
    back = [unpack(m.pack(ann.cluster.key), ann.cluster.key) for m in msgs]
    assert back == msgs  # what goes on the wire is what was built
    return msgs  # type: ignore[return-value]


def test_announcer_splits_into_datagrams_and_says_when_nothing_is_kept() -> None:
    c = cluster()
    ann, h = Announcer(c), Headers(c)
    flows = [(f"198.18.1.{i % 250 + 1}", 1000 + i, 1 + i % 4) for i in range(400)]
    assert ann.due(0.0, draining=True) and not ann.due(0.0, draining=False)
    msgs = announce(ann, flows, {1, 2}, 0.0, h)
    assert len(msgs) == 2 and all(len(m.flows) <= max_kept(c.vip) for m in msgs)
    assert [(m.part, m.parts) for m in msgs] == [(0, 2), (1, 2)]
    assert [m.seq for m in msgs] == [1, 2]  # one sequence with everything else the node sends
    sent = {(str(a), p, b) for m in msgs for a, p, b in m.flows}
    assert sent == {f for f in flows if f[2] in (1, 2)}  # buckets stay 1-based on the wire
    assert not ann.due(REFRESH / 2, draining=True) and ann.due(REFRESH, draining=True)
    assert ann.next_due(True) == pytest.approx(REFRESH) and ann.next_due(False) is None
    # Nothing kept any more: one empty announcement, so that the others forget at once.
    assert ann.announced and ann.due(1.0, draining=False)
    (empty,) = announce(ann, flows, set(), 1.0, h)
    assert empty.flows == () and (empty.part, empty.parts) == (0, 1)
    assert not ann.announced and not ann.due(2.0, draining=False)


def test_announcer_of_an_ipv6_vip_sends_ipv6_flows() -> None:
    c = cluster("2001:db8::10")
    ann, h = Announcer(c), Headers(c)
    flows = [(f"2001:db8:1::{i:x}", 2000 + i, 1 + i % 2) for i in range(1, 100)]
    msgs = announce(ann, flows, {1}, 0.0, h)
    assert len(msgs) == -(-len([f for f in flows if f[2] == 1]) // max_kept(c.vip))
    assert all(isinstance(a, ipaddress.IPv6Address) for m in msgs for a, _p, _b in m.flows)
    book = KeptBook()
    for m in msgs:
        book.take(m, 0.0)
    assert book.current(0.0) == {(a, p) for a, p, b in flows if b == 1}


def test_kept_book_takes_forgets_and_expires() -> None:
    c = cluster()
    ann, h = Announcer(c), Headers(c)
    flows = [(f"198.18.1.{i % 250 + 1}", 1000 + i, 1 + i % 4) for i in range(400)]
    book = KeptBook()
    for m in announce(ann, flows, {1, 2}, 0.0, h):
        book.take(m, now=0.0)
    kept = book.current(0.5)
    assert kept == {(a, p) for a, p, b in flows if b in (1, 2)}
    assert all(isinstance(p, int) for _a, p in kept) and book.announcers() == {2}
    (empty,) = announce(ann, flows, set(), 1.0, h)
    book.take(empty, now=1.0)
    assert book.current(1.0) == frozenset()
    # Entries not refreshed expire, and a dead node's are forgotten.
    for m in announce(ann, flows, {3}, 2.0, h):
        book.take(m, now=2.0)
    assert book.current(2.0 + KEPT_TTL / 2)
    assert book.deadline() == pytest.approx(2.0 + KEPT_TTL)
    assert book.current(2.0 + KEPT_TTL + 0.1) == frozenset()
    for m in announce(ann, flows, {3}, 9.0, h):
        book.take(m, now=9.0)
    book.forget(2)
    assert book.current(9.0) == frozenset() and book.announcers() == frozenset()


def test_a_dead_nodes_kept_flows_are_forgotten_when_its_orphans_reset() -> None:
    """A node declared dead keeps its flows dropped elsewhere until the RST delay of its
    orphans: if a stall made it look dead, it still answers them, and nobody else may."""
    c = cluster()
    ann, h = Announcer(c), Headers(c)
    flows = [(f"198.18.1.{i + 1}", 5000 + i, 1) for i in range(10)]
    book = KeptBook()
    for m in announce(ann, flows, {1}, 0.0, h):
        book.take(m, now=0.0)
    book.forget(2, at=1.0 + ORPHAN_RESET_DELAY)  # PeerDown at 1.0
    assert book.current(1.0 + ORPHAN_RESET_DELAY / 2) == {(a, p) for a, p, _b in flows}
    assert book.deadline() == pytest.approx(1.0 + ORPHAN_RESET_DELAY)
    assert book.current(1.0 + ORPHAN_RESET_DELAY + 0.01) == frozenset()
    assert book.announcers() == frozenset()


def test_a_shorter_announcement_drops_the_parts_it_no_longer_has() -> None:
    c = cluster()
    ann, h = Announcer(c), Headers(c)
    many = [(f"198.18.1.{i % 250 + 1}", 1000 + i, 1) for i in range(300)]
    book = KeptBook()
    for m in announce(ann, many, {1}, 0.0, h):
        book.take(m, 0.0)
    (one,) = announce(ann, many[:3], {1}, 1.0, h)
    book.take(one, 1.0)
    assert book.current(1.0) == {(a, p) for a, p, _b in many[:3]}
