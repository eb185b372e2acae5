"""Refusal bookkeeping: counters, passivity windows, report, duplicate ids."""

from __future__ import annotations

from clusterip.core.refusals import Refusals
from clusterip.core.wire import BadMac, ForeignFingerprint, Malformed, Replay


def refusals() -> Refusals:
    return Refusals(dead_after=0.2, tolerance=4, log_every=10.0)


def test_only_bad_mac_and_foreign_fingerprint_make_passive() -> None:
    r = refusals()
    passive, notice = r.refuse(Replay("late"), "10.0.0.2", 0.0, node_id=2)
    assert not passive and notice is not None and "10.0.0.2 (node 2)" in notice.text
    assert r.refuse(Replay("again"), "10.0.0.2", 0.1, node_id=2) == (False, None)  # limited
    passive, notice = r.refuse(Malformed("short"), "10.0.0.3", 0.0)
    assert not passive and notice is not None and notice.cause == "malformed"
    assert r.passive_reason(0.0, has_valid_peer=False) is None
    passive, notice = r.refuse(BadMac("other key"), "10.0.0.9", 1.0, node_id=9, interval_ms=50)
    assert passive and notice is not None and notice.level == "warning"
    why = r.passive_reason(1.0, has_valid_peer=False)
    assert why is not None and "10.0.0.9" in why and "bad mac" in why
    assert r.passive_reason(1.0, has_valid_peer=True) is None  # a real member is heard
    assert r.passive_reason(1.2, has_valid_peer=False) is None  # one detection time later
    assert r.stats.as_dict()["bad_mac"] == 1 and r.stats.total == 4


def test_hold_follows_a_slow_foreign_sender() -> None:
    r = refusals()
    r.refuse(ForeignFingerprint("fp"), "10.0.0.9", 0.0, node_id=9, interval_ms=1000)
    assert r.passive_reason(3.9, has_valid_peer=False) is not None  # 1 s x 4
    assert r.deadlines(0.0) == [4.0]
    assert r.passive_reason(4.0, has_valid_peer=False) is None


def test_duplicate_id_is_passive_even_with_valid_peers() -> None:
    r = refusals()
    r.duplicate("node id 1 is also used by 10.0.0.7", 50, 0.0)
    assert r.passive_reason(0.1, has_valid_peer=True) == "node id 1 is also used by 10.0.0.7"
    assert r.passive_reason(0.2, has_valid_peer=True) is None


def test_report_most_recent_first_with_counts() -> None:
    r = refusals()
    for t in range(3):
        r.refuse(BadMac("x"), "10.0.0.9", float(t), node_id=9)
    r.refuse(Replay("y"), "10.0.0.2", 5.0, node_id=2)
    first, second = r.report()
    assert (first.address, first.cause, first.count) == ("10.0.0.2", "replay", 1)
    assert (second.address, second.node_id, second.count) == ("10.0.0.9", 9, 3)
