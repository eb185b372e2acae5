import json
from pathlib import Path

import pytest

from clusterip import config
from clusterip.nft import TextTable, parse_text
from clusterip.state import Lease, StateError, parse_comment, parse_tables

STATE = Path(__file__).parent.parent / "golden" / "state"
GOLDEN = STATE / "two-vips.json"


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
    assert set(a.counters) == {"accepted", "kept", "foreign", "arps", "midflow", "fragments"}
    assert a.current and not a.live and a.lease is None and a.mode == "static"
    assert b.config.hashmode == "sourceip" and b.ownership.owned == {2}
    assert b.to_json()["owned"] == [2] and b.to_json()["total_nodes"] == 2


def test_foreign_tables_are_ignored() -> None:
    objects = json.loads(GOLDEN.read_text())["nftables"]
    objects.append({"table": {"family": "inet", "name": "filter", "handle": 9}})
    assert len(parse_tables(objects)) == 2


def test_bad_comment() -> None:
    with pytest.raises(StateError):
        parse_comment("something else")


def _agent(name: str) -> list[dict[str, object]]:
    # Captured from the kernel by make_agent.py: an agent's tables while it runs, and after it
    # suspended for a successor and exited.
    return json.loads((STATE / name).read_text())["nftables"]  # type: ignore[no-any-return]


def test_agent_tables_live_and_suspended() -> None:
    (live,) = parse_tables(_agent("agent-live.json"))  # type: ignore[arg-type]
    assert live.mode == "agent" and live.live and live.lease is None and live.current
    own = live.ownership
    assert own.modulus == 16 and own.owned == {1, 2, 3, 4} and own.draining == {5}
    assert own.orphaned == {2} and own.guarded == {3}
    assert own.kept == {("198.18.1.9", 4242)}
    assert "down" in live.counters and live.comment_fields["addr"] == "1"
    (left,) = parse_tables(_agent("agent-suspended.json"))  # type: ignore[arg-type]
    assert not left.live and left.ownership == own
    assert left.lease == Lease(7, 1767225600000000, 1767226200.0, 599.0)


def test_old_version_tables_are_read_but_not_current() -> None:
    fields = parse_comment("clusterip/1 mode=static if=eth0 n=3")
    assert fields["version"] == "clusterip/1" and fields["n"] == "3"


RULESET = """table netdev clusterip_198_18_0_100 {
	comment "clusterip/2 mode=agent if=eth0 n=16"
	counter accepted {
		packets 12 bytes 3400
	}

	set syns {
		type ipv4_addr . inet_service . inet_service
		flags dynamic,timeout
	}

	chain ingress {
		comment "clusterip/2 mode=agent if=eth0 n=16"
		type filter hook ingress device "eth0" priority -500; policy accept;
		ip daddr 198.18.0.100 jump vip
	}

	chain vip {
		meta mark != 0x0c1ea11e ip daddr != @lease counter name "down" drop
	}
}
table inet clusterip_198_18_0_100 { # progname python3
	flags owner
	chain ingress {
		type filter hook ingress device "eth0" priority -501; policy accept;
		ip daddr 198.18.0.100 meta mark set 0x0c1ea11e
	}
}
table ip filter {
	chain input {
		comment "someone else's"
		type filter hook input priority filter; policy accept;
	}
}
"""


def test_tables_comments_and_counters_from_nft_text() -> None:
    name = "clusterip_198_18_0_100"
    assert parse_text(RULESET) == [
        TextTable(
            "netdev",
            name,
            {"ingress": "clusterip/2 mode=agent if=eth0 n=16", "vip": None},
            {"accepted": (12, 3400)},
        ),
        TextTable("inet", name, {"ingress": None}),
        TextTable("ip", "filter", {"input": "someone else's"}),
    ]
