"""The peer table on its own: the byte-compare fast path for unchanged heartbeats, changes that
matter (and those that do not), and what a peer that went silent keeps when it is back."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from clusterip.core.params import Params
from clusterip.core.peers import PeerTable
from clusterip.core.refusals import Refusals
from clusterip.core.wire import Ack, Heartbeat, Hello, NodeState
from tests.unit.core.agent_helpers import KEY, OTHER_KEY, cluster

P = Params()
_FIELDS = [f.name for f in fields(Heartbeat) if f.init]
C = cluster()
US = 1
OURS = 100  # our incarnation


def table() -> PeerTable:
    refusals = Refusals(dead_after=P.dead_after, tolerance=P.tolerance, log_every=10.0)
    t = PeerTable(node_id=US, incarnation=OURS, cluster=C, params=P, refusals=refusals)
    t.changed = False
    return t


def hb(
    seq: int, *, node: int = 2, inc: int = 20, acks: tuple[Ack, ...] = (), **kw: object
) -> bytes:
    msg = Heartbeat(
        node_id=node,
        vip=C.vip,
        fingerprint=C.fingerprint,
        key_id=C.key_id,
        incarnation=inc,
        seq=seq,
        members=((1, 1), (2, 1), (3, 1)),
        acks=acks or (Ack(US, OURS, 1, NodeState.ACTIVE, True), Ack(3, 30, 1)),
    )
    return replace(msg, **kw).pack(KEY)  # type: ignore[arg-type]


def test_an_unchanged_heartbeat_only_moves_the_time_it_was_heard() -> None:
    t = table()
    assert t.receive(hb(1), "10.0.0.2", 0.0) is not None  # new: decoded, taken in
    assert t.changed and t.peers[2].acks_us
    t.changed = False
    assert t.receive(hb(2), "10.0.0.2", 0.05) is None  # the fast path
    assert not t.changed and t.peers[2].last_heard == 0.05


def test_the_fast_path_still_authenticates_and_checks_the_sequence() -> None:
    t = table()
    t.served = True  # (a node that never served reconsiders passivity when refusing)
    t.receive(hb(5), "10.0.0.2", 0.0)
    t.changed = False
    forged = hb(6)[:-32] + bytes(32)  # the very same bytes, but no valid MAC
    assert t.receive(forged, "10.0.0.2", 0.05) is None
    assert t.peers[2].last_heard == 0.0 and t.refusals.stats.as_dict()["bad_mac"] == 1
    t.receive(hb(5), "10.0.0.2", 0.06)  # a replay
    assert t.peers[2].last_heard == 0.0 and t.refusals.stats.as_dict()["replay"] == 1
    other = Heartbeat.unpack(hb(7), KEY)
    t.receive(other.pack(OTHER_KEY), "10.0.0.2", 0.07)  # the same message, another key
    assert t.peers[2].last_heard == 0.0 and not t.changed


def test_our_own_heartbeat_sent_back_is_a_replay_and_changes_nothing() -> None:
    """The transport never loops our datagrams back (IP_MULTICAST_LOOP 0): one of ours that
    arrives is reflected or replayed, counted as a replay, and taken for nothing. Another
    incarnation of our id is a duplicate node id, as before."""
    t = table()
    t.served = True
    assert t.receive(hb(9, node=US, inc=OURS), "10.0.0.77", 0.0) is None
    assert t.refusals.stats.as_dict()["replay"] == 1 and not t.changed and US not in t.peers
    t.receive(hb(1, node=US, inc=OURS - 1), "10.0.0.77", 0.01)
    assert t.refusals.stats.as_dict()["duplicate_node_id"] == 1


def test_a_heartbeat_that_changes_only_what_we_hear_ourselves_decides_nothing() -> None:
    """Node 2's ack of node 3 ages: we hear node 3 directly (it acks us), so nothing a full
    tick decides can change; what node 2 relays is kept up to date all the same."""
    t = table()
    t.receive(hb(1, node=3, inc=30), "10.0.0.3", 0.0)
    t.receive(hb(1), "10.0.0.2", 0.0)
    t.relay(0.0)  # the full tick: node 3 is heard directly
    t.changed = False
    aged = (Ack(US, OURS, 1, NodeState.ACTIVE, True), Ack(3, 30, 1, age_ms=100))
    assert t.receive(hb(2, acks=aged), "10.0.0.2", 0.05) is not None
    assert not t.changed
    assert t.peers[2].relay_by_id.get(3) is None  # not a member in its view: not relayed
    assert t.peers[2].last_heard == 0.05
    t.receive(hb(3, acks=aged), "10.0.0.2", 0.1)  # and the next one takes the fast path
    assert t.peers[2].last_heard == 0.1 and not t.changed


def test_a_heartbeat_that_changes_what_matters_to_us_asks_for_a_full_tick() -> None:
    t = table()
    t.receive(hb(1), "10.0.0.2", 0.0)
    t.relay(0.0)
    for seq, change in enumerate(
        [
            {"state": NodeState.DRAINING},
            {"weight": 3},
            {"members": ((1, 1), (2, 1))},
            {"kept": 7},
            {"acks": (Ack(US, OURS, 1, NodeState.ACTIVE, True, age_ms=100),)},  # our age
            {"acks": (Ack(3, 30, 1, member=True),)},  # no longer hears us; relays 3
        ],
        start=2,
    ):
        t.changed = False
        t.receive(hb(seq, **change), "10.0.0.2", 0.01 * seq)
        assert t.changed, change


def test_an_incarnation_that_acked_us_before_its_silence_is_verified_when_back() -> None:
    """A partition: node 2 timed out here and was dropped; back, its first heartbeats do not
    ack us yet (it dropped us too). Its incarnation acked ours before, and the replay guard saw
    its sequence go on: it is no recording, so what it claims counts at once."""
    t = table()
    t.receive(hb(1), "10.0.0.2", 0.0)
    assert t.peers[2].verified
    t.expire(10.0)
    assert 2 not in t.peers
    t.receive(hb(50, acks=(Ack(3, 30, 1),)), "10.0.0.2", 11.0)
    assert t.peers[2].verified and not t.peers[2].acks_us
    t.receive(hb(1, inc=21, acks=(Ack(3, 30, 1),)), "10.0.0.2", 12.0)  # restarted since
    assert not t.peers[2].verified


def test_a_successor_whose_hello_overtakes_the_restart_continues_its_predecessor() -> None:
    """A planned restart with no gap: the successor's HELLO (naming the incarnation it
    continues) may arrive before the RESTART its predecessor sent just before. It continues
    that incarnation all the same: no PeerDown (which would orphan its buckets elsewhere)."""
    t = table()
    t.receive(hb(1), "10.0.0.2", 0.0)
    t.events.clear()
    hello = Heartbeat.unpack(hb(1, inc=21, previous=20, acks=(Ack(3, 30, 1),)), KEY)
    t.receive(Hello(**{f: getattr(hello, f) for f in _FIELDS}).pack(KEY), "10.0.0.2", 0.01)
    assert [type(e).__name__ for e in t.events] == ["PeerContinued"]
    assert t.peers[2].incarnation == 21 and t.peers[2].continuing


def test_the_successor_of_a_node_known_only_through_others_continues_it() -> None:
    """We never heard node 2 ourselves (one-way loss, or it restarted while we were cut off),
    but a peer relays it: its successor's HELLO continues it (no PeerDown), and since we
    cannot know what its predecessor held, its view counts as unknown until it has one."""
    t = table()
    t.alive[2] = 20  # relayed, as the membership's last full tick found
    hello = Heartbeat.unpack(hb(1, inc=21, previous=20, acks=(Ack(3, 30, 1),), members=()), KEY)
    t.receive(Hello(**{f: getattr(hello, f) for f in _FIELDS}).pack(KEY), "10.0.0.2", 0.01)
    assert [type(e).__name__ for e in t.events] == ["PeerUp", "PeerContinued"]
    assert t.peers[2].continuing and t.peers[2].view_unknown
    t.receive(hb(2, inc=21, acks=(Ack(3, 30, 1),)), "10.0.0.2", 0.02)  # its own view now
    assert not t.peers[2].view_unknown


def test_a_relayed_node_is_heard_as_late_as_its_relay_allows_and_no_earlier() -> None:
    """Ages in acks are rounded down: the relayed node was heard at the latest `age` before
    the relaying heartbeat, so it expires here no earlier than where it is heard (a node that
    only knows it through others must not reset its flows first). A node we heard ourselves
    until it went silent stays dead unless a relay says it is heard right now (age 0: one-way
    loss), not that it was heard a while ago (it is going silent there too)."""
    t = table()
    relays = (Ack(US, OURS, 1, NodeState.ACTIVE, True), Ack(5, 50, 1, member=True, age_ms=100))
    t.receive(hb(1, acks=relays), "10.0.0.2", 1.0)
    t.relay(1.0)
    assert t.relayed[5].heard == pytest.approx(0.9)
    assert t.relay_expiries() == [pytest.approx(0.9 + P.dead_after)]
    t.silent[5] = "timeout"  # we heard node 5 ourselves, and it went silent
    t.relay(1.0)
    assert 5 not in t.relayed
    fresh = (Ack(US, OURS, 1, NodeState.ACTIVE, True), Ack(5, 50, 1, member=True))
    t.receive(hb(2, acks=fresh), "10.0.0.2", 1.05)
    t.relay(1.05)
    assert t.relayed[5].heard == pytest.approx(1.05)  # one-way loss: alive
