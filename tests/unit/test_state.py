import json
from pathlib import Path

import pytest

from clusterip import config
from clusterip.state import StateError, parse_comment, parse_tables

GOLDEN = Path(__file__).parent.parent / "golden" / "state" / "two-vips.json"


def test_parse_kernel_json() -> None:
    # Captured from the kernel after applying two rendered VIPs (make_two_vips.py beside it).
    objects = json.loads(GOLDEN.read_text())["nftables"]
    states = parse_tables(objects)
    assert [str(s.config.vip) for s in states] == ["198.18.0.100", "198.18.0.101"]
    a, b = states
    expected = config.build(
        vip="198.18.0.100",
        interface="eth0",
        total_nodes=4,
        protocol="tcp",
        dports=[80, 8080],
        hashmode="sourceip-sourceport-destport",
        seed="1a2b3c4d",
    )
    assert a.config.cluster_fields() == expected.cluster_fields()
    assert a.ownership.owned == {1, 3, 4} and a.ownership.draining == {2}
    assert a.ownership.orphaned == {3} and a.ownership.guarded == {4}
    assert a.comment_fields["addr"] == "1"
    assert set(a.counters) == {"accepted", "kept", "foreign", "arps", "midflow"}
    assert b.config.hashmode == "sourceip" and b.ownership.owned == {2}
    assert b.to_json()["owned"] == [2] and b.to_json()["total_nodes"] == 2


def test_foreign_tables_are_ignored() -> None:
    objects = json.loads(GOLDEN.read_text())["nftables"]
    objects.append({"table": {"family": "inet", "name": "filter", "handle": 9}})
    assert len(parse_tables(objects)) == 2


def test_bad_comment() -> None:
    with pytest.raises(StateError):
        parse_comment("something else")
