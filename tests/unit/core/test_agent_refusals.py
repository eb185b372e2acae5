"""Refusal bookkeeping: counters, the passive rule (a serving node is never silenced, a new one
waits a bounded time unless it is the odd one), report, duplicate ids."""

from __future__ import annotations

import ipaddress

import pytest

from clusterip.core.fingerprint import key_id
from clusterip.core.refusals import Refusals
from clusterip.core.wire import (
    BadMac,
    ForeignFingerprint,
    Header,
    Malformed,
    MsgType,
    NodeState,
    Rejected,
    Replay,
)
from tests.unit.core.agent_helpers import KEY, OTHER_KEY

OURS = 1000  # our incarnation
WAIT = 5.0  # wait_until of a node that has not served


def refusals() -> Refusals:
    return Refusals(dead_after=0.2, tolerance=4, log_every=10.0, key_id=key_id(KEY))


def header(
    *,
    node: int = 9,
    incarnation: int = 500,
    state: NodeState = NodeState.ACTIVE,
    interval_ms: int = 50,
    key: bytes = OTHER_KEY,
) -> Header:
    return Header(
        type=MsgType.HEARTBEAT,
        state=state,
        flags=0,
        node_id=node,
        weight=1,
        interval_ms=interval_ms,
        body_len=0,
        vip=ipaddress.IPv4Address("192.0.2.10"),
        fingerprint=bytes(8),
        key_id=key_id(key),
        incarnation=incarnation,
        seq=1,
    )


def another_key(**kw: object) -> BadMac:
    return BadMac("signed with another key", header(**kw))  # type: ignore[arg-type]


def foreign(**kw: object) -> ForeignFingerprint:
    return ForeignFingerprint("cluster fingerprint 00, ours 11", header(key=KEY, **kw))  # type: ignore[arg-type]


def reason(
    r: Refusals,
    now: float,
    *,
    valid: bool = False,
    served: bool = False,
    wait_until: float = WAIT,
) -> str | None:
    return r.passive_reason(
        now, has_valid_peer=valid, served=served, wait_until=wait_until, incarnation=OURS
    )


def test_only_bad_mac_and_foreign_fingerprint_may_make_passive() -> None:
    r = refusals()
    passive, notice = r.refuse(Replay("late"), "10.0.0.2", 0.0, node_id=2)
    assert not passive and notice is not None and "10.0.0.2 (node 2)" in notice.text
    assert r.refuse(Replay("again"), "10.0.0.2", 0.1, node_id=2) == (False, None)  # limited
    passive, notice = r.refuse(Malformed("short"), "10.0.0.3", 0.0)
    assert not passive and notice is not None and notice.cause == "malformed"
    assert reason(r, 0.0) is None
    passive, notice = r.refuse(another_key(), "10.0.0.9", 1.0)
    assert passive and notice is not None and notice.level == "warning"
    why = reason(r, 1.0)
    assert why is not None and "10.0.0.9" in why and "bad mac" in why
    assert reason(r, 1.0, valid=True) is None  # a real member is heard
    assert r.stats.as_dict()["bad_mac"] == 1 and r.stats.total == 4


@pytest.mark.parametrize("exc", [another_key(), foreign(), foreign(state=NodeState.STARTING)])
def test_a_node_that_has_served_is_never_made_passive(exc: Rejected) -> None:
    r = refusals()
    for t in (0.0, 0.05, 0.1):
        r.refuse(exc, "10.0.0.9", t)
    assert reason(r, 0.1) is not None  # a new node would hold back ...
    assert reason(r, 0.1, served=True) is None  # ... one that served never does


def test_a_new_node_waits_a_bounded_time_then_serves() -> None:
    """The sender is newer (started after us): we are not the odd one, so its traffic only
    delays us until wait_until, however long it keeps coming."""
    r = refusals()
    t = 0.0
    while t < WAIT + 2.0:
        r.refuse(another_key(incarnation=OURS + 1), "10.0.0.9", t)
        why = reason(r, t)
        assert (why is not None) == (t < WAIT), t
        if why is not None:
            assert "waiting" in why and "before serving alone" in why
        t = round(t + 0.05, 3)


def test_an_older_active_sender_of_another_config_makes_the_newcomer_the_odd_one() -> None:
    r = refusals()
    r.refuse(foreign(incarnation=OURS - 1), "10.0.0.9", WAIT + 10.0)
    why = reason(r, WAIT + 10.0)  # long after wait_until
    assert why is not None and "misconfigured" in why and "10.0.0.9 (node 9)" in why
    assert reason(r, WAIT + 10.0, served=True) is None  # never for a serving node
    # The sender goes quiet: after one hold time we serve.
    assert reason(r, WAIT + 10.0 + 0.2) is None


@pytest.mark.parametrize(
    "exc",
    [foreign(incarnation=OURS + 1), foreign(incarnation=0)],
    ids=["newer-active", "no-incarnation"],
)
def test_not_the_odd_one_the_wait_stays_bounded(exc: Rejected) -> None:
    r = refusals()
    r.refuse(exc, "10.0.0.9", WAIT - 0.1)
    assert reason(r, WAIT - 0.1) is not None
    r.refuse(exc, "10.0.0.9", WAIT)
    assert reason(r, WAIT) is None


@pytest.mark.parametrize("state", [NodeState.STARTING, NodeState.PASSIVE])
def test_an_older_sender_not_serving_yet_gets_one_hold_time_to_start(state: NodeState) -> None:
    """Two newcomers of different configurations started together reach their wait_until at
    about the same time. The younger waits one hold time longer, so that it sees the older one
    serve (and stays out as the odd one) instead of both serving at once."""
    r = refusals()
    hold = 0.2  # dead_after: the sender's interval x tolerance is shorter
    r.refuse(foreign(incarnation=OURS - 1, state=state), "10.0.0.9", WAIT)
    why = reason(r, WAIT)
    assert why is not None and "waiting" in why
    r.refuse(foreign(incarnation=OURS - 1, state=state), "10.0.0.9", WAIT + hold - 0.01)
    assert reason(r, WAIT + hold - 0.01) is not None
    r.refuse(foreign(incarnation=OURS - 1, state=state), "10.0.0.9", WAIT + hold)
    assert reason(r, WAIT + hold) is None  # it never started serving: bounded all the same
    # Had it started serving meanwhile, this node would be the odd one:
    r.refuse(foreign(incarnation=OURS - 1), "10.0.0.9", WAIT + hold)
    assert "misconfigured" in (reason(r, WAIT + hold) or "")


def test_forged_traffic_never_makes_the_newcomer_the_odd_one() -> None:
    """A MAC that fails under our own key id is corrupted or forged: its header (state,
    incarnation) is a claim nobody signed, so it is no reason to think we are the odd one."""
    r = refusals()
    forged = BadMac("corrupted or forged", header(key=KEY, incarnation=1))
    r.refuse(forged, "10.0.0.66", 0.0)
    assert reason(r, 0.0) is not None  # a newcomer may still wait ...
    r.refuse(forged, "10.0.0.66", WAIT)
    assert reason(r, WAIT) is None  # ... but no longer than it would for anyone


def test_the_reason_says_which_setting_differs_once_known() -> None:
    r = refusals()
    r.refuse(foreign(incarnation=OURS - 1), "10.0.0.9", 0.0)
    r.differs("10.0.0.9", 9, "buckets 1024 (ours 4096)")
    r.differs("10.0.0.7", 7, "seed 1 (ours 2)")  # never refused: nothing to attach it to
    why = reason(r, 0.0)
    assert why is not None and "buckets 1024 (ours 4096)" in why and "seed" not in why
    _, notice = r.refuse(foreign(incarnation=OURS - 1), "10.0.0.9", 20.0)
    assert notice is not None and "differs in buckets 1024 (ours 4096)" in notice.text
    (refused,) = r.report()  # what status shows, for a serving node too
    assert refused.detail.endswith("; differs in buckets 1024 (ours 4096)")


def test_hold_follows_a_slow_foreign_sender() -> None:
    r = refusals()
    r.refuse(foreign(interval_ms=1000), "10.0.0.9", 0.0)
    assert reason(r, 3.9, wait_until=100.0) is not None  # 1 s x 4
    assert r.deadlines(0.0) == [4.0]
    assert reason(r, 4.0, wait_until=100.0) is None


def test_duplicate_id_is_passive_even_with_valid_peers_and_after_serving() -> None:
    r = refusals()
    r.duplicate("node id 1 is also used by 10.0.0.7", 50, 0.0)
    assert reason(r, 0.1, valid=True, served=True) == "node id 1 is also used by 10.0.0.7"
    assert r.deadlines(0.1) == [0.2]
    assert reason(r, 0.2, valid=True, served=True) is None


def test_report_most_recent_first_with_counts() -> None:
    r = refusals()
    for t in range(3):
        r.refuse(another_key(), "10.0.0.9", float(t))
    r.refuse(Replay("y"), "10.0.0.2", 5.0, node_id=2)
    first, second = r.report()
    assert (first.address, first.cause, first.count) == ("10.0.0.2", "replay", 1)
    assert (second.address, second.node_id, second.count) == ("10.0.0.9", 9, 3)
